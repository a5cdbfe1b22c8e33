"""Failures without loss (issue 6), each against the real broker, registry and the emulator."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from capi_devstack import Endpoints
from capi_devstack.samples import Sample, order, subscription
from capi_emulator import start_in_thread
from capi_emulator.config import EmulatorConfig, TokenConfig
from capi_emulator.server import RunningEmulator
from consumer.dlq import decode_headers
from tests.integration.pipeline_helpers import (
    PIXEL,
    TOKEN,
    ConsumerProcess,
    add_fault,
    clear_faults,
    committed_total,
    emulator_events,
    header_pairs,
    produce,
    produce_raw,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

FAST_RETRIES = {
    "capi": {
        "retry_initial_backoff_s": 0.2,
        "retry_max_backoff_s": 2.0,
        "parked_retry_initial_backoff_s": 0.5,
        "parked_retry_max_backoff_s": 2.0,
    }
}


def orders(n: int, *, start: int = 0, now_ms: int | None = None) -> list[Sample]:
    now = now_ms if now_ms is not None else int(time.time() * 1000)
    rng = random.Random(start)
    return [Sample("order", order(i, now_ms=now, rng=rng)) for i in range(start, start + n)]


def read_dlq(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[dict[str, Any]]:
    """Every record of a dead-letter topic (waits for `expected` of them)."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    found: list[dict[str, Any]] = []
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return found
        consumer.assign([TopicPartition(topic, p, 0) for p in metadata.partitions])
        deadline = time.monotonic() + timeout_s
        idle_until = time.monotonic() + 3
        while time.monotonic() < deadline and (len(found) < expected or time.monotonic() < idle_until):
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            found.append(
                {
                    "key": msg.key(),
                    "value": msg.value(),
                    "headers": decode_headers(header_pairs(msg)),
                    "timestamp": msg.timestamp()[1],
                }
            )
            idle_until = time.monotonic() + 1
    finally:
        consumer.close()
    return found


def dlq_exists(bootstrap: str, topic: str) -> bool:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return topic in admin.list_topics(timeout=10).topics


def requests_log(base_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base_url}/_emulator/requests", timeout=10) as resp:
        data = json.loads(resp.read())
    entries: list[dict[str, Any]] = data["requests"] if isinstance(data, dict) else data
    return entries


def delivered_ids(base_url: str, pixel: str = PIXEL) -> set[str]:
    return {e["event"]["event_id"] for e in emulator_events(base_url, pixel)}


def test_poison_records_land_in_dlq_with_stage_and_reason(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, make_topic: Callable[..., str]
) -> None:
    order_topic = make_topic("orders", partitions=4)
    subs_topic = make_topic("subs", partitions=1)
    topics = {order_topic: "order", subs_topic: "subscription"}
    config = write_config(tmp_path, devstack, emulator.base_url, topics, group_id="g-poison")
    good = orders(5000)
    now = int(time.time() * 1000)
    rng = random.Random(5)
    old = order(900_001, now_ms=now - 8 * 86_400_000, rng=rng)
    lonely = order(900_002, now_ms=now, rng=rng)
    lonely["customer"] = {k: None for k in lonely["customer"]} | {"email": "not-an-email"}
    lonely["web_context"] = None
    renewal_without_order = subscription(900_003, now_ms=now, rng=rng, event_type="renewed")
    renewal_without_order["order_id"] = None
    produce(devstack, good[:2500], topics)
    produce_raw(devstack, order_topic, [b"definitely not avro", b"\x00\x00\x0f\x42\x3f" + b"\x02abc"])
    produce(devstack, [Sample("order", old), Sample("order", lonely)], topics)
    produce(devstack, [Sample("subscription", renewal_without_order)], topics)
    produce(devstack, good[2500:], topics)

    consumer = ConsumerProcess(config, tmp_path / "consumer.log")
    try:
        wait_for(lambda: len(emulator_events(emulator.base_url)) >= 5000, 120, "good events delivered")
        order_dlq = read_dlq(devstack.bootstrap_servers, f"{order_topic}.dlq", 4)
        subs_dlq = read_dlq(devstack.bootstrap_servers, f"{subs_topic}.dlq", 1)
        assert consumer.proc.poll() is None, "the consumer stopped"
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert delivered_ids(emulator.base_url) == {s.record["order_id"] for s in good}
    got = sorted((r["headers"]["stage"], r["headers"]["reason"]) for r in order_dlq + subs_dlq)
    assert got == sorted(
        [
            ("decode", "not_confluent_wire_format"),
            ("decode", "unknown_schema_id"),
            ("validate", "event_too_old"),
            ("validate", "insufficient_user_data"),
            ("map", "missing_event_id"),
        ]
    )
    poison = next(r for r in order_dlq if r["headers"]["reason"] == "not_confluent_wire_format")
    assert poison["value"] == b"definitely not avro"  # original bytes kept
    assert (
        poison["headers"]["origin.topic"] == order_topic and poison["headers"]["consumer.group"] == "g-poison"
    )
    # Every record is settled: offsets committed to the end of each partition.
    assert committed_total(devstack.bootstrap_servers, "g-poison", order_topic, 4) == 5004


