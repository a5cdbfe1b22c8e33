#!/usr/bin/env bash
# Build helm (the Kubernetes package manager; here only `helm lint` and `helm template` are used, no
# cluster) from source through the Go module proxy, once, into the git-ignored cache, and print its
# path. Later calls only print the path. Built by tools/go-install-cached.sh, like promtool.
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
if [ ! -x "$cache/helm/$version/helm" ]; then
  command -v go >/dev/null || { echo "get-helm: go is not installed (Go 1.24+ is needed to build helm)" >&2; exit 1; }
  # helm reports the Kubernetes version it was built against (lint checks kubeVersion with it): the
  # client-go minor of its go.mod, as helm's own Makefile sets it.
  export GOPATH="$cache/go" GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build" GOFLAGS="${GOFLAGS:-} -modcacherw"
  gomod="$(go mod download -json "helm.sh/helm/v3@$version" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",*$/\1/p')"
  client_go="$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$gomod")"
  [ -n "$client_go" ] || { echo "get-helm: no k8s.io/client-go in $gomod" >&2; exit 1; }
  GO_LDFLAGS="-X helm.sh/helm/v3/internal/version.version=$version"
  for pkg in pkg/lint/rules pkg/chartutil; do
    GO_LDFLAGS+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$client_go"
  done
  export GO_LDFLAGS
fi
helm="$("$repo_root/tools/go-install-cached.sh" helm "$version" helm.sh/helm/v3/cmd/helm)"
"$helm" version --short | grep -qx "$version" || { echo "get-helm: $helm does not report $version" >&2; exit 1; }
echo "$helm"
