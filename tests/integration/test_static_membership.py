"""Static membership (`kafka.static_membership`): a member restarted within the session timeout gets its
partitions back and the other members see no rebalance (what the Helm chart's rolling restarts rely on)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from capi_devstack import Endpoints
from capi_emulator.server import RunningEmulator
from tests.integration.pipeline_helpers import (
    ConsumerProcess,
    emulator_events,
    produce,
    wait_for,
    write_config,
)
from tests.integration.test_failures import orders

pytestmark = pytest.mark.integration


def rebalance_events(consumer: ConsumerProcess) -> list[tuple[str, list[str]]]:
    """("partitions assigned" | "partitions revoked" | "partitions lost", partitions), in log order."""
    events = []
    for line in consumer.log().splitlines():
        if line.startswith("{") and '"partitions ' in line:
            entry = json.loads(line)
            if entry["msg"] in ("partitions assigned", "partitions revoked", "partitions lost"):
                events.append((entry["msg"], sorted(entry["partitions"])))
    return events


def owned(consumer: ConsumerProcess) -> set[str]:
    held: set[str] = set()
    for what, partitions in rebalance_events(consumer):
        if what == "partitions assigned":
            held |= set(partitions)
        else:
            held -= set(partitions)
    return held


def test_a_static_member_restarted_within_the_session_timeout_moves_no_partition(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("orders", partitions=4)
    config = write_config(
        tmp_path,
        devstack,
        emulator.base_url,
        {topic: "order"},
        group_id="g-static",
        extra={"kafka": {"static_membership": True, "consumer_properties": {"session.timeout.ms": 30000}}},
    )
    a = ConsumerProcess(config, tmp_path / "a-1.log", env={"POD_NAME": "member-a"})
    b = ConsumerProcess(config, tmp_path / "b.log", env={"POD_NAME": "member-b"})
    try:
        wait_for(
            lambda: len(owned(a)) == 2 and len(owned(b)) == 2, 90, "two members with two partitions each"
        )
        a_partitions, b_events = owned(a), rebalance_events(b)
        first = orders(200)
        produce(devstack, first, {topic: "order"})
        wait_for(lambda: len(emulator_events(emulator.base_url)) >= 200, 60, "the first events")

        # A rolling restart of member A: SIGTERM, then the same member id comes back at once.
        assert a.terminate() == 0, a.log()[-3000:]
        restarted_at = time.monotonic()
        a = ConsumerProcess(config, tmp_path / "a-2.log", env={"POD_NAME": "member-a"})
        wait_for(lambda: owned(a) == a_partitions, 60, "member A's partitions back")
        print(f"\nmember A had its partitions back {time.monotonic() - restarted_at:.1f}s after its restart")
        second = orders(200, start=1000)
        produce(devstack, second, {topic: "order"})
        wait_for(lambda: len(emulator_events(emulator.base_url)) >= 400, 60, "the second events")
        time.sleep(3)  # a rebalance would have reached B by now
        assert rebalance_events(b) == b_events, "member B saw partitions move"
        assert [what for what, _ in rebalance_events(a)] == ["partitions assigned"]
    finally:
        for member in (a, b):
            if member.proc.poll() is None:
                member.terminate()
    received = {e["event"]["event_id"] for e in emulator_events(emulator.base_url)}
    assert {s.record["order_id"] for s in first + second} <= received