def test_bisection_isolates_rejected_events_then_replay_delivers_them(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("orders", partitions=1)
    config = write_config(
        tmp_path,
        devstack,
        emulator.base_url,
        {topic: "order"},
        group_id="g-bisect",
        extra={"batching": {"max_events": 1000, "linger_ms": 5000}, **FAST_RETRIES},
    )
    samples = orders(1000)
    bad = [samples[17].record["order_id"], samples[500].record["order_id"], samples[981].record["order_id"]]
    add_fault(emulator.base_url, {"kind": "reject_event_ids", "event_ids": bad})
    produce(devstack, samples, {topic: "order"})
    consumer = ConsumerProcess(config, tmp_path / "consumer.log")
    try:
        wait_for(
            lambda: len(read_dlq(devstack.bootstrap_servers, f"{topic}.dlq", 3, timeout_s=5)) >= 3,
            60,
            "3 DLQ",
        )
        wait_for(
            lambda: committed_total(devstack.bootstrap_servers, "g-bisect", topic, 1) == 1000, 60, "commit"
        )
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert delivered_ids(emulator.base_url) == {s.record["order_id"] for s in samples} - set(bad)
    dlq = read_dlq(devstack.bootstrap_servers, f"{topic}.dlq", 3)
    assert len(dlq) == 3
    for record in dlq:
        h = record["headers"]
        assert (h["stage"], h["reason"], h["graph.code"], h["graph.subcode"]) == (
            "deliver",
            "graph_rejected_event",
            "100",
            "2804019",
        )
        assert h["graph.fbtrace_id"] and h["attempts"] and h["first.failure.time"]
    requests = [r for r in requests_log(emulator.base_url) if r.get("pixel_id") == PIXEL]
    print(f"\nbisection: 1000 events, 3 rejected, {len(requests)} requests")
    assert len(requests) <= 70, f"{len(requests)} requests: not bisection"

    # The cause goes away; a dry run shows the three and sends nothing, then replay delivers them.
    clear_faults(emulator.base_url)
    before = len(emulator_events(emulator.base_url))
    env = {**os.environ, "CAPI_ACCESS_TOKEN": TOKEN}
    dry = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--config", str(config), "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert dry.returncode == 0, dry.stderr
    shown = [json.loads(line)["event"]["event_id"] for line in dry.stdout.splitlines()]
    assert sorted(shown) == sorted(bad)
    assert len(emulator_events(emulator.base_url)) == before
    live = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert live.returncode == 0, live.stderr[-3000:]
    assert "replayed 3" in live.stderr and "failed again 0" in live.stderr
    assert delivered_ids(emulator.base_url) == {s.record["order_id"] for s in samples}
    again = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert again.returncode == 0 and "replayed 0" in again.stderr, again.stderr[-2000:]


def test_transient_500s_for_20s_then_everything_delivered_without_dlq(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("orders", partitions=2)
    config = write_config(
        tmp_path, devstack, emulator.base_url, {topic: "order"}, group_id="g-transient", extra=FAST_RETRIES
    )
    samples = orders(800)
    add_fault(emulator.base_url, {"kind": "transient", "code": 2, "duration_s": 20})
    started = time.monotonic()
    produce(devstack, samples, {topic: "order"})
    consumer = ConsumerProcess(config, tmp_path / "consumer.log")
    try:
        wait_for(lambda: len(emulator_events(emulator.base_url)) >= 800, 90, "delivery after recovery")
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert time.monotonic() - started >= 19
    failed = [r for r in requests_log(emulator.base_url) if r.get("status") == 500]
    assert failed, "the fault never hit"
    assert delivered_ids(emulator.base_url) == {s.record["order_id"] for s in samples}
    assert read_dlq(devstack.bootstrap_servers, f"{topic}.dlq", 0, timeout_s=3) == []


def test_throttling_613_waits_what_the_usage_header_says(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("orders", partitions=1)
    config = write_config(
        tmp_path, devstack, emulator.base_url, {topic: "order"}, group_id="g-throttle", extra=FAST_RETRIES
    )
    # 0.05 minutes = 3 s, far above the 0.2 s the jittered backoff alone would wait.
    add_fault(
        emulator.base_url,
        {
            "kind": "throttle",
            "code": 613,
            "subcode": 1487742,
            "count": 1,
            "estimated_time_to_regain_access": 0.05,
        },
    )
    produce(devstack, orders(10), {topic: "order"})
    consumer = ConsumerProcess(config, tmp_path / "consumer.log")
    try:
        wait_for(lambda: len(emulator_events(emulator.base_url)) >= 10, 60, "delivery after the throttle")
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    log = sorted(requests_log(emulator.base_url), key=lambda r: r["at"])
    throttled = [r for r in log if r.get("error_code") == 613]
    assert len(throttled) == 1
    after = [r for r in log if r["at"] > throttled[0]["at"]]
    assert after and after[0]["at"] - throttled[0]["at"] >= 2.9


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_expired_token_parks_one_pixel_while_the_other_flows(
    tmp_path: Path, devstack: Endpoints, make_topic: Callable[..., str]
) -> None:
    tokens = {"token-a": TokenConfig(pixels=["1111111111"]), "token-b": TokenConfig(pixels=["2222222222"])}
    with start_in_thread(EmulatorConfig(tokens=tokens)) as emu:
        topic_a, topic_b = make_topic("orders-a", partitions=2), make_topic("orders-b", partitions=2)
        port = _free_port()
        config = write_config(
            tmp_path,
            devstack,
            emu.base_url,
            {topic_a: "order", topic_b: "order"},
            group_id="g-park",
            extra={**FAST_RETRIES, "metrics": {"host": "127.0.0.1", "port": port}},
        )
        # Two destinations, one per topic, each with its own token from the environment.
        text = config.read_text()
        import yaml

        data = yaml.safe_load(text)
        data["destinations"] = {
            "a": {"pixel_id": "1111111111", "access_token_env": "TOKEN_A"},
            "b": {"pixel_id": "2222222222", "access_token_env": "TOKEN_B"},
        }
        data["topics"][topic_a]["destination"] = "a"
        data["topics"][topic_b]["destination"] = "b"
        config.write_text(yaml.safe_dump(data))
        _admin_token(emu.base_url, {"token": "token-b", "expired": True})
        sa, sb = orders(300, start=0), orders(300, start=10_000)
        produce(devstack, sa, {topic_a: "order"})
        produce(devstack, sb, {topic_b: "order"})
        consumer = ConsumerProcess(
            config, tmp_path / "consumer.log", env={"TOKEN_A": "token-a", "TOKEN_B": "token-b"}
        )
        try:
            wait_for(lambda: len(delivered_ids(emu.base_url, "1111111111")) >= 300, 60, "pixel a flowing")
            wait_for(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 503, 30, "unready while parked")
            _status, body = _get(f"http://127.0.0.1:{port}/readyz")
            assert "parked" in body and "b" in body
            assert "capi_destinations_parked 1.0" in _get(f"http://127.0.0.1:{port}/metrics")[1]
            assert delivered_ids(emu.base_url, "2222222222") == set()
            _admin_token(emu.base_url, {"token": "token-b", "expired": False})
            wait_for(
                lambda: len(delivered_ids(emu.base_url, "2222222222")) >= 300, 60, "pixel b after the fix"
            )
            wait_for(lambda: _get(f"http://127.0.0.1:{port}/readyz")[0] == 200, 30, "ready again")
            assert "capi_destinations_parked 0.0" in _get(f"http://127.0.0.1:{port}/metrics")[1]
        finally:
            assert consumer.terminate() == 0, consumer.log()[-3000:]
        assert delivered_ids(emu.base_url, "1111111111") == {s.record["order_id"] for s in sa}
        assert delivered_ids(emu.base_url, "2222222222") == {s.record["order_id"] for s in sb}
        for topic in (topic_a, topic_b):
            assert read_dlq(devstack.bootstrap_servers, f"{topic}.dlq", 0, timeout_s=2) == []


def test_unwritable_dlq_stops_the_consumer_without_committing_past_the_record(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("orders", partitions=1)
    admin = AdminClient({"bootstrap.servers": devstack.bootstrap_servers})
    # Kafka refuses every dead-letter copy: they carry headers far larger than 64 bytes.
    spec = NewTopic(
        f"{topic}.dlq", num_partitions=1, replication_factor=1, config={"max.message.bytes": "64"}
    )
    admin.create_topics([spec])[f"{topic}.dlq"].result(30)
    config = write_config(
        tmp_path,
        devstack,
        emulator.base_url,
        {topic: "order"},
        group_id="g-nodlq",
        extra={"dlq": {"write_timeout_s": 5}},
    )
    good = orders(100)
    produce(devstack, good[:50], {topic: "order"})
    produce_raw(devstack, topic, [b"not avro at offset 50"])
    produce(devstack, good[50:], {topic: "order"})
    consumer = ConsumerProcess(config, tmp_path / "consumer.log")
    code = consumer.proc.wait(90)
    log = consumer.log()
    assert code == 1, log[-3000:]
    assert "dead-letter write failed" in log
    assert committed_total(devstack.bootstrap_servers, "g-nodlq", topic, 1) <= 50


def _admin_token(base_url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(
        f"{base_url}/_emulator/tokens",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10):
        pass


def _free_port() -> int:
    from capi_devstack.processes import free_port

    return free_port()
