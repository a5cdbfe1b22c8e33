"""The dead-letter monitor against the real broker: oldest waiting record per topic, replay offsets."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from capi_devstack import Endpoints
from consumer.config import REPLAY_GROUP_SUFFIX, load_config
from consumer.dlq_monitor import DeadLetterMonitor
from consumer.metrics import Metrics
from tests.integration.pipeline_helpers import write_config

pytestmark = pytest.mark.integration

DAY_MS = 86_400_000
# A fixed "now" so that ages are exact (the broker refuses timestamps more than an hour ahead).
NOW_MS = int(time.time() * 1000)


def _produce(stack: Endpoints, topic: str, records: list[tuple[int, int]]) -> None:
    """`records`: (partition, timestamp ms)."""
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    errors: list[object] = []
    for partition, ts in records:
        producer.produce(
            topic, value=b"x", partition=partition, timestamp=ts, on_delivery=lambda e, _m: errors.append(e)
        )
    assert producer.flush(30) == 0
    assert errors == [None] * len(records)


def _commit(stack: Endpoints, group: str, topic: str, offsets: dict[int, int]) -> None:
    """Commit offsets for `group` the way the replay command would (no subscription needed)."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap_servers, "group.id": group})
    try:
        consumer.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        consumer.close()


def _monitor(
    stack: Endpoints,
    topics: list[str],
    metrics: Metrics,
    *,
    interval_s: float = 60.0,
    max_records_per_check: int = 50_000,
) -> DeadLetterMonitor:
    conf = {"bootstrap.servers": stack.bootstrap_servers, "group.id": "g-mon" + REPLAY_GROUP_SUFFIX}
    return DeadLetterMonitor(
        conf,
        topics,
        metrics,
        interval_s=interval_s,
        max_records_per_check=max_records_per_check,
        clock=lambda: NOW_MS / 1000,
    )


def _gauge(metrics: Metrics, name: str, topic: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"topic": topic})


