"""Events that pass Meta's event_time window before they are sent leave the request (`event_expired`,
to the dead-letter topic); one such event would make Meta reject the whole request."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from consumer.batch import PendingEvent
from consumer.deliver import Deliverer, Destination, RetryPolicy
from consumer.errors import EVENT_EXPIRED
from consumer.metrics import Metrics
from consumer.offsets import OffsetLedger
from consumer.source import Origin
from consumer.validate import MAX_EVENT_AGE_S
from tests.fakes import FakeClock, FakeGraph, graph_error

DEST = Destination(name="main", pixel_id="123", token="t")


def _event(ledger: OffsetLedger, offset: int, event_time: float, action_source: str) -> PendingEvent:
    body = {"event_id": f"o-{offset}", "event_time": int(event_time), "action_source": action_source}
    return PendingEvent(
        body=orjson.dumps(body),
        event_name="Purchase",
        event_time=int(event_time),
        action_source=action_source,
        ticket=ledger.track(("t", 0), offset, 1),
        origin=Origin("t", 0, offset, None, None, None, None),
    )


def _fates(outcomes: list[Any]) -> dict[int, str | None]:
    return {e.origin.offset: (f.reason if f is not None else None) for e, f in outcomes}


def test_an_event_outside_the_window_is_not_sent_and_the_others_are() -> None:
    async def scenario() -> None:
        clock, graph, ledger = FakeClock(), FakeGraph(), OffsetLedger()
        now = clock.wall()
        deliverer = Deliverer(graph, Metrics(), clock=clock.clock())
        events = [
            _event(ledger, 0, now - 60, "system_generated"),
            _event(ledger, 1, now - MAX_EVENT_AGE_S - 1, "system_generated"),
            _event(ledger, 2, now - MAX_EVENT_AGE_S - 1, "physical_store"),  # 62 days for stores
        ]
        outcomes = await deliverer.deliver(DEST, events)
        assert _fates(outcomes) == {0: None, 1: EVENT_EXPIRED, 2: None}
        assert graph.requests == [("main", ["o-0", "o-2"])]

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_an_event_that_expires_while_its_request_is_retried_leaves_the_retry() -> None:
    async def scenario() -> None:
        clock, graph, ledger = FakeClock(), FakeGraph(), OffsetLedger()
        now = clock.wall()
        failed: list[bool] = []

        def fail_once_and_let_time_pass(dest: Destination, bodies: list[dict[str, Any]]) -> Any:
            if not failed:
                failed.append(True)
                clock.now += 120  # two minutes of outage
                return graph_error(2)  # transient: retried
            return None

        graph.rules.append(fail_once_and_let_time_pass)
        deliverer = Deliverer(graph, Metrics(), policy=RetryPolicy(base_s=0.01), clock=clock.clock())
        events = [
            _event(ledger, 0, now - 60, "system_generated"),
            _event(ledger, 1, now - MAX_EVENT_AGE_S + 60, "system_generated"),  # a minute left
        ]
        outcomes = await deliverer.deliver(DEST, events)
        assert _fates(outcomes) == {0: None, 1: EVENT_EXPIRED}
        assert graph.requests == [("main", ["o-0", "o-1"]), ("main", ["o-0"])]

    asyncio.run(asyncio.wait_for(scenario(), 10))
