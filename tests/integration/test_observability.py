"""Observability end to end: exact counts on /metrics after a known mix, health endpoints, and logs
(and dead-letter headers, and metric labels) free of raw PII and tokens."""

from __future__ import annotations

import datetime as dt
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from capi_devstack import Endpoints
from capi_devstack.samples import Sample, order, subscription
from capi_emulator import EmulatorConfig, TokenConfig, start_in_thread
from capi_emulator.server import RunningEmulator
from consumer.config import load_config
from consumer.errors import NOT_CONFLUENT_WIRE_FORMAT
from consumer.mapping import Filtered, Mapped, Mapper, Rejected
from consumer.metrics import MATCH_KEYS, Metrics
from tests.integration.pipeline_helpers import (
    PIXEL,
    ConsumerProcess,
    MetricSamples,
    add_fault,
    avro_roundtrip,
    header_pairs,
    http_get,
    metric_by,
    metric_sum,
    metrics_port,
    produce,
    produce_raw,
    scrape,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


class Expected:
    """What the mapping makes of each sample: the counts the metrics must show."""

    def __init__(self, config_path: Path, topics: dict[str, str], samples: list[Sample]) -> None:
        mapper = Mapper.from_config(load_config(config_path, resolve_secrets=False))
        by_kind = {kind: name for name, kind in topics.items()}
        self.mapped: Counter[str] = Counter()
        self.filtered: Counter[str] = Counter()
        self.rejected: Counter[tuple[str, str]] = Counter()
        self.omitted: Counter[tuple[str, str]] = Counter()
        self.match_keys: Counter[str] = Counter()
        self.consumed: Counter[str] = Counter()
        self.event_ids: dict[str, str] = {}
        for sample in samples:
            topic = by_kind[sample.kind]
            self.consumed[topic] += 1
            result = mapper.map(topic, avro_roundtrip(sample.kind, sample.record))
            if isinstance(result, Mapped):
                self.mapped[result.event["event_name"]] += 1
                self.omitted.update((o.field, o.reason) for o in result.omitted)
                self.match_keys.update(k for k in MATCH_KEYS if k in result.event["user_data"])
                self.event_ids[result.event["event_id"]] = result.event["event_name"]
            elif isinstance(result, Filtered):
                self.filtered[result.reason] += 1
            elif isinstance(result, Rejected):
                self.rejected[(result.stage, result.reason)] += 1


def _settled(samples: MetricSamples) -> float:
    return (
        metric_sum(samples, "capi_events_accepted_total")
        + metric_sum(samples, "capi_events_filtered_total")
        + metric_sum(samples, "capi_dead_lettered_total")
    )


def _lags(samples: MetricSamples) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["topic"], dict(labels)["partition"]): value
        for (name, labels), value in samples.items()
        if name == "capi_consumer_lag"
    }


