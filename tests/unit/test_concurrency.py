"""Adaptive request concurrency (consumer.concurrency): the AIMD arithmetic with made-up latencies,
the slots it drives (per-destination limits, the process-wide cap, turns between destinations), and
the deliverer and the run loop using them."""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pytest

from capi_devstack.samples import order
from consumer.batch import PendingEvent
from consumer.concurrency import AdaptiveSlots, AimdLimit, ConcurrencySettings, Signal
from consumer.deliver import Accepted, Deliverer, Destination, RetryPolicy, load_signal
from consumer.errors import transport_error
from consumer.metrics import Metrics
from consumer.offsets import OffsetLedger
from consumer.source import Origin
from tests.fakes import Harness, graph_error, pixel_of

NORMAL, OVERLOAD, NEUTRAL = Signal.NORMAL, Signal.OVERLOAD, Signal.NEUTRAL


def settings(**kw: Any) -> ConcurrencySettings:
    base: dict[str, Any] = {"max_in_flight": 64, "min_limit": 1, "max_limit": 64, "initial_limit": 4}
    return ConcurrencySettings(**{**base, **kw})


def window(limit: AimdLimit, latency_s: float, *, saturated: bool = True) -> None:
    """One round trip: as many answers as the limit, each `latency_s` after its request."""
    requests = [limit.on_send() for _ in range(limit.limit)]
    for request in requests:
        limit.record(request, latency_s, NORMAL, saturated=saturated)


# --- AimdLimit: the arithmetic ---------------------------------------------------------------------


def test_the_limit_doubles_per_busy_window_until_the_first_overload_then_grows_by_one() -> None:
    limit = AimdLimit(settings())
    seen = [limit.limit]
    for _ in range(3):
        window(limit, 0.6)
        seen.append(limit.limit)
    assert seen == [4, 8, 16, 32]  # slow start
    request = limit.on_send()
    limit.record(request, 0.05, OVERLOAD, saturated=True)
    assert limit.limit == 16 and not limit.slow_start
    for _ in range(3):
        window(limit, 0.6)
    assert limit.limit == 19  # additive increase: +1 per window


def test_a_limit_that_is_not_used_does_not_grow() -> None:
    limit = AimdLimit(settings())
    for _ in range(5):
        window(limit, 0.6, saturated=False)
    assert limit.limit == 4


def test_throttling_and_timeouts_halve_the_limit_once_per_round_trip() -> None:
    limit = AimdLimit(settings(initial_limit=32))
    in_flight = [limit.on_send() for _ in range(32)]
    # Every request of the round trip is throttled: one decrease, not 32.
    for request in in_flight:
        limit.record(request, 0.05, OVERLOAD, saturated=True)
    assert limit.limit == 16
    # A request sent after the decrease times out: the next halving.
    limit.record(limit.on_send(), 5.0, OVERLOAD, saturated=True)
    assert limit.limit == 8 and limit.decreases == 2


def test_the_limit_stays_within_min_and_max() -> None:
    limit = AimdLimit(settings(min_limit=3, initial_limit=8, max_limit=10))
    for _ in range(10):
        limit.record(limit.on_send(), 0.1, OVERLOAD, saturated=True)
    assert limit.limit == 3
    for _ in range(20):
        window(limit, 0.1)
    assert limit.limit == 10


def test_a_latency_spike_halves_the_limit() -> None:
    limit = AimdLimit(settings(initial_limit=8))
    window(limit, 0.6)  # the baseline: 0.6 s (slow start: 8 -> 16)
    window(limit, 0.7)  # normal (16 -> 32)
    assert limit.limit == 32
    window(limit, 2.0)  # above 2 x 0.6 s and above the 0.5 s floor
    assert limit.limit == 16 and not limit.slow_start


def test_a_few_slow_answers_are_not_a_spike_most_of_a_round_trip_slowing_down_is() -> None:
    limit = AimdLimit(settings(initial_limit=8, max_limit=8))
    window(limit, 0.4)
    for latency in [0.4] * 6 + [3.0, 4.0]:  # Meta's long tail: two slow answers of eight
        limit.record(limit.on_send(), latency, NORMAL, saturated=True)
    assert limit.decreases == 0
    for latency in [0.4] * 3 + [1.2] * 5:  # most answers three times slower
        limit.record(limit.on_send(), latency, NORMAL, saturated=True)
    assert limit.decreases == 1 and limit.limit == 4


