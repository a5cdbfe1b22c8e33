"""A clean rebalance sends nothing twice (issue 16): the member that gives partitions up lets their
in-flight deliveries finish and commits them before the new owner starts reading. Real broker,
registry and emulator, two `capi-consumer run` processes, both group protocols."""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from capi_devstack import Endpoints
from capi_emulator.server import RunningEmulator
from tests.integration.pipeline_helpers import (
    ConsumerProcess,
    add_fault,
    committed_total,
    emulator_events,
    produce,
    wait_for,
    write_config,
)
from tests.integration.test_failures import orders

pytestmark = pytest.mark.integration


def group_config(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, topic: str, group: str, protocol: str
) -> Path:
    """20-event batches; the drain deadline (30 s) is also the bound of a revocation's wait."""
    return write_config(
        tmp_path,
        devstack,
        emulator.base_url,
        {topic: "order"},
        group_id=group,
        extra={
            "kafka": {"group_protocol": protocol},
            "batching": {"max_events": 20},
            "shutdown": {"drain_deadline_s": 30},
        },
    )


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_member_joining_mid_delivery_causes_no_resend(
    protocol: str,
    tmp_path: Path,
    devstack: Endpoints,
    emulator: RunningEmulator,
    make_topic: Callable[..., str],
) -> None:
    topic = make_topic("orders", partitions=4)
    group = f"g-rebalance-{protocol}-{time.monotonic_ns()}"
    config = group_config(tmp_path, devstack, emulator, topic, group, protocol)
    samples = orders(800)
    produce(devstack, samples, {topic: "order"})
    # Every request takes 3 s and 8 are in flight at a time: the first member needs 15 s for its 40
    # batches, so when the second one has started and joined it still has most of them queued or
    # in flight, about half on the partitions it gives up.
    add_fault(emulator.base_url, {"kind": "latency", "latency_ms": 3000})
    first = ConsumerProcess(config, tmp_path / "first.log")
    second: ConsumerProcess | None = None
    try:
        wait_for(lambda: len(emulator_events(emulator.base_url)) >= 20, 60, "the first accepted batch")
        second = ConsumerProcess(config, tmp_path / "second.log")
        wait_for(lambda: "partitions assigned" in second.log(), 60, "the second member's assignment")
        wait_for(lambda: len(emulator_events(emulator.base_url)) >= len(samples), 120, "every event")
        wait_for(lambda: committed_total(devstack.bootstrap_servers, group, topic, 4) == 800, 30, "commits")
        time.sleep(2)  # anything sent twice would arrive now
    finally:
        codes = [first.terminate()]
        if second is not None:
            codes.append(second.terminate())
    events = emulator_events(emulator.base_url)
    sent = Counter(e["event"]["event_id"] for e in events)
    assert set(sent) == {s.record["order_id"] for s in samples}
    assert [i for i, n in sent.items() if n > 1] == [], "sent twice across the rebalance"
    assert "revoked partitions' deliveries finished" in first.log(), first.log()[-3000:]
    assert "revoking with events still in flight" not in first.log()
    assert codes == [0] * len(codes), (first.log()[-2000:], second.log()[-2000:] if second else "")


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_a_member_leaving_while_another_joins_commits_what_it_sent(
    protocol: str,
    tmp_path: Path,
    devstack: Endpoints,
    emulator: RunningEmulator,
    make_topic: Callable[..., str],
) -> None:
    """The rebalance storm's case: a member is stopped (SIGTERM) and, while it waits for its requests
    in flight, another one joins. The leaving member must keep serving the group's rebalance and get
    its final commit through: a commit made while the group waits for this member hangs until it is
    evicted, and the new owners send its settled records again."""
    topic = make_topic("orders", partitions=4)
    group = f"g-leave-{protocol}-{time.monotonic_ns()}"
    config = group_config(tmp_path, devstack, emulator, topic, group, protocol)
    samples = orders(400)
    produce(devstack, samples, {topic: "order"})
    add_fault(emulator.base_url, {"kind": "latency", "latency_ms": 3000})
    first = ConsumerProcess(config, tmp_path / "first.log")
    second: ConsumerProcess | None = None
    codes: list[int] = []
    try:
        wait_for(lambda: len(emulator_events(emulator.base_url)) >= 20, 60, "the first accepted batch")
        first.proc.send_signal(signal.SIGTERM)  # drains its requests in flight: 3 s each
        second = ConsumerProcess(config, tmp_path / "second.log")
        codes.append(first.proc.wait(90))
        wait_for(lambda: len(emulator_events(emulator.base_url)) >= len(samples), 120, "every event")
        wait_for(lambda: committed_total(devstack.bootstrap_servers, group, topic, 4) == 400, 30, "commits")
        time.sleep(2)  # anything sent twice would arrive now
    finally:
        if first.proc.poll() is None:
            codes.append(first.terminate())
        if second is not None:
            codes.append(second.terminate())
    sent = Counter(e["event"]["event_id"] for e in emulator_events(emulator.base_url))
    assert set(sent) == {s.record["order_id"] for s in samples}
    assert "final commit failed" not in first.log(), first.log()[-3000:]
    assert [i for i, n in sent.items() if n > 1] == [], "sent twice after the member left"
    assert codes == [0] * len(codes), (first.log()[-2000:], second.log()[-2000:] if second else "")
