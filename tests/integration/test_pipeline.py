"""The pipeline end to end against the real broker, registry and the CAPI emulator."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from capi_devstack import Endpoints
from capi_devstack.samples import Sample, mixed
from capi_emulator.server import RunningEmulator
from consumer.config import load_config
from consumer.mapping import Mapped, Mapper
from tests.integration.pipeline_helpers import (
    ConsumerProcess,
    add_fault,
    avro_roundtrip,
    clear_faults,
    committed_total,
    emulator_events,
    produce,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration


def _expected(config_path: Path, topics: dict[str, str], samples: list[Sample]) -> dict[str, dict[str, Any]]:
    """event_id -> the server event the mapping module makes of each sendable sample."""
    config = load_config(config_path, resolve_secrets=False)
    mapper = Mapper.from_config(config)
    by_kind = {kind: name for name, kind in topics.items()}
    expected: dict[str, dict[str, Any]] = {}
    for sample in samples:
        result = mapper.map(by_kind[sample.kind], avro_roundtrip(sample.kind, sample.record))
        if isinstance(result, Mapped):
            expected[result.event["event_id"]] = result.event
    return expected


def _same_user_data(got: dict[str, Any], want: dict[str, Any]) -> bool:
    def norm(v: Any) -> Any:
        return frozenset(v) if isinstance(v, list) else v

    return {k: norm(v) for k, v in got.items()} == {k: norm(v) for k, v in want.items()}


def _start(
    tmp_path: Path,
    devstack: Endpoints,
    emulator: RunningEmulator,
    make_topic: Callable[..., str],
    n: int,
    *,
    group: str,
    extra: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, str], list[Sample], dict[str, dict[str, Any]]]:
    topics = {make_topic("orders", partitions=4): "order", make_topic("subs", partitions=4): "subscription"}
    config = write_config(tmp_path, devstack, emulator.base_url, topics, group_id=group, extra=extra)
    samples = list(mixed(n, now_ms=int(time.time() * 1000)))
    expected = _expected(config, topics, samples)
    assert produce(devstack, samples, topics) == n
    return config, topics, samples, expected


def _assert_delivered(emulator: RunningEmulator, expected: dict[str, dict[str, Any]]) -> None:
    events = emulator_events(emulator.base_url)
    got: dict[str, dict[str, Any]] = {}
    for entry in events:
        got.setdefault(entry["event"]["event_id"], entry["event"])
    assert set(got) == set(expected), (
        f"missing {len(set(expected) - set(got))}, unexpected {len(set(got) - set(expected))}"
    )
    for event_id, want in expected.items():
        have = got[event_id]
        assert have["event_name"] == want["event_name"]
        assert have["action_source"] == "system_generated"
        assert have["event_time"] == want["event_time"]
        assert have.get("custom_data") == want.get("custom_data")
        assert _same_user_data(have["user_data"], want["user_data"]), event_id
    # Duplicates (after a crash) must carry the same event_id as the original: they do by construction,
    # since every stored event was matched to an expected event_id above.


def test_mixed_events_arrive_with_order_id_as_event_id(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, make_topic: Callable[..., str]
) -> None:
    config, topics, samples, expected = _start(
        tmp_path, devstack, emulator, make_topic, 5000, group="g-mixed"
    )
    purchases = [e for e in expected.values() if e["event_name"] == "Purchase"]
    assert purchases and all(e["custom_data"]["order_id"] == e["event_id"] for e in purchases)
    assert {e["event_name"] for e in expected.values()} >= {"Purchase", "Subscribe", "StartTrial"}

    consumer = ConsumerProcess(config, tmp_path / "consumer.log")
    try:
        wait_for(
            lambda: len(emulator_events(emulator.base_url)) >= len(expected),
            120,
            "all events at the emulator",
        )
        order_topic = next(t for t, k in topics.items() if k == "order")
        orders = sum(1 for s in samples if s.kind == "order")
        wait_for(
            lambda: committed_total(devstack.bootstrap_servers, "g-mixed", order_topic, 4) == orders,
            60,
            "offsets committed",
        )
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    _assert_delivered(emulator, expected)


def test_sigkill_mid_stream_loses_nothing(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, make_topic: Callable[..., str]
) -> None:
    # Small batches, few requests and a slow emulator keep work in flight when the process dies.
    slow = {"batching": {"max_events": 50}, "capi": {"max_requests_in_flight": 2}}
    config, _topics, _samples, expected = _start(
        tmp_path, devstack, emulator, make_topic, 3000, group="g-kill", extra=slow
    )
    add_fault(emulator.base_url, {"kind": "latency", "latency_ms": 200})
    first = ConsumerProcess(config, tmp_path / "first.log")
    wait_for(lambda: len(emulator_events(emulator.base_url)) >= 500, 120, "some events delivered")
    first.kill()
    delivered_before_kill = len(emulator_events(emulator.base_url))
    assert delivered_before_kill < len(expected), "the kill came too late to test anything"
    clear_faults(emulator.base_url)
    second = ConsumerProcess(config, tmp_path / "second.log")
    try:
        wait_for(
            lambda: {e["event"]["event_id"] for e in emulator_events(emulator.base_url)} >= set(expected),
            120,
            "every event after restart",
        )
    finally:
        assert second.terminate() == 0, second.log()[-3000:]
    _assert_delivered(emulator, expected)


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_two_consumers_share_partitions_and_miss_nothing(
    tmp_path: Path,
    devstack: Endpoints,
    emulator: RunningEmulator,
    make_topic: Callable[..., str],
    protocol: str,
) -> None:
    """Both group protocols: classic with cooperative-sticky (default) and KIP-848."""
    # A small in-flight cap keeps the first member from swallowing every record before the second
    # joins (a cooperative rebalance takes two rounds).
    slow = {
        "batching": {"max_events": 50},
        "capi": {"max_requests_in_flight": 2},
        "limits": {"max_in_flight_events": 100},
        "kafka": {"group_protocol": protocol},
    }
    config, _topics, _samples, expected = _start(
        tmp_path, devstack, emulator, make_topic, 4000, group=f"g-two-{protocol}", extra=slow
    )
    add_fault(emulator.base_url, {"kind": "latency", "latency_ms": 300})
    a = ConsumerProcess(config, tmp_path / "a.log")
    b = ConsumerProcess(config, tmp_path / "b.log")
    try:
        wait_for(
            lambda: {e["event"]["event_id"] for e in emulator_events(emulator.base_url)} >= set(expected),
            180,
            "every event with two members",
        )
    finally:
        code_a, code_b = a.terminate(), b.terminate()
    assert (code_a, code_b) == (0, 0), a.log()[-2000:] + b.log()[-2000:]
    consumed = [_consumed(a.log()), _consumed(b.log())]
    assert all(n > 0 for n in consumed), f"one member did no work: {consumed}"
    _assert_delivered(emulator, expected)


def _consumed(log: str) -> int:
    for line in reversed(log.splitlines()):
        if '"msg":"stopped"' in line:
            return int(json.loads(line)["consumed"])
    raise AssertionError("no 'stopped' line in the consumer log")
