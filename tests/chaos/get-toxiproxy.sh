#!/usr/bin/env bash
# Build Shopify's toxiproxy server (a TCP proxy whose faults are set over an HTTP API) from source
# through the Go module proxy, once, into the git-ignored cache, and print its path. Later calls only
# print the path. The fault tests (tests/chaos, `make chaos`) put it between the consumer and the
# broker, and between the consumer and the CAPI emulator.
#
#   tests/chaos/get-toxiproxy.sh            # -> .cache/toxiproxy/v2.5.0/toxiproxy-server
#   TOXIPROXY_VERSION=v2.9.0 tests/chaos/get-toxiproxy.sh
#
# Needs Go and network access to the module proxy on the first run (about a minute on 2 cores).
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
version="${TOXIPROXY_VERSION:-v2.5.0}"
server="$("$repo_root/tools/go-install-cached.sh" toxiproxy "$version" github.com/Shopify/toxiproxy/v2/cmd/server toxiproxy-server)"
"$server" -version >/dev/null
echo "$server"
