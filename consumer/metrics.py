"""The metrics catalogue: every Prometheus metric the service exports, declared once, with help text.

Label values are bounded by configuration (topics, pixels, event names, reason codes, Graph codes):
never an event ID, a customer identifier or a token.

prometheus-client exports a counter `capi_x` as `capi_x_total` (plus `capi_x_created`) and a histogram as
`_bucket`/`_sum`/`_count`; `Metrics.series_names()` lists the names a scrape can contain. The
"Metrics reference" of docs/operations.md documents every metric; a test keeps the two in step.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from consumer import __version__

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 86400.0)
AGE_BUCKETS = (1.0, 10.0, 60.0, 300.0, 3600.0, 21600.0, 86400.0, 259200.0, 518400.0, 604800.0)
BATCH_BUCKETS = (1, 10, 50, 100, 250, 500, 750, 1000)

MATCH_KEYS = (
    "em",
    "ph",
    "external_id",
    "fn",
    "ln",
    "db",
    "ct",
    "st",
    "zp",
    "country",
    "fbp",
    "fbc",
    "client_ip_address",
    "client_user_agent",
)


class BatchHistogram(Collector):
    """A histogram without labels observed a batch of values at a time, exported exactly like
    prometheus-client's `Histogram` (`_bucket`, `_count`, `_sum`, `_created`).

    For the per-event histograms: prometheus-client's `observe` takes a lock and updates two values
    per call (about 1-2 µs), which per event was one of the larger costs of delivering a batch; here a
    batch costs one bisect per value and one lock."""

    _type = "histogram"
    _labelnames: tuple[str, ...] = ()

    def __init__(self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry):
        # Named like prometheus-client's metric attributes, so that the catalogue reads alike.
        self._name = name
        self._documentation = documentation
        self._bounds = (*(float(b) for b in buckets), float("inf"))
        self._counts = [0] * len(self._bounds)  # per bucket, not cumulative
        self._sum = 0.0
        self._created = time.time()
        self._lock = threading.Lock()  # observed on the event loop, collected by the metrics server
        registry.register(self)

    def observe_many(self, values: Iterable[float]) -> None:
        bounds = self._bounds
        counts = [0] * len(bounds)
        total = 0.0
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1  # buckets are upper-inclusive (le)
            total += value
        with self._lock:
            mine = self._counts
            for i, n in enumerate(counts):
                if n:
                    mine[i] += n
            self._sum += total

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative, buckets = 0, []
        for bound, n in zip(self._bounds, counts, strict=True):
            cumulative += n
            # The `le` labels Histogram writes (prometheus-client leaves this helper unannotated).
            buckets.append((floatToGoString(bound), cumulative))  # type: ignore[no-untyped-call]
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], buckets, total, timestamp=None)
        family.add_sample(self._name + "_created", {}, self._created)
        yield family


class Metrics:
    """One instance per process (or per test), each with its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.records_consumed = Counter(
            "capi_records_consumed", "Kafka records consumed", ["topic"], registry=r
        )
        self.decode_failures = Counter(
            "capi_decode_failures", "Records that could not be decoded", ["reason"], registry=r
        )
        self.events_mapped = Counter(
            "capi_events_mapped", "Records mapped to a server event", ["event_name"], registry=r
        )
        self.events_filtered = Counter(
            "capi_events_filtered", "Records deliberately not sent (settled)", ["reason"], registry=r
        )
        self.events_rejected = Counter(
            "capi_events_rejected",
            "Records that failed mapping or pre-send validation",
            ["stage", "reason"],
            registry=r,
        )
        self.identifiers_omitted = Counter(
            "capi_identifiers_omitted",
            "Customer identifiers left out by normalization",
            ["field", "reason"],
            registry=r,
        )
        self.events_sent = Counter(
            "capi_events_sent",
            "Events sent to the Graph API, counted on every attempt (a retried event counts again)",
            ["pixel", "event_name"],
            registry=r,
        )
        self.events_accepted = Counter(
            "capi_events_accepted", "Events accepted by the Graph API", ["pixel", "event_name"], registry=r
        )
        self.match_keys = Counter(
            "capi_match_key_events",
            "Accepted events carrying a user_data key (divide by capi_events_accepted for coverage)",
            ["pixel", "key"],
            registry=r,
        )
        self.request_duration = Histogram(
            "capi_request_duration_seconds",
            "Graph API request latency",
            ["pixel", "outcome"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.concurrency_limit = Gauge(
            "capi_request_concurrency_limit",
            "Requests a destination may have in flight now (adaptive; for a label several destinations "
            "share, such as tenants, the lowest of their limits)",
            ["pixel"],
            registry=r,
        )
        self.requests_in_flight = Gauge(
            "capi_requests_in_flight", "Graph API requests in flight, all destinations", registry=r
        )
        self.batch_size = Histogram(
            "capi_batch_size_events", "Events per Graph API request", buckets=BATCH_BUCKETS, registry=r
        )
        self.graph_errors = Counter(
            "capi_graph_errors", "Graph API error responses", ["code", "subcode"], registry=r
        )
        self.retries = Counter(
            "capi_retries",
            "Batch retries after transient or destination errors",
            ["pixel", "error_class"],
            registry=r,
        )
        self.dead_lettered = Counter(
            "capi_dead_lettered",
            "Records written to a dead-letter topic (acknowledged)",
            ["topic", "stage", "reason"],
            registry=r,
        )
        self.dead_letter_failures = Counter(
            "capi_dead_letter_write_failures", "Dead-letter writes Kafka refused", ["topic"], registry=r
        )
        self.destinations_parked = Gauge(
            "capi_destinations_parked", "Destinations currently parked", registry=r
        )
        self.events_parked = Counter(
            "capi_events_parked",
            "Platform mode: records copied to a parked topic while their tenant is refused (acknowledged)",
            ["topic"],
            registry=r,
        )
        self.parked_oldest_event_age = Gauge(
            "capi_parked_oldest_event_age_seconds",
            "Platform mode: age of the oldest event a parked tenant holds (Meta refuses it at 7 days)",
            registry=r,
        )
        self.tenants = Gauge(
            "capi_tenants",
            "Platform mode: tenants by state (ok, parked, disabled, invalid) in this member's view",
            ["state"],
            registry=r,
        )
        self.in_flight_events = Gauge(
            "capi_in_flight_events", "Consumed records not yet committable", registry=r
        )
        self.in_flight_bytes = Gauge(
            "capi_in_flight_bytes", "Bytes of consumed records not yet committable", registry=r
        )
        self.partitions_paused = Gauge(
            "capi_partitions_paused", "Partitions paused for backpressure", registry=r
        )
        self.consumer_lag = Gauge(
            "capi_consumer_lag",
            "High watermark minus the settled (committable) offset",
            ["topic", "partition"],
            registry=r,
        )
        self.end_to_end_latency = BatchHistogram(
            "capi_end_to_end_latency_seconds", "Record timestamp to Meta's acceptance", E2E_BUCKETS, r
        )
        self.event_age_at_send = BatchHistogram(
            "capi_event_age_at_send_seconds", "event_time to send time", AGE_BUCKETS, r
        )
        self.dlq_oldest_age = Gauge(
            "capi_dlq_oldest_record_age_seconds",
            "Age of the oldest record waiting in a dead-letter topic (Meta refuses events older than 7 days)",
            ["topic"],
            registry=r,
        )
        self.dlq_waiting = Gauge(
            "capi_dlq_records_waiting",
            "Records in a dead-letter topic after the replay group's committed offset",
            ["topic"],
            registry=r,
        )
        self.dlq_monitor_last_success = Gauge(
            "capi_dlq_monitor_last_success_timestamp_seconds",
            "When the dead-letter monitor last measured every dead-letter topic",
            registry=r,
        )
        self.dlq_monitor_errors = Counter(
            "capi_dlq_monitor_errors", "Dead-letter monitor checks that failed", registry=r
        )
        self.last_loop = Gauge(
            "capi_consume_loop_last_turn_timestamp_seconds", "When the consume loop last turned", registry=r
        )
        self.build_info = Gauge(
            "capi_build_info", "Always 1; the label carries the running version", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Counter | Gauge | Histogram, *labels: str) -> Any:
        """`metric.labels(*labels)`, remembered: prometheus-client's `labels()` takes a lock and builds
        a key on every call, which per request added up when platform mode sends hundreds of small
        batches a second. Label values are bounded (see above), so this map is too."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def series_names(self) -> set[str]:
        """Every sample name a scrape of this registry can contain (suffixes included)."""
        suffixes = {
            "counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "gauge": ("",),
        }
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        return names
