#!/usr/bin/env bash
# Build helm (the Kubernetes package manager; here only `helm lint` and `helm template` are used, no
# cluster) from source through the Go module proxy, once, into the git-ignored cache, and print its
# path. Later calls only print the path. The same recipe as deploy/prometheus/get-promtool.sh.
#
#   deploy/helm/get-helm.sh                      # -> .cache/helm/v3.22.0/helm
#   HELM_VERSION=v3.21.0 deploy/helm/get-helm.sh
#
# Needs Go (1.24+) and network access to the module proxy on the first run; the first build takes a
# few minutes on 2 cores (the Go module and build caches are shared with promtool's).
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
version="${HELM_VERSION:-v3.22.0}"
cache="${CAPI_CACHE_DIR:-$repo_root/.cache}"
dest="$cache/helm/$version"
if [ -x "$dest/helm" ]; then
  echo "$dest/helm"
  exit 0
fi
command -v go >/dev/null || { echo "get-helm: go is not installed (Go 1.24+ is needed to build helm)" >&2; exit 1; }
tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "get-helm: building helm $version with $(go version) (first run only)" >&2
start=$(date +%s)
# Go's module and build caches live in the project's cache too (writable, so `rm -rf .cache` works).
export GOPATH="$cache/go" GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOFLAGS="${GOFLAGS:-} -mod=mod -buildvcs=false -modcacherw"
# What helm's own Makefile passes as -ldflags: its version, and the Kubernetes version that `helm
# template` reports as .Capabilities.KubeVersion and `helm lint` checks deprecated APIs against
# (client-go v0.X.Y -> 1.X). Without them a `go install` build says v1.20, and lint would miss every
# API removed since.
gomod="$(go mod download -json "helm.sh/helm/v3@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
client_go="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod")"
[ -n "$client_go" ] || { echo "get-helm: no k8s.io/client-go in $gomod" >&2; exit 1; }
ldflags="-X helm.sh/helm/v3/internal/version.version=$version"
for pkg in pkg/lint/rules pkg/chartutil; do
  ldflags+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$client_go"
done
GOBIN="$tmp" go install -ldflags "$ldflags" "helm.sh/helm/v3/cmd/helm@$version" >&2
"$tmp/helm" version --short | grep -qx "$version" || { echo "get-helm: the built helm does not report $version" >&2; exit 1; }
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "get-helm: built in $(( $(date +%s) - start ))s" >&2
echo "$dest/helm"