def _wait_settled(port: int, total: int, partitions: int, timeout_s: float = 180) -> MetricSamples:
    """Scrape until every record is settled and the lag of every partition is back to 0."""
    last: list[MetricSamples] = []

    def done() -> bool:
        last[:] = [scrape(port)]
        lags = _lags(last[0])
        return _settled(last[0]) >= total and len(lags) == partitions and not any(lags.values())

    try:
        wait_for(done, timeout_s, f"{total} records settled and lag 0", interval_s=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: settled {_settled(last[0])}, lags {_lags(last[0])}") from None
    return last[0]


# -- (a) exact counts after a known mix -------------------------------------------------------------
SENT = 4970
FILTERED = 20
BAD = 10


def _known_mix(now_ms: int) -> list[Sample]:
    """SENT sendable orders and subscriptions, then FILTERED records of types that are not sent."""
    rng = random.Random(11)
    samples = []
    for i in range(SENT):
        if i % 10 < 7:
            samples.append(Sample("order", order(i, now_ms=now_ms, rng=rng)))
        else:
            kind = ("started", "trial_started", "renewed")[i % 3]
            samples.append(Sample("subscription", subscription(i, now_ms=now_ms, rng=rng, event_type=kind)))
    for i in range(SENT, SENT + FILTERED):
        if i % 2:
            samples.append(Sample("order", order(i, now_ms=now_ms, rng=rng, event_type="refunded")))
        else:
            samples.append(
                Sample("subscription", subscription(i, now_ms=now_ms, rng=rng, event_type="cancelled"))
            )
    return samples


def test_metrics_show_exact_counts_after_a_known_mix(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, make_topic: Callable[..., str]
) -> None:
    orders, subs = make_topic("orders", partitions=2), make_topic("subs", partitions=2)
    topics = {orders: "order", subs: "subscription"}
    config = write_config(
        tmp_path,
        devstack,
        emulator.base_url,
        topics,
        group_id="g-obs",
        extra={"dlq": {"monitor_interval_s": 1}},
    )
    samples = _known_mix(int(time.time() * 1000))
    want = Expected(config, topics, samples)
    # The mix is what this test claims it is.
    assert sum(want.mapped.values()) == SENT and not want.rejected
    assert want.filtered == Counter({"event_type_not_sent": FILTERED})
    assert set(want.mapped) == {"Purchase", "Subscribe", "StartTrial"}
    produce(devstack, samples, topics)
    produce_raw(devstack, orders, [b"not avro %d" % i for i in range(BAD)])
    total = SENT + FILTERED + BAD

    consumer = ConsumerProcess(config, tmp_path / "consumer.log")
    try:
        port = metrics_port(consumer)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_get(f"{base}/readyz")[0] == 200, 60, "/readyz 200 (partitions assigned)")
        got = _wait_settled(port, total, partitions=4)
        assert http_get(f"{base}/healthz")[0] == 200
        status, body = http_get(f"{base}/readyz")
        assert status == 200 and json.loads(body)["status"] == "ready"
        time.sleep(0.3)  # the in-flight gauges follow settlement on the next loop turn
        got = scrape(port)
        # The service's dead-letter monitor sees the records waiting for a replay.
        wait_for(
            lambda: metric_sum(scrape(port), "capi_dlq_records_waiting", topic=f"{orders}.dlq") == BAD,
            30,
            "capi_dlq_records_waiting",
        )
        assert metric_sum(scrape(port), "capi_dlq_oldest_record_age_seconds", topic=f"{orders}.dlq") > 0
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]

    # Every record counted once, where it ended.
    assert metric_by(got, "capi_records_consumed_total", "topic") == {
        orders: want.consumed[orders] + BAD,
        subs: want.consumed[subs],
    }
    assert metric_by(got, "capi_events_mapped_total", "event_name") == want.mapped
    assert metric_by(got, "capi_events_accepted_total", "event_name", pixel=PIXEL) == want.mapped
    assert metric_sum(got, "capi_events_accepted_total") == SENT
    # Sent counts every attempt: at least once per accepted event (more if a request was retried).
    sent = metric_by(got, "capi_events_sent_total", "event_name", pixel=PIXEL)
    assert set(sent) == set(want.mapped) and all(sent[k] >= n for k, n in want.mapped.items()), sent
    assert metric_by(got, "capi_events_filtered_total", "reason") == want.filtered
    assert metric_sum(got, "capi_events_rejected_total") == 0
    assert metric_by(got, "capi_decode_failures_total", "reason") == {NOT_CONFLUENT_WIRE_FORMAT: BAD}
    assert metric_sum(got, "capi_dead_lettered_total") == BAD
    assert (
        metric_sum(
            got,
            "capi_dead_lettered_total",
            topic=f"{orders}.dlq",
            stage="decode",
            reason=NOT_CONFLUENT_WIRE_FORMAT,
        )
        == BAD
    )
    assert metric_sum(got, "capi_dead_letter_write_failures_total") == 0
    assert metric_sum(got, "capi_graph_errors_total") == 0
    omitted = {
        (dict(lbls)["field"], dict(lbls)["reason"]): v
        for (name, lbls), v in got.items()
        if name == "capi_identifiers_omitted_total"
    }
    assert omitted == want.omitted

    # Match-key coverage: accepted events carrying each key, per pixel.
    assert metric_by(got, "capi_match_key_events_total", "key", pixel=PIXEL) == want.match_keys
    assert {"em", "ph", "external_id", "fbp", "fbc", "client_ip_address"} <= set(want.match_keys)

    # Lag back to 0 on every partition, nothing in flight, nothing parked.
    assert _lags(got) == {(t, str(p)): 0 for t in (orders, subs) for p in range(2)}
    assert metric_sum(got, "capi_in_flight_events") == 0
    assert metric_sum(got, "capi_in_flight_bytes") == 0
    assert metric_sum(got, "capi_destinations_parked") == 0

    # Histograms are filled: requests, batch sizes, record-to-acceptance latency, age at send.
    requests = metric_sum(got, "capi_request_duration_seconds_count", pixel=PIXEL, outcome="accepted")
    assert requests >= SENT / 1000
    assert (
        metric_sum(got, "capi_request_duration_seconds_bucket", pixel=PIXEL, outcome="accepted", le="+Inf")
        == requests
    )
    assert metric_sum(got, "capi_request_duration_seconds_sum") > 0
    assert metric_sum(got, "capi_batch_size_events_count") >= requests
    assert metric_sum(got, "capi_batch_size_events_sum") >= SENT
    assert metric_sum(got, "capi_end_to_end_latency_seconds_count") == SENT
    assert 0 < metric_sum(got, "capi_end_to_end_latency_seconds_sum") < SENT * 180
    assert metric_sum(got, "capi_event_age_at_send_seconds_count") >= SENT
    assert time.time() - metric_sum(got, "capi_consume_loop_last_turn_timestamp_seconds") < 60

    # The scrape holds nothing the catalogue does not declare.
    assert {name for name, _ in got} <= Metrics().series_names()


