# Capstan's commands. The README's two first commands are `make run` and `make test`.
CARGO    ?= cargo
DATA_DIR ?= .capstan
LISTEN   ?= 127.0.0.1:6443
NEXTEST  := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo yes)

.PHONY: run test e2e bench lint fmt crds deps deps-build build clean

## run: a single-machine Capstan on the embedded store in $(DATA_DIR); pods run on containerd
## (started under $(DATA_DIR)/containerd, busybox and pause images built and imported) when it
## is installed and this runs as root, else as plain processes. Needs only what building and
## running need (protoc for the build, nftables for Services as root); etcd, kubectl and the
## Python client are the tests'
run:
	@scripts/ensure-deps.sh run
	@if command -v containerd >/dev/null && command -v umoci >/dev/null && command -v skopeo >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  bash e2e/images/build.sh $(DATA_DIR)/images; fi
	$(CARGO) run --release -p capstan -- up --data-dir $(DATA_DIR) --listen $(LISTEN)

## test: every test (unit, conformance against embedded and real etcd, in-process clusters, the
## e2e suites); the e2e suites run the capstan binary, built first (capstan_testkit::capstan_bin)
test: deps
	$(CARGO) build -p capstan
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run --workspace --no-fail-fast
else
	$(CARGO) test --workspace --no-fail-fast
endif

## e2e: the suites in e2e/ that drive the real capstan binary, kubectl, etcd and containerd
e2e: deps
	$(CARGO) build -p capstan
ifeq ($(NEXTEST),yes)
	$(CARGO) nextest run -p capstan-e2e --no-fail-fast
else
	$(CARGO) test -p capstan-e2e --no-fail-fast
endif

## bench: the store, API, auth (TLS + RBAC), CRD, scheduling, node lifecycle, pod startup, Services, DNS and streams (port-forward, exec, attach) benchmarks (release build); see docs/benchmarks.md
bench: deps
	$(CARGO) run --release -p capstan -- bench store
	$(CARGO) run --release -p capstan -- bench api
	$(CARGO) run --release -p capstan -- bench idle
	$(CARGO) run --release -p capstan -- bench auth
	$(CARGO) run --release -p capstan -- bench crd
	$(CARGO) run --release -p capstan -- bench schedule
	$(CARGO) run --release -p capstan -- bench nodes
	$(CARGO) run --release -p capstan -- bench cluster --plot-dir docs/benchmarks
	$(CARGO) run --release -p capstan -- bench pods
	$(CARGO) run --release -p capstan -- bench services
	$(CARGO) run --release -p capstan -- bench dns
	$(CARGO) run --release -p capstan -- bench streams

## crds: regenerate manifests/crds/ and the Helm chart's copy from the types in api/src/crds,
## and the chart's controller RBAC rules from the API server's (tests fail when stale)
crds:
	rm -f manifests/crds/*.yaml charts/capstan/files/crds/*.yaml
	$(CARGO) run -p capstan -- crd print --dir manifests/crds
	$(CARGO) run -p capstan -- crd print --dir charts/capstan/files/crds
	CAPSTAN_WRITE_CHART_FILES=1 $(CARGO) test -p capstan --test chart_files

## lint: formatting and clippy, as CI checks them
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

## deps: everything `make test` needs; deps-build: only what building needs
deps:
	@scripts/ensure-deps.sh

deps-build:
	@scripts/ensure-deps.sh build

build: deps-build
	$(CARGO) build --release -p capstan

clean:
	$(CARGO) clean
