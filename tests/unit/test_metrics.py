"""The metrics catalogue: help text, bounded label names, and the metrics reference in docs/operations.md."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from consumer import __version__
from consumer.metrics import BatchHistogram, Metrics

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
# Every label is a configured name or a fixed code list: nothing per event or per customer.
BOUNDED_LABELS = {
    "topic",
    "partition",
    "reason",
    "event_name",
    "stage",
    "field",
    "pixel",
    "key",
    "outcome",
    "code",
    "subcode",
    "error_class",
    "version",
    "state",
}


def _metrics(m: Metrics) -> list[MetricWrapperBase | BatchHistogram]:
    return [v for v in vars(m).values() if isinstance(v, MetricWrapperBase | BatchHistogram)]


def _exported_name(metric: MetricWrapperBase | BatchHistogram) -> str:
    return str(metric._name) + ("_total" if metric._type == "counter" else "")


def test_every_metric_has_help_a_prefix_and_bounded_labels() -> None:
    metrics = _metrics(Metrics())
    assert len(metrics) >= 28
    for metric in metrics:
        assert metric._name.startswith("capi_"), metric._name
        assert len(metric._documentation) > 10, metric._name
        assert set(metric._labelnames) <= BOUNDED_LABELS, metric._name


def test_each_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.records_consumed.labels("orders").inc()
    assert a.registry.get_sample_value("capi_records_consumed_total", {"topic": "orders"}) == 1
    assert b.registry.get_sample_value("capi_records_consumed_total", {"topic": "orders"}) is None
    assert b.registry.get_sample_value("capi_build_info", {"version": __version__}) == 1


def test_series_names_match_a_scrape() -> None:
    m = Metrics()
    for metric in _metrics(m):
        if isinstance(metric, BatchHistogram):
            metric.observe_many([1.0])
            continue
        child = metric.labels(*["x"] * len(metric._labelnames)) if metric._labelnames else metric
        if isinstance(child, Counter):
            child.inc()
        elif isinstance(child, Histogram):
            child.observe(1)
        else:
            assert isinstance(child, Gauge), metric
            child.set(1)
    text = generate_latest(m.registry).decode()
    scraped = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if not line.startswith("#")}
    assert scraped == m.series_names()


def test_operations_doc_documents_every_metric_with_its_type_and_labels() -> None:
    section = OPERATIONS.read_text().split("## Metrics reference", 1)[1]
    rows = {
        match[0]: (match[1], match[2].replace(" ", ""))
        for match in re.findall(r"^\| `(capi_[a-z_]+)` \| (\w+) \|([a-z_, ]*)\|", section, re.MULTILINE)
    }
    metrics = _metrics(Metrics())
    for metric in metrics:
        name = _exported_name(metric)
        assert name in rows, f"docs/operations.md's metrics reference lacks {name}"
        assert rows[name] == (metric._type, ",".join(metric._labelnames)), name
    assert len(rows) == len(metrics), set(rows) - {_exported_name(m) for m in metrics}


def test_a_batch_histogram_exports_what_a_histogram_observing_each_value_exports() -> None:
    values = [0.0, 0.05, 0.07, 0.1, 0.5, 1.0, 3.0, 1e6, 1e9]
    buckets = (0.05, 0.1, 1.0, 1e6)  # 1e6: a bound whose `le` label Go's float format writes as 1e+06
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("capi_x_seconds", "some help text", buckets=buckets, registry=one_by_one)
    for value in values:
        histogram.observe(value)
    batch = BatchHistogram("capi_x_seconds", "some help text", buckets, batched)
    batch.observe_many(values[:3])
    batch.observe_many([])
    batch.observe_many(values[3:])

    def exposition(registry: CollectorRegistry) -> list[str]:
        return [line for line in generate_latest(registry).decode().splitlines() if "_created " not in line]

    assert exposition(batched) == exposition(one_by_one)
    assert batched.get_sample_value("capi_x_seconds_bucket", {"le": "0.05"}) == 2
    assert batched.get_sample_value("capi_x_seconds_created") is not None