# -- (b) no raw PII or token in logs, dead-letter headers or metric labels ---------------------------
SECRET_TOKEN = "EAAGpiiScanSecretToken0123456789abcdef"
CUSTOMERS = 40


def _pii_customer(i: int) -> dict[str, Any]:
    return {
        "customer_id": f"PiiScanCustomer{i:03d}",
        "email": f"  PiiScan.Person{i:03d}+Shop@Example.NET ",
        "phone": f"+1 (650) 555-{i:04d}" if i % 5 else f"PiiScanBadPhone{i:03d}",
        "first_name": f"Zebulonia{i:03d}",
        "last_name": f"Quixotevich{i:03d}",
        "date_of_birth": dt.date(1971, 3, 1 + i % 28),
        "gender": "female",
        "city": f"Tumbleweedton{i:03d}",
        "state": "CA",
        "postal_code": "94035",
        "country": "US",
    }


def _pii_web(i: int, now_ms: int) -> dict[str, Any]:
    return {
        "client_ip_address": f"198.51.100.{i + 10}" if i % 2 else f"2001:db8:feed::{i + 16:x}",
        "client_user_agent": "PiiScanAgent/1.0",
        "fbp": f"fb.1.{now_ms - 86_400_000}.{7_000_000 + i}",
        "fbc": f"fb.1.{now_ms - 3_600_000}.PiiScanClick{i:03d}",
        "page_url": f"https://shop.example.com/PiiScanPage{i:03d}",
    }


def _needles(now_ms: int) -> tuple[list[str], list[str]]:
    """(raw values as the records carry them, plus the token; normalized forms of the same values)."""
    raw, normalized = [SECRET_TOKEN], []
    for i in range(CUSTOMERS):
        c, w = _pii_customer(i), _pii_web(i, now_ms)
        raw += [
            c["customer_id"],
            c["email"].strip(),
            c["first_name"],
            c["last_name"],
            c["city"],
            c["phone"],
            w["client_ip_address"],
            w["fbc"],
            w["fbp"],
            w["client_user_agent"],
            c["date_of_birth"].isoformat(),
        ]
        normalized += [c["email"].strip().lower(), c["date_of_birth"].strftime("%Y%m%d")]
        if i % 5:
            normalized += [f"1650555{i:04d}", f"+1650555{i:04d}"]
    return raw, normalized


def _pii_samples(now_ms: int) -> list[Sample]:
    rng = random.Random(3)
    samples = []
    for i in range(CUSTOMERS):
        for n, event_type in enumerate(("placed", "refunded", "placed")):
            record = order(i * 10 + n, now_ms=now_ms, rng=rng, event_type=event_type)
            record["customer"] = _pii_customer(i)
            record["web_context"] = _pii_web(i, now_ms)
            if n == 2 and i % 8 == 0:
                record["occurred_at"] = now_ms - 8 * 86_400_000  # too old: rejected by validation
            samples.append(Sample("order", record))
        sub = subscription(i, now_ms=now_ms, rng=rng, event_type="started")
        sub["customer"] = _pii_customer(i)
        sub["web_context"] = _pii_web(i, now_ms)
        samples.append(Sample("subscription", sub))
    return samples


