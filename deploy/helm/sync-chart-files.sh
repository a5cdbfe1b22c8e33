#!/usr/bin/env bash
# Copy the files the chart packages from their one source into deploy/helm/capi-consumer/files/.
# Helm packages only files inside the chart (no symlinks out of it), so the chart holds copies;
# tests/deploy/test_helm_chart.py fails when a copy differs from its source. Edit the source, then
# run this script:
#   deploy/prometheus/capi-consumer.rules.yml -> files/capi-consumer.rules.yml  (the PrometheusRule)
#   deploy/grafana/capi-consumer.json         -> files/capi-consumer.json       (the dashboard ConfigMap)
#   schemas/*.avsc                             -> files/schemas/                 (the reader schemas in the config ConfigMap)
set -euo pipefail
repo_root="$(cd "$(dirname "$0")/../.." && pwd)"
files="$repo_root/deploy/helm/capi-consumer/files"
mkdir -p "$files/schemas"
cp "$repo_root/deploy/prometheus/capi-consumer.rules.yml" "$files/capi-consumer.rules.yml"
cp "$repo_root/deploy/grafana/capi-consumer.json" "$files/capi-consumer.json"
rm -f "$files/schemas/"*.avsc
cp "$repo_root/schemas/"*.avsc "$files/schemas/"
echo "sync-chart-files: copied the rules, the dashboard and $(ls "$repo_root/schemas/"*.avsc | wc -l) schemas into $files"
