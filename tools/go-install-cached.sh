#!/usr/bin/env bash
# Build a Go command from the Go module proxy, once, into the project's git-ignored cache, and print
# the path of the binary. Later calls only print the path. Used by deploy/prometheus/get-promtool.sh,
# deploy/helm/get-helm.sh and tests/chaos/get-toxiproxy.sh.
#
#   tools/go-install-cached.sh NAME VERSION PACKAGE [BINARY]
#     NAME      cache folder and log prefix (the binary is $CAPI_CACHE_DIR/NAME/VERSION/BINARY)
#     PACKAGE   the command's package path, without @VERSION
#     BINARY    the binary's name once installed (default: NAME; `go install` names it after PACKAGE)
#   GO_LDFLAGS  extra -ldflags for go install (optional)
#
# Needs Go (1.24+) and access to the module proxy on the first run. Go's module and build caches live
# in the project's cache too (writable, so `rm -rf .cache` works).
set -euo pipefail
name="$1" version="$2" package="$3" binary="${4:-$1}"
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${CAPI_CACHE_DIR:-$repo_root/.cache}"
dest="$cache/$name/$version"
if [ -x "$dest/$binary" ]; then
  echo "$dest/$binary"
  exit 0
fi
command -v go >/dev/null || { echo "$name: go is not installed (Go 1.24+ is needed to build it)" >&2; exit 1; }
tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "$name: building $package@$version with $(go version) (first run only)" >&2
start=$(date +%s)
export GOPATH="$cache/go" GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
export GOFLAGS="${GOFLAGS:-} -mod=mod -buildvcs=false -modcacherw"
GOBIN="$tmp" go install -ldflags "${GO_LDFLAGS:-}" "$package@$version" >&2
built="$tmp/$(basename "$package")"
[ "$built" = "$tmp/$binary" ] || mv "$built" "$tmp/$binary"
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "$name: built in $(( $(date +%s) - start ))s" >&2
echo "$dest/$binary"