def test_logs_headers_and_labels_hold_no_raw_pii_or_token(
    tmp_path: Path, devstack: Endpoints, make_topic: Callable[..., str]
) -> None:
    now_ms = int(time.time() * 1000)
    orders, subs = make_topic("orders", partitions=2), make_topic("subs", partitions=1)
    topics = {orders: "order", subs: "subscription"}
    samples = _pii_samples(now_ms)
    emu_config = EmulatorConfig(tokens={SECRET_TOKEN: TokenConfig(pixels=["*"])})
    with start_in_thread(emu_config) as emu:
        config = write_config(
            tmp_path,
            devstack,
            emu.base_url,
            topics,
            group_id="g-pii",
            extra={"batching": {"max_events": 25}, "capi": {"retry_initial_backoff_s": 0.05}},
        )
        want = Expected(config, topics, samples)
        assert want.rejected and want.filtered and want.omitted  # every path that logs is exercised
        rejected_by_meta = sorted(want.event_ids)[:2]
        # Transient failures (retries), and two events Meta rejects (bisection, deliver-stage DLQ).
        add_fault(emu.base_url, {"kind": "transient", "count": 2})
        add_fault(emu.base_url, {"kind": "reject_event_ids", "event_ids": rejected_by_meta})
        produce(devstack, samples, topics)
        produce_raw(devstack, orders, [b"PiiScan.Person001+Shop@Example.NET"])  # undecodable PII
        consumer = ConsumerProcess(
            config,
            tmp_path / "consumer.log",
            env={"CAPI_ACCESS_TOKEN": SECRET_TOKEN, "CAPI_LOG_LEVEL": "DEBUG"},
        )
        try:
            port = metrics_port(consumer)
            got = _wait_settled(port, len(samples) + 1, partitions=3)
            metrics_text = http_get(f"http://127.0.0.1:{port}/metrics")[1].decode()
        finally:
            code = consumer.terminate()
        log = consumer.log()
        assert code == 0, log[-3000:]
    # The flow really went through retries, Meta's rejections and every dead-letter stage.
    assert metric_sum(got, "capi_retries_total") >= 1
    assert metric_sum(got, "capi_dead_lettered_total", stage="deliver") == len(rejected_by_meta)
    assert metric_sum(got, "capi_dead_lettered_total", stage="validate") == sum(want.rejected.values())
    assert metric_sum(got, "capi_dead_lettered_total", stage="decode") == 1
    assert metric_sum(got, "capi_identifiers_omitted_total") > 0

    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) > 20, "DEBUG logging produced almost nothing to scan"
    for line in lines:
        entry = json.loads(line)  # every line is a JSON object: nothing bypasses the formatter
        assert {"ts", "level", "logger", "msg"} <= set(entry)
    dead_letters = _dead_letters(devstack, [f"{orders}.dlq", f"{subs}.dlq"])
    assert len(dead_letters) == 1 + len(rejected_by_meta) + sum(want.rejected.values())
    dlq_headers = [headers for headers, _value in dead_letters]
    # Positive control: the copies' values are the original records, PII included, and the scan sees it.
    values = b"\n".join(value for _headers, value in dead_letters).decode(errors="replace").lower()
    assert "piiscan.person001+shop@example.net" in values
    haystacks = {
        "consumer log": log.lower(),
        "dead-letter headers": "\n".join(dlq_headers).lower(),
        "/metrics": metrics_text.lower(),
    }
    raw, normalized = _needles(now_ms)
    # The needles are really in the input (a typo would make the scan pass vacuously).
    records = json.dumps([s.record for s in samples], default=str).lower() + SECRET_TOKEN.lower()
    assert [n for n in raw if n.lower() not in records] == []
    leaks = [
        f"{needle!r} in {where}"
        for needle in raw + normalized
        for where, text in haystacks.items()
        if needle.lower() in text
    ]
    assert not leaks, leaks[:20]


def _dead_letters(stack: Endpoints, topics: list[str]) -> list[tuple[str, bytes]]:
    """(headers as text, value) of every dead-letter record. Only headers are scanned: values are the
    original records, PII included by design."""
    consumer = Consumer(
        {"bootstrap.servers": stack.bootstrap_servers, "group.id": "pii-scan", "enable.partition.eof": True}
    )
    records: list[tuple[str, bytes]] = []
    try:
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=10).topics[topic]
            if metadata.error is not None:
                continue
            for partition in metadata.partitions:
                tp = TopicPartition(topic, partition, 0)
                _low, high = consumer.get_watermark_offsets(tp, timeout=10)
                if high == 0:
                    continue
                consumer.assign([tp])
                seen = 0
                deadline = time.monotonic() + 30
                while seen < high and time.monotonic() < deadline:
                    for msg in consumer.consume(100, timeout=1):
                        if msg.error() is None:
                            seen += 1
                            headers = "\n".join(
                                f"{k}={v.decode(errors='replace')}" for k, v in header_pairs(msg)
                            )
                            records.append((headers, msg.value() or b""))
    finally:
        consumer.close()
    return records
