"""Batch stage: server events grouped per destination (pixel + token), flushed on size, bytes or linger.

Events arrive already serialized (JSON bytes), so a batch's request body is assembled by joining them
and its byte size is exact without serializing twice.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

from consumer.config import TENANT_PREFIX
from consumer.offsets import Ticket
from consumer.source import Origin

# `{"data":[...]}` plus room for test_event_code / partner_agent.
BODY_OVERHEAD_BYTES = 512


@dataclass(slots=True)
class PendingEvent:
    """One server event on its way to Meta."""

    body: bytes
    """The server event as JSON bytes."""
    event_name: str
    event_time: int
    """Unix seconds."""
    action_source: str
    ticket: Ticket
    origin: Origin
    record_timestamp_ms: int | None = None
    attempts: int = 0
    user_data_keys: tuple[str, ...] = ()
    """The user_data keys the event carries (match-key coverage metrics)."""


# Field readers of PendingEvent for map() over a request's events (C loops: Counter, min, lists).
EVENT_NAME = operator.attrgetter("event_name")
EVENT_TIME = operator.attrgetter("event_time")
USER_DATA_KEYS = operator.attrgetter("user_data_keys")
RECORD_TIMESTAMP_MS = operator.attrgetter("record_timestamp_ms")
TICKET = operator.attrgetter("ticket")


@dataclass(slots=True)
class Batch:
    destination: str
    events: list[PendingEvent]
    size: int
    opened_at: float
    """Monotonic seconds when the first event joined."""


class Batcher:
    """Open batches keyed by destination name.

    Batches wait in two lanes by linger (fixed destinations, tenants), each in the order they were
    opened, so `due()` looks only at the batches that are due plus one, however many tenants have a
    batch open; the count of events in open batches is kept as it changes (the loop asks every turn).
    """

    def __init__(
        self,
        *,
        max_events: int,
        max_bytes: int,
        linger_s: float,
        clock: Callable[[], float],
        tenant_linger_s: float | None = None,
        tenant_catch_up_linger_s: float | None = None,
    ) -> None:
        """`tenant_linger_s`: the linger of tenants' destinations (platform mode), else `linger_s`;
        `tenant_catch_up_linger_s`: theirs while `catching_up` (a backlog), else `tenant_linger_s`."""
        if not 1 <= max_events <= 1000:
            raise ValueError("max_events must be between 1 and 1000 (Meta's limit per request)")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self.tenant_linger_s = linger_s if tenant_linger_s is None else tenant_linger_s
        self.tenant_catch_up_linger_s = (
            self.tenant_linger_s if tenant_catch_up_linger_s is None else tenant_catch_up_linger_s
        )
        self.catching_up = False
        """Set by the loop while it reads a backlog: tenants' batches then wait the catch-up linger."""
        self._clock = clock
        self._fixed: dict[str, Batch] = {}
        self._tenants: dict[str, Batch] = {}
        self.open_events = 0
        """Events waiting in open batches."""

    def _lane(self, destination: str) -> dict[str, Batch]:
        return self._tenants if destination.startswith(TENANT_PREFIX) else self._fixed

    def _close(self, lane: dict[str, Batch], destination: str) -> Batch:
        batch = lane.pop(destination)
        self.open_events -= len(batch.events)
        return batch

    def add(self, destination: str, event: PendingEvent) -> list[Batch]:
        """Add an event; returns the batches that became ready (full by count or bytes)."""
        ready: list[Batch] = []
        lane = self._lane(destination)
        batch = lane.get(destination)
        cost = len(event.body) + 1
        if batch is not None and batch.size + cost > self.max_bytes:
            ready.append(self._close(lane, destination))
            batch = None
        if batch is None:
            batch = Batch(destination, [], BODY_OVERHEAD_BYTES, self._clock())
            lane[destination] = batch
        batch.events.append(event)
        self.open_events += 1
        batch.size += cost
        if len(batch.events) >= self.max_events or batch.size >= self.max_bytes:
            ready.append(self._close(lane, destination))
        return ready

    def due(self) -> list[Batch]:
        """Batches whose linger time has passed."""
        now = self._clock()
        ready: list[Batch] = []
        tenant_linger = self.tenant_catch_up_linger_s if self.catching_up else self.tenant_linger_s
        for lane, linger in ((self._fixed, self.linger_s), (self._tenants, tenant_linger)):
            while lane:
                name, batch = next(iter(lane.items()))
                if now - batch.opened_at < linger:
                    break  # the lane is in opening order: the rest are younger
                ready.append(self._close(lane, name))
        return ready

    def drain(self) -> list[Batch]:
        """Every open batch (shutdown)."""
        batches = [*self._fixed.values(), *self._tenants.values()]
        self._fixed.clear()
        self._tenants.clear()
        self.open_events = 0
        return batches
