"""Batch stage: server events grouped per destination (pixel + token), flushed on size, bytes or linger.

Events arrive already serialized (JSON bytes), so a batch's request body is assembled by joining them
and its byte size is exact without serializing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

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


@dataclass(slots=True)
class Batch:
    destination: str
    events: list[PendingEvent]
    size: int
    opened_at: float
    """Monotonic seconds when the first event joined."""


class Batcher:
    """Open batches keyed by destination name."""

    def __init__(
        self, *, max_events: int, max_bytes: int, linger_s: float, clock: Callable[[], float]
    ) -> None:
        if not 1 <= max_events <= 1000:
            raise ValueError("max_events must be between 1 and 1000 (Meta's limit per request)")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.linger_s = linger_s
        self._clock = clock
        self._open: dict[str, Batch] = {}

    def add(self, destination: str, event: PendingEvent) -> list[Batch]:
        """Add an event; returns the batches that became ready (full by count or bytes)."""
        ready: list[Batch] = []
        batch = self._open.get(destination)
        cost = len(event.body) + 1
        if batch is not None and batch.size + cost > self.max_bytes:
            ready.append(self._open.pop(destination))
            batch = None
        if batch is None:
            batch = Batch(destination, [], BODY_OVERHEAD_BYTES, self._clock())
            self._open[destination] = batch
        batch.events.append(event)
        batch.size += cost
        if len(batch.events) >= self.max_events or batch.size >= self.max_bytes:
            ready.append(self._open.pop(destination))
        return ready

    def due(self) -> list[Batch]:
        """Batches whose linger time has passed."""
        now = self._clock()
        names = [n for n, b in self._open.items() if now - b.opened_at >= self.linger_s]
        return [self._open.pop(n) for n in names]

    def drain(self) -> list[Batch]:
        """Every open batch (shutdown)."""
        batches = list(self._open.values())
        self._open.clear()
        return batches

    @property
    def open_events(self) -> int:
        return sum(len(b.events) for b in self._open.values())
