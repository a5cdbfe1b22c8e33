"""The run loop over in-memory edges (tests/fakes.py): retries, bisection, parking, backpressure,
revocation, draining and replay's bounds, in virtual time. The same rules run against the real
broker and the emulator in tests/integration."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from capi_devstack.samples import order
from consumer.decode import Decoder, parse_schema
from consumer.deliver import Destination, RetryPolicy
from consumer.dlq import GuardLimits, decode_headers
from consumer.errors import DESTINATION_UNAVAILABLE, GRAPH_REJECTED_EVENT
from consumer.pipeline import FatalPipelineError
from consumer.replay import FILTERED_OUT, ReplayFilter, ReplayPolicy
from tests.fakes import (
    ORDER_SCHEMA,
    Backend,
    Harness,
    MemoryBroker,
    avro,
    graph_error,
    order_config,
    pixel_of,
)

NOW_MS = int(time.time() * 1000)


def orders(n: int, start: int = 0) -> list[dict[str, Any]]:
    rng = random.Random(start)
    return [order(i, now_ms=NOW_MS, rng=rng) for i in range(start, start + n)]


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=60))


async def every_record_is_delivered_in_batches_and_committed(backend: Backend) -> None:
    topic = backend.topic("orders")
    h = Harness.build({topic: "A"}, partitions=2, max_events=20, backend=backend)
    ids = h.produce(topic, orders(50), partitions=2)
    await h.run_until(lambda: len(h.graph.accepted["A"]) == 50)
    assert sorted(h.graph.accepted["A"]) == sorted(ids)
    assert all(len(batch) <= 20 for _pixel, batch in h.graph.requests)
    assert h.committed() == {(topic, 0): 25, (topic, 1): 25}
    assert h.metric("capi_events_accepted_total", pixel=pixel_of("A"), event_name="Purchase") == 50


async def a_parked_destination_holds_its_events_while_the_other_flows(backend: Backend) -> None:
    orders_t, other_t = backend.topic("orders"), backend.topic("other")
    h = Harness.build({orders_t: "A", other_t: "B"}, backend=backend)
    broken = [True]

    def expired_token(dest: Destination, events: list[dict[str, Any]]) -> Any:
        return graph_error(190, 463) if dest.name == "A" and broken[0] else None

    h.graph.rules.append(expired_token)
    h.clock.gate.clear()  # parked batches wait for the next probe until we have looked
    ids = h.produce(orders_t, orders(10))
    other = h.produce(other_t, orders(10, start=100))
    h.start()
    await h.until(lambda: len(h.graph.accepted["B"]) == 10 and h.pipeline.parked == ["A"])
    await h.until(lambda: h.committed().get((other_t, 0)) == 10)
    await h.turns()
    assert h.pipeline.readiness() == (False, "destination parked: A")
    assert h.source.paused_partitions == {(orders_t, 0)}
    assert h.metric("capi_destinations_parked") == 1
    assert (orders_t, 0) not in h.committed()
    assert sorted(h.graph.accepted["B"]) == sorted(other)
    broken[0] = False  # the token is replaced
    h.clock.gate.set()
    await h.until(lambda: len(h.graph.accepted["A"]) == 10)
    await h.turns()
    assert h.pipeline.readiness() == (True, "ok") and h.metric("capi_destinations_parked") == 0
    assert h.source.paused_partitions == set()
    await h.stop()
    assert sorted(h.graph.accepted["A"]) == sorted(ids)
    assert h.committed() == {(orders_t, 0): 10, (other_t, 0): 10}
    assert not h.dlq.copies(orders_t + ".dlq")


def test_every_record_is_delivered_in_batches_and_committed() -> None:
    run(lambda: every_record_is_delivered_in_batches_and_committed(MemoryBroker()))


def test_a_parked_destination_holds_its_events_and_resumes_when_meta_accepts_again() -> None:
    run(lambda: a_parked_destination_holds_its_events_while_the_other_flows(MemoryBroker()))


def test_throttled_batch_waits_what_meta_asks_while_its_partitions_pause() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A", "other": "B"})
        usage = '{"1": [{"type": "ads_management", "estimated_time_to_regain_access": 2}]}'
        throttled = [2]

        def throttle(dest: Destination, events: list[dict[str, Any]]) -> Any:
            if dest.name == "A" and throttled[0] > 0:
                throttled[0] -= 1
                return graph_error(80004, 2446079, headers={"X-Business-Use-Case-Usage": usage})
            return None

        h.graph.rules.append(throttle)
        h.clock.gate.clear()  # backoffs wait until we have looked
        ids = h.produce("orders", orders(10))
        h.start()
        await h.until(lambda: h.pipeline.p.deliverer.state.retrying["A"] == 1)
        await h.turns()
        assert h.source.paused_partitions == {("orders", 0)}  # B's topic keeps flowing
        other = h.produce("other", orders(5, start=100))
        await h.until(lambda: len(h.graph.accepted["B"]) == 5)
        assert sorted(h.graph.accepted["B"]) == sorted(other)
        h.clock.gate.set()
        await h.until(lambda: len(h.graph.accepted["A"]) == 10)
        await h.turns()
        assert h.source.paused_partitions == set()
        await h.stop()
        # Two waits, each at least Meta's 2 minutes (full jitter would have been under a second).
        assert len(h.clock.sleeps) == 2 and all(120 <= s < 121 for s in h.clock.sleeps), h.clock.sleeps
        assert sorted(h.graph.accepted["A"]) == sorted(ids)
        assert h.metric("capi_retries_total", pixel=pixel_of("A"), error_class="transient") == 2
        assert h.metric("capi_graph_errors_total", code="80004", subcode="2446079") == 2
        assert not h.dlq.copies("orders.dlq")

    run(scenario)


def test_bisection_isolates_each_rejected_event() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"}, max_events=64)
        ids = h.produce("orders", orders(64))
        bad = {ids[3], ids[40], ids[41]}

        def reject(dest: Destination, events: list[dict[str, Any]]) -> Any:
            return graph_error(100, 2804019) if bad & {e["event_id"] for e in events} else None

        h.graph.rules.append(reject)
        await h.run_until(lambda: len(h.dlq.copies("orders.dlq")) == 3)
        assert sorted(h.graph.accepted["A"]) == sorted(set(ids) - bad)
        copies = h.dlq.copies("orders.dlq")
        assert {c.key.decode() for c in copies if c.key} == bad
        for copy in copies:
            headers = decode_headers(copy.headers)
            assert headers["reason"] == GRAPH_REJECTED_EVENT and headers["attempts"] == "1"
            # 64 -> 32 -> 16 -> 8 -> 4 -> 2 -> 1: seven requests carried each rejected event.
            assert headers["delivery.requests"] == "7"
        singles = [batch for _pixel, batch in h.graph.requests if len(batch) == 1]
        assert bad <= {batch[0] for batch in singles}
        assert len(h.graph.requests) <= 1 + 2 * 3 * 6
        assert h.committed() == {("orders", 0): 64}

    run(scenario)


def test_a_destination_parked_longer_than_allowed_dead_letters_its_events() -> None:
    async def scenario() -> None:
        retry = RetryPolicy(destination_base_s=5, destination_cap_s=20, parked_dead_letter_after_s=60)
        h = Harness.build({"orders": "A"}, retry=retry)
        h.graph.rules.append(lambda dest, events: graph_error(190, 460))
        h.produce("orders", orders(4))
        await h.run_until(lambda: len(h.dlq.copies("orders.dlq")) == 4)
        assert set(h.dlq.reasons("orders.dlq")) == {DESTINATION_UNAVAILABLE}
        assert 60 <= sum(h.clock.sleeps) < 60 + 20  # virtual seconds parked
        assert h.committed() == {("orders", 0): 4}

    run(scenario)


def test_backpressure_pauses_at_the_limit_and_resumes_below_half_of_it() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"}, max_events=5, max_in_flight_events=20, max_per_poll=5)
        h.produce("orders", orders(60))
        ledger = h.pipeline.p.ledger
        h.graph.hold()
        h.start()
        await h.until(lambda: h.graph.waiting == 4)
        await h.turns()
        assert ledger.events_in_flight == 20 and h.source.paused_partitions == {("orders", 0)}
        for in_flight, paused in ((15, True), (10, True), (5, False)):
            await h.graph.release(1)
            await h.until(lambda n=in_flight: ledger.events_in_flight <= n)  # type: ignore[misc]
            if paused:
                await h.turns()
                assert ledger.events_in_flight == in_flight, "resumed above half the limit"
                assert h.source.paused_partitions == {("orders", 0)}
            else:
                await h.until(lambda: h.source.paused_partitions == set() or ledger.events_in_flight > 5)
        assert max(h.metric("capi_in_flight_events"), ledger.events_in_flight) <= 20
        await h.graph.release()
        await h.until(lambda: len(h.graph.accepted["A"]) == 60)
        await h.stop()
        assert h.committed() == {("orders", 0): 60}

    run(scenario)


def test_open_batches_leave_at_once_when_they_alone_fill_the_in_flight_limit() -> None:
    async def scenario() -> None:
        # A linger far longer than the run: only backpressure can send these batches early.
        h = Harness.build({"orders": "A"}, linger_s=600, max_in_flight_events=20, max_per_poll=5)
        h.produce("orders", orders(40))
        started = h.clock.monotonic()
        await h.run_until(lambda: len(h.graph.accepted["A"]) == 40)
        assert h.clock.monotonic() - started < 600, "waited for the linger"
        assert [len(ids) for _name, ids in h.graph.requests] == [20, 20]
        assert h.committed() == {("orders", 0): 40}

    run(scenario)


def test_revoked_partition_commits_what_is_settled_and_ignores_late_results() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"}, max_events=5)
        ids = h.produce("orders", orders(20))
        h.graph.hold()
        h.start()
        await h.until(lambda: h.graph.waiting == 4)
        await h.graph.release(2)  # the first 10 are accepted and committed
        await h.until(lambda: h.committed().get(("orders", 0)) == 10)
        h.memory_source.revoke([("orders", 0)])
        assert h.committed() == {("orders", 0): 10}
        assert h.pipeline.p.ledger.events_in_flight == 0
        await h.graph.release()  # the revoked partition's late answers move nothing
        await h.until(lambda: len(h.graph.accepted["A"]) == 20)
        await h.turns()
        assert h.committed() == {("orders", 0): 10}
        h.memory_source.assign([("orders", 0)])  # it comes back: records 10..19 are read again
        await h.until(lambda: h.committed().get(("orders", 0)) == 20)
        await h.stop()
        assert sorted(h.graph.accepted["A"]) == sorted(ids + ids[10:])  # Meta dedups the resends

    run(scenario)


def test_a_clean_revocation_lets_the_partitions_deliveries_finish_and_commits_them() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"}, max_events=5, linger_s=3600)
        ids = h.produce("orders", orders(22))  # 4 full batches in flight, 2 events in an open one
        h.graph.hold()
        h.start()
        await h.until(lambda: h.graph.waiting == 4 and h.pipeline.p.batcher.open_events == 2)
        h.clock.gate.clear()  # virtual time stands still until the answers came
        revoking = asyncio.create_task(h.memory_source.revoke_cleanly([("orders", 0)]))
        await h.until(lambda: h.graph.waiting == 5)  # the open batch is sent at once
        assert not revoking.done(), "gave the partition up with deliveries in flight"
        await h.graph.release()
        await h.until(lambda: len(h.graph.accepted["A"]) == 22)
        h.clock.gate.set()
        await asyncio.wait_for(revoking, 10)
        assert h.committed() == {("orders", 0): 22}
        h.memory_source.assign([("orders", 0)])  # a later owner starts after them
        await h.turns()
        await h.stop()
        assert sorted(h.graph.accepted["A"]) == sorted(ids), "sent twice"

    run(scenario)


def test_a_clean_revocation_waits_no_longer_than_the_drain_deadline() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"}, max_events=5)
        h.produce("orders", orders(10))
        h.graph.hold()
        h.start()
        await h.until(lambda: h.graph.waiting == 2)
        started = h.clock.monotonic()
        await asyncio.wait_for(h.memory_source.revoke_cleanly([("orders", 0)]), 30)
        waited = h.clock.monotonic() - started
        assert h.pipeline.p.drain_deadline_s <= waited < h.pipeline.p.drain_deadline_s + 1
        assert h.committed().get(("orders", 0), 0) == 0  # unsettled: the next owner sends them
        await h.graph.release()
        await h.stop()

    run(scenario)


def test_shutdown_sends_open_batches_and_commits_them() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"}, linger_s=3600)
        ids = h.produce("orders", orders(7))
        h.start()
        await h.until(lambda: h.pipeline.p.batcher.open_events == 7)
        assert not h.graph.requests
        await h.stop()
        assert sorted(h.graph.accepted["A"]) == sorted(ids)
        assert h.committed() == {("orders", 0): 7} and h.memory_source.closed

    run(scenario)


def test_shutdown_with_meta_unresponsive_ends_at_the_deadline_without_committing() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"}, drain_deadline_s=0.3)
        h.produce("orders", orders(7))
        h.graph.hold()
        h.start()
        await h.until(lambda: h.graph.waiting == 1)
        started = time.monotonic()
        await h.stop()
        assert time.monotonic() - started < 2
        assert ("orders", 0) not in h.committed() and not h.graph.accepted and h.memory_source.closed

    run(scenario)


def test_undecodable_records_are_dead_lettered_unless_they_dominate() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"}, guard=GuardLimits(max_ratio=0.5, window_s=60, min_events=20))
        h.produce("orders", orders(30))
        for i in range(5):
            h.broker.append("orders", 0, b"not avro %d" % i)
        await h.run_until(lambda: len(h.dlq.copies("orders.dlq")) == 5)
        assert h.committed() == {("orders", 0): 35}
        assert set(h.dlq.reasons("orders.dlq")) == {"avro_decode_error"}
        # Then a stream of garbage: the guard stops the loop instead of draining the topic.
        for i in range(40):
            h.broker.append("orders", 0, b"garbage %d" % i)
        guard = GuardLimits(max_ratio=0.5, window_s=60, min_events=20)
        again = Harness.build({"orders": "A"}, guard=guard, backend=h.broker, max_per_poll=1)
        with pytest.raises(FatalPipelineError, match="dead-letter rate above 50%"):
            await again.run_until(lambda: False)
        # 19 copies were written, the 20th was refused: nothing past it is committed.
        assert len(again.dlq.copies("orders.dlq")) == 5 + 19
        assert again.committed() == {("orders", 0): 35 + 19}

    run(scenario)


def replay(broker: MemoryBroker, *, end: int, flt: ReplayFilter) -> Harness:
    """A replay of `orders.dlq` (one partition, read from 0 to `end`) into the orders mapping."""
    policy = ReplayPolicy(order_config({"orders": "A"}), {("orders.dlq", 0): (0, end)}, flt)
    return Harness.build(
        {"orders": "A"},
        backend=broker,
        policy=policy,
        end_offsets=policy.end_offsets,
        source_topics=["orders.dlq"],
    )


def test_replay_reads_below_the_end_offsets_only_and_finishes_by_itself() -> None:
    async def scenario() -> None:
        # A dead-letter topic with 3 records: one that succeeds now, one 9 days old, one undecodable.
        broker = MemoryBroker()
        broker.create("orders.dlq", 1)
        rng = random.Random(1)
        fine = order(1, now_ms=NOW_MS, rng=rng)
        old = order(2, now_ms=NOW_MS - 9 * 86_400_000, rng=rng)
        origin = [("capi.dlq.origin.topic", b"orders"), ("capi.dlq.attempts", b"1")]
        for value in (avro(fine), avro(old), b"garbage"):
            broker.append("orders.dlq", 0, value, headers=origin)
        h = replay(broker, end=3, flt=ReplayFilter())
        h.start()
        await asyncio.wait_for(h._task, timeout=5)  # finishes on its own
        stats = h.pipeline.stats
        assert sum(stats.accepted.values()) == 1 and sum(stats.skipped.values()) == 1 and stats.failed == 1
        assert h.graph.accepted["A"] == [fine["order_id"]]
        assert h.committed() == {("orders.dlq", 0): 3}
        assert broker.high(("orders.dlq", 0)) == 4  # the failing record's copy, not read again
        copy = decode_headers(broker.log[("orders.dlq", 0)][3].headers)
        assert copy["attempts"] == "2" and copy["origin.topic"] == "orders"

    run(scenario)


def test_replay_filter_settles_records_outside_it_unprocessed() -> None:
    async def scenario() -> None:
        broker = MemoryBroker()
        broker.create("orders.dlq", 1)
        for reason in (b"graph_rejected_event", b"avro_decode_error"):
            headers = [("capi.dlq.origin.topic", b"orders"), ("capi.dlq.reason", reason)]
            broker.append("orders.dlq", 0, avro(orders(1)[0]), headers=headers)
        h = replay(broker, end=2, flt=ReplayFilter(reason="avro_decode_error"))
        h.start()
        await asyncio.wait_for(h._task, timeout=5)
        assert h.pipeline.stats.filtered == {FILTERED_OUT: 1} and sum(h.pipeline.stats.accepted.values()) == 1
        assert h.committed() == {("orders.dlq", 0): 2}

    run(scenario)


class FlakyRegistry:
    """A schema registry client that refuses connections while `down`."""

    def __init__(self) -> None:
        self.down = True
        self.asked = 0

    def _answer(self) -> None:
        self.asked += 1
        if self.down:
            raise ConnectionRefusedError("registry down")

    def get_subjects(self) -> list[str]:
        self._answer()
        return ["orders-value"]

    def get_schema(self, schema_id: int) -> Any:
        self._answer()
        return type("Schema", (), {"schema_str": ORDER_SCHEMA.read_text(), "schema_type": "AVRO"})()


def test_records_wait_for_an_unreachable_registry_without_failing_or_committing() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"})
        registry = FlakyRegistry()
        schema = parse_schema(ORDER_SCHEMA.read_text())
        h.pipeline.p.decoder = Decoder({"orders": schema}, registry=registry)  # type: ignore[arg-type]
        records = orders(5)
        for record in records:
            h.broker.append("orders", 0, b"\0" + (7).to_bytes(4, "big") + avro(record))
        h.start()
        await h.until(lambda: registry.asked >= 3)
        await h.turns()
        ready, reason = h.pipeline.readiness()
        assert not ready and reason.startswith("schema registry unreachable"), reason
        assert h.graph.requests == [] and h.dlq.copies("orders.dlq") == []
        assert h.committed().get(("orders", 0), 0) == 0
        assert h.source.paused_partitions == {("orders", 0)}
        registry.down = False
        await h.until(lambda: len(h.graph.accepted["A"]) == 5)
        await h.until(lambda: h.committed().get(("orders", 0)) == 5)
        assert h.pipeline.readiness() == (True, "ok")
        assert h.source.paused_partitions == set()
        await h.stop()
        assert sorted(h.graph.accepted["A"]) == sorted(r["order_id"] for r in records)

    run(scenario)


def test_a_short_wait_for_a_writer_schema_pauses_nothing() -> None:
    # Pausing drops librdkafka's prefetched records: for a wait shorter than SCHEMA_WAIT_UNPAUSED_S the
    # loop just stops polling (here the registry answers the second time, 0.5 s later).
    async def scenario() -> None:
        h = Harness.build({"orders": "A"})
        registry = FlakyRegistry()
        registry.down = False
        schema = parse_schema(ORDER_SCHEMA.read_text())
        h.pipeline.p.decoder = Decoder({"orders": schema}, registry=registry)  # type: ignore[arg-type]
        original = registry.get_schema

        def first_refused(schema_id: int) -> Any:
            if registry.asked == 1:  # the start-up ping was the first question
                registry.asked += 1
                raise ConnectionRefusedError("registry down for a moment")
            return original(schema_id)

        registry.get_schema = first_refused  # type: ignore[method-assign]
        records = orders(5)
        for record in records:
            h.broker.append("orders", 0, b"\0" + (7).to_bytes(4, "big") + avro(record))
        paused: list[bool] = []
        h.pipeline.p.on_turn = lambda _now: paused.append(bool(h.source.paused_partitions))
        h.start()
        await h.until(lambda: len(h.graph.accepted["A"]) == 5)
        assert registry.asked >= 3  # ping, the refused fetch, the answered one
        assert not any(paused)
        await h.stop()

    run(scenario)


def test_full_polls_mark_the_loop_catching_up_until_polls_are_small_again() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A"}, max_events=1000)
        h.produce("orders", orders(2500))
        batcher = h.pipeline.p.batcher
        seen: list[bool] = []
        h.pipeline.p.on_turn = lambda _now: seen.append(batcher.catching_up)
        h.start()
        await h.until(lambda: len(h.graph.accepted["A"]) == 2500)
        await h.turns()
        assert seen[0] is True  # the first poll was full (1,000 records)
        assert seen[-1] is False  # nothing left to read
        await h.stop()

    run(scenario)
