#!/usr/bin/env bash
# Build promtool (Prometheus' rule checker) from source through the Go module proxy, once, into the
# git-ignored cache, and print its path. Later calls only print the path.
#
#   deploy/prometheus/get-promtool.sh            # -> .cache/promtool/v0.316.0/promtool
#   PROMTOOL_VERSION=v0.310.0 deploy/prometheus/get-promtool.sh
#
# Needs Go (1.24+) and network access to the module proxy on the first run. Prometheus 3.x is
# published to the Go module proxy as v0.3xx.y module versions; the first build takes a
# few minutes on 2 cores.
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
version="${PROMTOOL_VERSION:-v0.316.0}"
cache="${CAPI_CACHE_DIR:-$repo_root/.cache}"
dest="$cache/promtool/$version"
if [ -x "$dest/promtool" ]; then
  echo "$dest/promtool"
  exit 0
fi
command -v go >/dev/null || { echo "get-promtool: go is not installed" >&2; exit 1; }
tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
echo "get-promtool: building promtool $version with $(go version) (first run only)" >&2
start=$(date +%s)
# Go's module and build caches live in the project's cache too (writable, so `rm -rf .cache` works).
export GOPATH="$cache/go" GOMODCACHE="$cache/go/mod" GOCACHE="$cache/go/build"
GOBIN="$tmp" GOFLAGS="${GOFLAGS:-} -buildvcs=false -modcacherw" go install "github.com/prometheus/prometheus/cmd/promtool@$version" >&2
"$tmp/promtool" --version >/dev/null
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "get-promtool: built in $(( $(date +%s) - start ))s" >&2
echo "$dest/promtool"
