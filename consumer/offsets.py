"""Settlement bookkeeping: which consumed records are settled, and how far each partition may commit.

A record is settled when Meta accepted it, its dead-letter copy was acknowledged, or it was filtered
on purpose. A partition's committable offset advances to N+1 only when every record <= N it consumed
is settled, so out-of-order completion never skips a gap (../shared/docs/consumer-semantics.md, rule 1).
This module decides *what* may be committed; `consumer.source` is the one place that stores and
commits it with Kafka.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

TopicPartitionKey = tuple[str, int]


class PartitionLedger:
    """The in-flight records of one partition assignment, in consumption order."""

    __slots__ = ("_pending", "_settled", "active", "bytes_in_flight", "committable", "dirty", "key")

    def __init__(self, key: TopicPartitionKey) -> None:
        self.key = key
        self._pending: deque[tuple[int, int]] = deque()  # (offset, size in bytes)
        self._settled: set[int] = set()
        self.committable: int | None = None
        """Next offset to commit (last contiguously settled offset + 1), None before the first."""
        self.dirty = False
        """The committable offset moved since the source last stored it."""
        self.active = True
        """False once the partition was revoked or lost: late settlements are ignored."""
        self.bytes_in_flight = 0

    @property
    def events_in_flight(self) -> int:
        return len(self._pending)

    def track(self, offset: int, size: int) -> None:
        self._pending.append((offset, size))
        self.bytes_in_flight += size

    def settle(self, offset: int) -> tuple[int, int]:
        """Mark `offset` settled; returns (events, bytes) that left the in-flight window."""
        if not self.active:
            return (0, 0)
        self._settled.add(offset)
        events = 0
        size = 0
        pending = self._pending
        settled = self._settled
        while pending and pending[0][0] in settled:
            done, done_size = pending.popleft()
            settled.discard(done)
            events += 1
            size += done_size
            self.committable = done + 1
        if events:
            self.dirty = True
            self.bytes_in_flight -= size
        return (events, size)


@dataclass(slots=True)  # not frozen: a frozen dataclass is three times as slow to make (one per record)
class Ticket:
    """A handle on one consumed record, passed along the pipeline and settled exactly once."""

    ledger: PartitionLedger
    offset: int


class OffsetLedger:
    """Ledgers of every assigned partition plus global in-flight totals (for backpressure)."""

    def __init__(self) -> None:
        self._ledgers: dict[TopicPartitionKey, PartitionLedger] = {}
        self.events_in_flight = 0
        self.bytes_in_flight = 0

    def assign(self, key: TopicPartitionKey) -> PartitionLedger:
        old = self._ledgers.get(key)
        if old is not None:
            self._drop(old)
        ledger = PartitionLedger(key)
        self._ledgers[key] = ledger
        return ledger

    def revoke(self, key: TopicPartitionKey) -> PartitionLedger | None:
        """Stop tracking a partition; its unsettled records will be re-read by the next owner."""
        ledger = self._ledgers.pop(key, None)
        if ledger is not None:
            self._drop(ledger)
        return ledger

    def _drop(self, ledger: PartitionLedger) -> None:
        ledger.active = False
        self.events_in_flight -= ledger.events_in_flight
        self.bytes_in_flight -= ledger.bytes_in_flight

    def get(self, key: TopicPartitionKey) -> PartitionLedger | None:
        return self._ledgers.get(key)

    def track(self, key: TopicPartitionKey, offset: int, size: int) -> Ticket:
        ledger = self._ledgers.get(key)
        if ledger is None:
            # A record of a partition we were not told about (assignment callbacks race the first
            # fetch only in tests that assign manually): start tracking it.
            ledger = self.assign(key)
        ledger.track(offset, size)
        self.events_in_flight += 1
        self.bytes_in_flight += size
        return Ticket(ledger, offset)

    def settle(self, ticket: Ticket) -> None:
        events, size = ticket.ledger.settle(ticket.offset)
        self.events_in_flight -= events
        self.bytes_in_flight -= size

    def take_dirty(self) -> Iterator[tuple[TopicPartitionKey, int]]:
        """(partition, committable offset) for every partition whose watermark moved; clears the flag."""
        for key, ledger in self._ledgers.items():
            if ledger.dirty and ledger.committable is not None:
                ledger.dirty = False
                yield key, ledger.committable
