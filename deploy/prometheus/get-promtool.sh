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
promtool="$("$repo_root/tools/go-install-cached.sh" promtool "$version" github.com/prometheus/prometheus/cmd/promtool)"
"$promtool" --version >/dev/null
echo "$promtool"
