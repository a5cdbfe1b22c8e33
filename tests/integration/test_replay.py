"""Replay reads a dead-letter topic only up to its end at start-up (issue 12), against the real broker.

The dead-letter topic is filled the way production fills it: a live consumer dead-letters events Meta
rejects, events 9 days old and undecodable records. Then the cause of five rejections goes away and
replay runs while a live consumer appends new failures to the same topic.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from capi_devstack import Endpoints
from capi_devstack.samples import Sample, order
from capi_emulator.server import RunningEmulator
from consumer.dlq import decode_headers
from tests.integration.pipeline_helpers import (
    TOKEN,
    ConsumerProcess,
    add_fault,
    clear_faults,
    emulator_events,
    header_pairs,
    metrics_port,
    produce,
    produce_raw,
    wait_for,
    write_config,
)
from tests.integration.test_failures import FAST_RETRIES, orders

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000


@dataclass(frozen=True)
class DlqRecord:
    partition: int
    offset: int
    value: bytes
    headers: dict[str, str]


def high_watermarks(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"wm-{time.monotonic_ns()}"})
    try:
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in range(partitions)
        }
    finally:
        consumer.close()


def read_all(bootstrap: str, topic: str, partitions: int) -> list[DlqRecord]:
    """Every record of `topic` up to its current high watermarks."""
    ends = high_watermarks(bootstrap, topic, partitions)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{time.monotonic_ns()}",
            "enable.auto.commit": False,
        }
    )
    found: list[DlqRecord] = []
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
        deadline = time.monotonic() + 30
        while len(found) < sum(ends.values()) and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            if offset < ends[partition]:
                found.append(
                    DlqRecord(partition, offset, msg.value() or b"", decode_headers(header_pairs(msg)))
                )
    finally:
        consumer.close()
    assert len(found) == sum(ends.values()), f"read {len(found)} of {ends}"
    return found


def committed(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return {tp.partition: tp.offset for tp in offsets}


def origin_of(record: DlqRecord) -> tuple[str, str]:
    return record.headers["origin.partition"], record.headers["origin.offset"]


def test_replay_stops_at_the_start_up_end_and_dead_letters_each_failure_once(
    tmp_path: Path,
    devstack: Endpoints,
    emulator: RunningEmulator,
    make_topic: Callable[..., str],
    kafka_admin: AdminClient,
) -> None:
    topic = make_topic("orders", partitions=2)
    dlq = f"{topic}.dlq"
    kafka_admin.create_topics([NewTopic(dlq, num_partitions=2, replication_factor=1)])[dlq].result(timeout=30)
    bootstrap = devstack.bootstrap_servers
    group = "g-replay-end"
    config = write_config(
        tmp_path, devstack, emulator.base_url, {topic: "order"}, group_id=group, extra=FAST_RETRIES
    )
    now = int(time.time() * 1000)
    fixed_later = orders(5, start=0)  # rejected now, accepted at replay
    still_bad = orders(3, start=100)  # rejected now and at replay
    rng = random.Random(7)
    old = [Sample("order", order(200 + i, now_ms=now - 9 * DAY_MS, rng=rng)) for i in range(3)]
    garbage = [b"not avro %d" % i for i in range(5)]
    fixed_ids = [s.record["order_id"] for s in fixed_later]
    bad_ids = [s.record["order_id"] for s in still_bad]
    add_fault(emulator.base_url, {"kind": "reject_event_ids", "event_ids": fixed_ids + bad_ids})
    produce(devstack, fixed_later + still_bad + old, {topic: "order"})
    produce_raw(devstack, topic, garbage)

    # 1. The live consumer dead-letters all 16.
    live = ConsumerProcess(config, tmp_path / "live-1.log")
    try:
        wait_for(lambda: sum(high_watermarks(bootstrap, dlq, 2).values()) == 16, 90, "16 dead-lettered")
    finally:
        assert live.terminate() == 0, live.log()[-3000:]
    originals = read_all(bootstrap, dlq, 2)
    assert {r.headers["attempts"] for r in originals} == {"1"}

    # 2. Five rejections are fixed. Replay runs (slowed by 1.5 s per request) while a live consumer
    #    dead-letters five new records into the same topic.
    clear_faults(emulator.base_url)
    add_fault(emulator.base_url, {"kind": "reject_event_ids", "event_ids": bad_ids})
    add_fault(emulator.base_url, {"kind": "latency", "latency_ms": 1500})
    ends_1 = high_watermarks(bootstrap, dlq, 2)
    env = {**os.environ, "CAPI_ACCESS_TOKEN": TOKEN, "CAPI_LOG_LEVEL": "INFO"}
    live = ConsumerProcess(config, tmp_path / "live-2.log")
    replay_log = tmp_path / "replay-1.log"
    try:
        metrics_port(live)
        wait_for(lambda: '"partitions assigned"' in live.log(), 60, "the live consumer's partitions")
        started = time.monotonic()
        with replay_log.open("wb") as out:
            replay = subprocess.Popen(
                [sys.executable, "-m", "consumer", "replay", "--config", str(config)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )
        wait_for(lambda: '"partitions assigned"' in replay_log.read_text(), 60, "the replay's partitions")
        produce_raw(devstack, topic, [b"late %d" % i for i in range(5)])

        def late_dead_lettered() -> bool:
            return sum(r.value.startswith(b"late") for r in read_all(bootstrap, dlq, 2)) == 5

        wait_for(late_dead_lettered, 30, "the live consumer's 5 new dead-letter copies")
        assert replay.poll() is None, "the replay ended before the live consumer appended: nothing was tested"
        replay.wait(120)
        took = time.monotonic() - started
    finally:
        assert live.terminate() == 0, live.log()[-3000:]
    summary = replay_log.read_text()
    print(f"\nreplay 1 took {took:.1f}s")
    assert replay.returncode == 1, summary[-3000:]
    assert "replayed 5 " in summary and "expired 3," in summary and "failed again 8 " in summary, summary[
        -2000:
    ]
    assert committed(bootstrap, f"{group}-replay", dlq, 2) == ends_1
    assert {e["event"]["event_id"] for e in emulator_events(emulator.base_url)} == set(fixed_ids)

    after_1 = read_all(bootstrap, dlq, 2)
    copies = [r for r in after_1 if r.offset >= ends_1[r.partition] and not r.value.startswith(b"late")]
    failing = [r for r in originals if r.headers["stage"] == "decode" or _is_still_bad(r, bad_ids)]
    assert len(copies) == 8, [c.headers for c in copies]
    assert sorted(origin_of(c) for c in copies) == sorted(origin_of(r) for r in failing)
    first_failure = {origin_of(r): r.headers["first.failure.time"] for r in originals}
    for copy in copies:
        assert copy.headers["attempts"] == "2" and copy.headers["origin.topic"] == topic
        assert copy.headers["first.failure.time"] == first_failure[origin_of(copy)]
        assert copy.headers["consumer.group"] == f"{group}-replay"
    late = [r for r in after_1 if r.value.startswith(b"late")]
    assert {r.headers["attempts"] for r in late} == {"1"} and {r.headers["consumer.group"] for r in late} == {
        group
    }

    # 3. A second run handles what the first left: the 8 copies (attempts 3) and the 5 late records.
    clear_faults(emulator.base_url)
    add_fault(emulator.base_url, {"kind": "reject_event_ids", "event_ids": bad_ids})
    ends_2 = high_watermarks(bootstrap, dlq, 2)
    started = time.monotonic()
    second = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--config", str(config)],
        env={**env, "CAPI_LOG_LEVEL": "WARNING"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    took = time.monotonic() - started
    print(f"replay 2 took {took:.1f}s")
    assert second.returncode == 1, second.stderr[-3000:]
    assert "replayed 0 " in second.stderr and "expired 0," in second.stderr, second.stderr[-2000:]
    assert "failed again 13 " in second.stderr, second.stderr[-2000:]
    assert committed(bootstrap, f"{group}-replay", dlq, 2) == ends_2
    assert took < 30, f"second replay took {took:.1f}s"
    after_2 = read_all(bootstrap, dlq, 2)
    new = [r for r in after_2 if r.offset >= ends_2[r.partition]]
    assert len(new) == 13
    assert sorted(r.headers["attempts"] for r in new) == ["2"] * 5 + ["3"] * 8
    assert sorted(origin_of(r) for r in new if r.headers["attempts"] == "3") == sorted(
        origin_of(c) for c in copies
    )


def _is_still_bad(record: DlqRecord, bad_ids: list[str]) -> bool:
    """A dead-lettered delivery rejection whose event id is one of `bad_ids`."""
    return record.headers["stage"] == "deliver" and any(i.encode() in record.value for i in bad_ids)
