#!/usr/bin/env bash
# Capstan's controllers in kind, through the Helm chart, for users with Docker: creates the
# kind cluster of kind.yaml (unless it exists), builds the capstan image with
# `capstan image build` (no registry, no Docker build), loads it into the cluster's node with
# `kind load image-archive`, installs charts/capstan with its CRDs, waits for the rollout,
# applies the ScalingPolicy example of examples/ and, when GITSYNC_REPO names a repository of
# yours (GITSYNC_PATH a directory in it, GITSYNC_BRANCH its branch), a GitSync of it; then
# shows their status. More arguments go to `helm upgrade --install` (`--set replicaCount=2`).
#
# Needs kind, Docker, kubectl, helm (3.8 or later) and a built capstan (`cargo build
# --release -p capstan`, or CAPSTAN=path). kind cannot run on Capstan's CI machines (no Docker
# engine, no registry for kind's node image): the same chart is tested there against Capstan
# itself (e2e/tests/chart.rs). Remove everything with `kind delete cluster --name capstan`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
capstan=${CAPSTAN:-$root/target/release/capstan}
cluster=${KIND_CLUSTER:-capstan}
for tool in kind docker kubectl helm; do
  command -v "$tool" >/dev/null || { echo "install.sh: $tool is missing" >&2; exit 1; }
done
[ -x "$capstan" ] || { echo "install.sh: no capstan at $capstan (cargo build --release -p capstan)" >&2; exit 1; }

if ! kind get clusters | grep -qx "$cluster"; then
  kind create cluster --name "$cluster" --config "$here/kind.yaml" --wait 120s
fi
context="kind-$cluster"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$capstan" image build -o "$work/capstan.tar"
kind load image-archive "$work/capstan.tar" --name "$cluster"

helm upgrade --install capstan "$root/charts/capstan" --kube-context "$context" \
  --namespace capstan-system --create-namespace --wait --timeout 5m "$@"
kubectl --context "$context" -n capstan-system rollout status deployment/capstan --timeout 120s
kubectl --context "$context" -n capstan-system get lease capstan \
  -o jsonpath='leader: {.spec.holderIdentity}{"\n"}'

kubectl --context "$context" apply -f "$here/examples/"
if [ -n "${GITSYNC_REPO:-}" ]; then
  kubectl --context "$context" apply -f - <<YAML
apiVersion: capstan.dev/v1alpha1
kind: GitSync
metadata: {name: example, namespace: default}
spec:
  repo: "$GITSYNC_REPO"
  ref: {branch: "${GITSYNC_BRANCH:-main}"}
  path: "${GITSYNC_PATH:-.}"
  interval: 1m
  prune: true
YAML
  kubectl --context "$context" wait --for=condition=Ready gitsync/example --timeout 120s
fi
kubectl --context "$context" get gitsyncs,scalingpolicies,deployments