def test_fast_answers_are_never_a_spike() -> None:
    limit = AimdLimit(settings(initial_limit=8))
    window(limit, 0.010)
    window(limit, 0.200)  # 20 x the baseline, but under latency_spike_floor_s (0.5 s)
    assert limit.limit == 32 and limit.decreases == 0


def test_a_lasting_change_of_latency_becomes_the_new_normal() -> None:
    limit = AimdLimit(settings(initial_limit=8, max_limit=8))
    window(limit, 0.6)
    decreases = []
    for _ in range(60):
        window(limit, 1.5)  # Meta got slower for good: 2.5 x the first baseline
        decreases.append(limit.decreases)
    assert decreases[-1] >= 1  # it was taken for a spike at first...
    assert decreases[-1] == decreases[-20]  # ...and is normal after a while


def test_answers_that_say_nothing_about_load_change_nothing() -> None:
    limit = AimdLimit(settings())
    for _ in range(50):
        limit.record(limit.on_send(), 0.1, NEUTRAL, saturated=True)
    assert limit.limit == 4 and limit.increases == limit.decreases == 0


def test_a_fixed_limit_does_not_adapt() -> None:
    limit = AimdLimit(settings(adaptive=False, max_limit=12))
    assert limit.limit == 12
    limit.record(limit.on_send(), 0.1, OVERLOAD, saturated=True)
    window(limit, 0.1)
    assert limit.limit == 12