def test_oldest_waiting_record_follows_the_replay_offset(
    devstack: Endpoints, make_topic: Callable[..., str]
) -> None:
    dlq = make_topic("orders.dlq", partitions=2)
    missing = f"never-created-{dlq}"
    _produce(
        devstack,
        dlq,
        [(0, NOW_MS - 3 * DAY_MS), (0, NOW_MS - 2 * DAY_MS), (1, NOW_MS - DAY_MS), (1, NOW_MS - DAY_MS // 2)],
    )
    metrics = Metrics()
    monitor = _monitor(devstack, [dlq, missing], metrics)

    states = monitor.check()
    assert states[dlq].oldest_age_s == pytest.approx(3 * 86400)
    assert states[dlq].waiting == 4
    # A dead-letter topic that does not exist yet has nothing waiting (and is not created by looking).
    assert states[missing].oldest_age_s == 0 and states[missing].waiting == 0
    assert _gauge(metrics, "capi_dlq_oldest_record_age_seconds", dlq) == pytest.approx(3 * 86400)
    assert _gauge(metrics, "capi_dlq_records_waiting", dlq) == 4
    assert _gauge(metrics, "capi_dlq_oldest_record_age_seconds", missing) == 0
    assert metrics.registry.get_sample_value(
        "capi_dlq_monitor_last_success_timestamp_seconds"
    ) == pytest.approx(NOW_MS / 1000)

    # The replay group moved past the oldest record: the next one is the oldest.
    _commit(devstack, "g-mon" + REPLAY_GROUP_SUFFIX, dlq, {0: 1})
    state = monitor.check()[dlq]
    assert state.oldest_age_s == pytest.approx(2 * 86400) and state.waiting == 3

    # A replay that fails again appends an old record behind younger ones: it is found at the tail.
    _produce(devstack, dlq, [(1, NOW_MS - 4 * DAY_MS)])
    state = monitor.check()[dlq]
    assert state.oldest_age_s == pytest.approx(4 * 86400) and state.waiting == 4

    # Everything replayed: nothing waits.
    _commit(devstack, "g-mon" + REPLAY_GROUP_SUFFIX, dlq, {0: 2, 1: 3})
    state = monitor.check()[dlq]
    assert state.oldest_age_s == 0 and state.waiting == 0
    assert _gauge(metrics, "capi_dlq_oldest_record_age_seconds", dlq) == 0

    # Looking did not create the missing topic, commit anything for the group, or join it.
    admin_md = Consumer({"bootstrap.servers": devstack.bootstrap_servers, "group.id": "probe"})
    try:
        assert missing not in admin_md.list_topics(timeout=10).topics
    finally:
        admin_md.close()


def test_a_large_backlog_is_read_over_several_checks(
    devstack: Endpoints, make_topic: Callable[..., str]
) -> None:
    dlq = make_topic("subs.dlq", partitions=1)
    # Ten records, the oldest last; at most four are read per check.
    _produce(devstack, dlq, [(0, NOW_MS - DAY_MS)] * 9 + [(0, NOW_MS - 5 * DAY_MS)])
    metrics = Metrics()
    monitor = _monitor(devstack, [dlq], metrics, max_records_per_check=4)
    ages = [monitor.check()[dlq].oldest_age_s for _ in range(3)]
    assert ages == [pytest.approx(86400), pytest.approx(86400), pytest.approx(5 * 86400)]


def test_run_checks_periodically_and_stops_promptly(
    devstack: Endpoints, make_topic: Callable[..., str]
) -> None:
    dlq = make_topic("orders.dlq", partitions=1)
    _produce(devstack, dlq, [(0, NOW_MS - 6 * DAY_MS)])
    metrics = Metrics()
    monitor = _monitor(devstack, [dlq], metrics, interval_s=0.2)

    async def scenario() -> float:
        stop = asyncio.Event()
        task = asyncio.create_task(monitor.run(stop))
        deadline = time.monotonic() + 30
        while _gauge(metrics, "capi_dlq_oldest_record_age_seconds", dlq) is None:
            assert time.monotonic() < deadline, "no check within 30 s"
            await asyncio.sleep(0.05)
        # The loop keeps turning: the waiting count follows new records.
        _produce(devstack, dlq, [(0, NOW_MS - DAY_MS)])
        while _gauge(metrics, "capi_dlq_records_waiting", dlq) != 2:
            assert time.monotonic() < deadline, "the monitor did not check again"
            await asyncio.sleep(0.05)
        stop.set()
        started = time.monotonic()
        await asyncio.wait_for(task, timeout=15)
        return time.monotonic() - started

    stopped_in = asyncio.run(scenario())
    assert stopped_in < 12
    assert _gauge(metrics, "capi_dlq_oldest_record_age_seconds", dlq) == pytest.approx(6 * 86400)


def test_a_failed_check_is_counted_and_keeps_the_last_values(
    devstack: Endpoints, make_topic: Callable[..., str]
) -> None:
    dlq = make_topic("orders.dlq", partitions=1)
    _produce(devstack, dlq, [(0, NOW_MS - 2 * DAY_MS)])
    metrics = Metrics()
    monitor = _monitor(devstack, [dlq], metrics)
    asyncio.run(monitor.check_async())
    assert _gauge(metrics, "capi_dlq_oldest_record_age_seconds", dlq) == pytest.approx(2 * 86400)

    def broken(conf: dict[str, object]) -> Consumer:
        raise RuntimeError("broker unreachable")

    monitor._factory = broken
    assert asyncio.run(monitor.check_async()) is None
    assert metrics.registry.get_sample_value("capi_dlq_monitor_errors_total") == 1
    assert _gauge(metrics, "capi_dlq_oldest_record_age_seconds", dlq) == pytest.approx(2 * 86400)


def test_from_config_watches_every_dead_letter_topic_as_the_replay_group(
    tmp_path: Path, devstack: Endpoints
) -> None:
    topics = {"orders": "order", "subs": "subscription"}
    path = write_config(tmp_path, devstack, "http://127.0.0.1:1", topics, group_id="g-conf")
    config = load_config(path, resolve_secrets=False)
    monitor = DeadLetterMonitor.from_config(config, Metrics(), interval_s=5)
    assert monitor.topics == ["orders.dlq", "subs.dlq"]
    assert monitor._conf["group.id"] == "g-conf-replay"
    assert monitor._conf["enable.auto.commit"] is False
    assert "partition.assignment.strategy" not in monitor._conf
