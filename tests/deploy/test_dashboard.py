"""deploy/grafana: the dashboard is valid dashboard JSON, templated on its Prometheus data source, and
every query parses and names only metrics the service exports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from consumer.metrics import Metrics
from tests.deploy.conftest import DASHBOARD, metric_names, run_promtool

pytestmark = pytest.mark.timeout(1800)

DS = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
# Grafana variables, replaced by values a Prometheus server would see.
GRAFANA_VARS = {"$__rate_interval": "1m", "$pixel": ".*"}


def _dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def _panels() -> Iterator[dict[str, Any]]:
    for panel in _dashboard()["panels"]:
        if panel["type"] != "row":
            yield panel


def _exprs() -> list[str]:
    return [target["expr"] for panel in _panels() for target in panel["targets"]]


def _panel_metrics(panel: dict[str, Any]) -> set[str]:
    return set().union(*(metric_names(t["expr"]) for t in panel["targets"]))


def test_dashboard_is_importable_and_templated_on_the_data_source() -> None:
    doc = _dashboard()
    assert doc["uid"] == "capi-consumer" and doc["title"] and doc["schemaVersion"] >= 36
    assert [i["name"] for i in doc["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in _panels():
        assert panel["datasource"] == DS, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DS and target["refId"], panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]


def test_dashboard_has_the_operator_panels() -> None:
    uses = {panel["title"]: _panel_metrics(panel) for panel in _panels()}

    def panel_with(*metrics: str) -> bool:
        return any(set(metrics) <= used for used in uses.values())

    assert panel_with("capi_events_accepted_total")  # throughput by pixel and event
    assert panel_with("capi_consumer_lag")
    assert panel_with("capi_graph_errors_total")
    assert panel_with("capi_dead_lettered_total")
    assert panel_with("capi_dlq_oldest_record_age_seconds")
    assert panel_with("capi_request_duration_seconds_bucket")
    assert panel_with("capi_end_to_end_latency_seconds_bucket")
    assert panel_with("capi_tenants") and panel_with("capi_parked_oldest_event_age_seconds")
    assert panel_with("capi_match_key_events_total", "capi_events_accepted_total")  # coverage ratio
    assert panel_with("capi_in_flight_events")
    assert panel_with("capi_destinations_parked")
    assert panel_with("capi_request_concurrency_limit", "capi_requests_in_flight")
    exprs = "\n".join(_exprs())
    assert "histogram_quantile(0.99" in exprs and "histogram_quantile(0.5" in exprs


def test_dashboard_queries_name_only_exported_metrics() -> None:
    exported = Metrics().series_names()
    used = set().union(*(metric_names(e) for e in _exprs()))
    assert used, "no capi_* metric in the dashboard"
    assert used <= exported, f"unknown metrics: {sorted(used - exported)}"


def test_dashboard_queries_parse_as_promql(promtool: Path) -> None:
    for expr in _exprs():
        query = expr
        for var, value in GRAFANA_VARS.items():
            query = query.replace(var, value)
        assert "$" not in query, f"unresolved Grafana variable in {expr}"
        done = run_promtool(promtool, "promql", "format", "--experimental", query)
        assert done.returncode == 0, f"{expr}\n{done.stderr}"