@pytest.mark.parametrize(
    "bad",
    [
        {"min_limit": 5, "initial_limit": 4},
        {"initial_limit": 65},
        {"max_limit": 65},
        {"decrease_factor": 1.0},
        {"latency_tolerance": 1.0},
    ],
)
def test_settings_refuse_inconsistent_bounds(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        settings(**bad)


def test_which_answers_signal_overload() -> None:
    assert load_signal(Accepted(10, "x")) is NORMAL
    for code in (4, 17, 32, 613, 80004):
        assert load_signal(graph_error(code)) is OVERLOAD, code
    assert load_signal(transport_error("request timed out", timed_out=True)) is OVERLOAD
    assert load_signal(transport_error("unexpected response (http 429)", http_status=429)) is OVERLOAD
    assert load_signal(transport_error("ServerDisconnectedError")) is NEUTRAL
    assert load_signal(graph_error(100, 2804019)) is NORMAL  # a rejected event: Meta answered


# --- AdaptiveSlots: the limits in force --------------------------------------------------------------


async def _use(slots: AdaptiveSlots, key: str, order: list[str], gate: asyncio.Event) -> None:
    async with slots.slot(key):
        order.append(key)
        await gate.wait()


def test_a_quiet_destination_gets_the_next_slot_before_a_noisy_ones_backlog() -> None:
    async def scenario() -> None:
        slots = AdaptiveSlots(settings(max_in_flight=2, max_limit=2, initial_limit=2))
        gate = asyncio.Event()
        order: list[str] = []
        noisy = [asyncio.create_task(_use(slots, "noisy", order, gate)) for _ in range(10)]
        await asyncio.sleep(0)
        quiet = asyncio.create_task(_use(slots, "quiet", order, gate))
        await asyncio.sleep(0)
        assert order == ["noisy", "noisy"] and slots.queued == 9  # 8 noisy + 1 quiet wait
        gate.set()
        await asyncio.gather(*noisy, quiet)
        # Turns alternate between destinations: the quiet request goes out in the first round of
        # freed slots (noisy queued first, so it may take one turn), not after the noisy backlog of 8.
        assert "quiet" in order[2:4], order

    asyncio.run(scenario())


def test_each_destination_stays_within_its_limit_and_all_within_the_cap() -> None:
    async def scenario() -> None:
        slots = AdaptiveSlots(settings(max_in_flight=5, max_limit=5, initial_limit=2))
        running: dict[str, int] = {}
        peak: dict[str, int] = {}
        peak_all = 0

        async def work(key: str) -> None:
            nonlocal peak_all
            async with slots.slot(key):
                running[key] = running.get(key, 0) + 1
                peak[key] = max(peak.get(key, 0), running[key])
                peak_all = max(peak_all, sum(running.values()))
                await asyncio.sleep(0.001)
                running[key] -= 1

        await asyncio.gather(*(work(f"d{i % 4}") for i in range(60)))
        assert peak == {"d0": 2, "d1": 2, "d2": 2, "d3": 2}  # the limit (unanswered: not adapted)
        assert peak_all == 5  # the cap
        assert slots.queued == 0 and slots.in_flight() == 0

    asyncio.run(scenario())


def test_a_destination_at_its_limit_does_not_hold_up_the_others() -> None:
    async def scenario() -> None:
        slots = AdaptiveSlots(settings(max_in_flight=10, max_limit=10, initial_limit=1))
        gate = asyncio.Event()
        order: list[str] = []
        busy = [asyncio.create_task(_use(slots, "busy", order, gate)) for _ in range(3)]
        await asyncio.sleep(0)
        assert order == ["busy"] and slots.queued == 2  # its limit is 1
        other = asyncio.create_task(_use(slots, "other", order, gate))
        await asyncio.sleep(0)
        assert order == ["busy", "other"]  # free slots in all, room under its own limit: at once
        gate.set()
        await asyncio.gather(*busy, other)

    asyncio.run(scenario())


def test_a_throttled_destination_backs_off_while_the_others_keep_their_limits() -> None:
    async def scenario() -> None:
        reported: dict[str, int | None] = {}
        slots = AdaptiveSlots(settings(initial_limit=8), on_limit=reported.__setitem__)

        async def request(key: str, signal: Signal) -> None:
            async with slots.slot(key, label=f"pixel-{key}") as slot:
                await asyncio.sleep(0)
                slot.answered(0.1, signal)

        await asyncio.gather(
            *(request("a", OVERLOAD) for _ in range(8)), *(request("b", NORMAL) for _ in range(8))
        )
        assert slots.limit("a") == 4  # halved once for the round trip
        assert slots.limit("b") == 16  # its whole limit was used at normal latency: slow start
        assert reported == {"pixel-a": 4, "pixel-b": 16}

    asyncio.run(scenario())


def test_a_lower_limit_holds_back_requests_already_waiting() -> None:
    async def scenario() -> None:
        slots = AdaptiveSlots(settings(initial_limit=4))
        gate = asyncio.Event()
        throttled = asyncio.Event()
        order: list[str] = []

        async def first() -> None:
            async with slots.slot("a") as slot:
                await asyncio.sleep(0)
                slot.answered(0.05, OVERLOAD)  # 4 -> 2
            throttled.set()

        tasks = [asyncio.create_task(first())]
        tasks += [asyncio.create_task(_use(slots, "a", order, gate)) for _ in range(8)]
        await throttled.wait()
        await asyncio.sleep(0.01)
        # 3 went out before the decrease; the 5 others wait until fewer than 2 are in flight.
        assert slots.limit("a") == 2 and slots.in_flight("a") == 3 and slots.queued == 5
        gate.set()
        await asyncio.gather(*tasks)
        assert len(order) == 8 and slots.in_flight() == 0

    asyncio.run(scenario())


def test_tenants_sharing_a_label_export_their_lowest_limit() -> None:
    async def scenario() -> None:
        reported: dict[str, int | None] = {}
        slots = AdaptiveSlots(settings(initial_limit=8), on_limit=reported.__setitem__)
        for tenant in ("tenant:1", "tenant:2", "tenant:3"):
            async with slots.slot(tenant, label="tenants"):
                pass
        assert reported == {"tenants": 8}
        async with slots.slot("tenant:2", label="tenants") as slot:
            slot.answered(0.1, OVERLOAD)
        assert reported == {"tenants": 4}

    asyncio.run(scenario())


def test_idle_destinations_are_forgotten() -> None:
    async def scenario() -> None:
        now = [0.0]
        reported: dict[str, int | None] = {}
        slots = AdaptiveSlots(
            settings(initial_limit=8, forget_after_s=300),
            monotonic=lambda: now[0],
            on_limit=reported.__setitem__,
        )
        async with slots.slot("tenant:1", label="tenants") as slot:
            slot.answered(0.1, OVERLOAD)
        assert slots.limit("tenant:1") == 4
        now[0] = 1000.0
        async with slots.slot("tenant:2", label="tenants"):
            pass
        # tenant:1 was idle for 1,000 s: forgotten (a returning tenant starts afresh).
        assert slots.limit("tenant:1") == 8 and reported == {"tenants": 8}

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    async def scenario() -> None:
        slots = AdaptiveSlots(settings(max_in_flight=1, max_limit=1, initial_limit=1))
        gate = asyncio.Event()
        order: list[str] = []
        first = asyncio.create_task(_use(slots, "a", order, gate))
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(_use(slots, "b", order, gate))
        waiting = asyncio.create_task(_use(slots, "c", order, gate))
        await asyncio.sleep(0)
        cancelled.cancel()
        gate.set()
        await asyncio.gather(first, waiting)
        assert order == ["a", "c"] and slots.queued == 0 and slots.in_flight() == 0

    asyncio.run(scenario())


# --- the deliverer and the loop ----------------------------------------------------------------------


class SlowGraph:
    """Answers after `latency_s` of real time; throttles (80004) the next `throttle` requests."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.throttle = 0
        self.in_flight = 0
        self.peak = 0

    async def post(self, destination: Destination, events: Any) -> Any:
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            await asyncio.sleep(self.latency_s)
            if self.throttle > 0:
                self.throttle -= 1
                return graph_error(80004)
            return Accepted(len(events), "x")
        finally:
            self.in_flight -= 1


def _pending(ledger: OffsetLedger, offset: int) -> PendingEvent:
    return PendingEvent(
        body=b"{}",
        event_name="Purchase",
        event_time=int(time.time()),
        action_source="system_generated",
        ticket=ledger.track(("t", 0), offset, 1),
        origin=Origin("t", 0, offset, None, None, None, None),
    )


def test_the_deliverer_reports_latency_and_throttling_to_the_limit_and_the_gauge() -> None:
    async def scenario() -> None:
        graph = SlowGraph(latency_s=0.005)
        metrics = Metrics()
        deliverer = Deliverer(
            graph, metrics, policy=RetryPolicy(base_s=0.001), concurrency=settings(initial_limit=4)
        )
        dest = Destination(name="main", pixel_id="123", token="t")
        ledger = OffsetLedger()

        def limit() -> float | None:
            return metrics.registry.get_sample_value("capi_request_concurrency_limit", {"pixel": "123"})

        assert limit() is None  # no request yet
        await asyncio.gather(*(deliverer.deliver(dest, [_pending(ledger, i)]) for i in range(60)))
        grown = limit()
        # Every request queued behind the limit: each round trip used it all, at normal latency.
        assert grown is not None and grown > 4 and graph.peak <= grown
        graph.throttle = 1
        outcomes = await deliverer.deliver(dest, [_pending(ledger, 100)])
        assert outcomes[0][1] is None  # retried, then accepted
        assert limit() == grown // 2
        assert metrics.registry.get_sample_value("capi_requests_in_flight") == 0

    asyncio.run(asyncio.wait_for(scenario(), 30))


def test_the_loop_delivers_everything_while_a_throttled_destination_backs_off() -> None:
    async def scenario() -> None:
        h = Harness.build({"orders": "A", "other": "B"}, max_events=10)
        throttled = {"left": 6}

        def throttle_a(dest: Destination, events: list[dict[str, Any]]) -> Any:
            if dest.name == "A" and throttled["left"] > 0:
                throttled["left"] -= 1
                return graph_error(80004)
            return None

        h.graph.rules.append(throttle_a)
        rng = random.Random(7)
        now_ms = int(time.time() * 1000)
        a = h.produce("orders", [order(i, now_ms=now_ms, rng=rng) for i in range(100)])
        b = h.produce("other", [order(i, now_ms=now_ms, rng=rng) for i in range(1000, 1100)])
        await h.run_until(lambda: len(h.graph.accepted["A"]) == 100 and len(h.graph.accepted["B"]) == 100)
        assert sorted(h.graph.accepted["A"]) == sorted(a) and sorted(h.graph.accepted["B"]) == sorted(b)
        assert h.dlq.copies("orders.dlq") == []
        a_limit = h.metric("capi_request_concurrency_limit", pixel=pixel_of("A"))
        b_limit = h.metric("capi_request_concurrency_limit", pixel=pixel_of("B"))
        assert 1 <= a_limit < 8 <= b_limit  # A backed off, B kept (or raised) the initial limit
        assert h.metric("capi_retries_total", pixel=pixel_of("A"), error_class="transient") == 6

    asyncio.run(asyncio.wait_for(scenario(), 60))
