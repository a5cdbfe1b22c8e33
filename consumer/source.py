"""Source stage: the Kafka consumer, its rebalance callbacks, backpressure pauses, and offset commits.

This is the one place that stores and commits offsets. The recipe is librdkafka's own at-least-once
one: `enable.auto.offset.store=false`; an offset is stored (`store_offsets`) only once
`consumer.offsets` says every record before it is settled; the background auto-commit then commits
stored offsets, and revocation and shutdown commit synchronously.

Rebalancing is incremental (cooperative-sticky by default, or KIP-848 with group_protocol=consumer).
On revoke, the revoked partitions' settled watermark is committed and their unsettled records are
abandoned: the next owner re-reads them, and Meta deduplicates the resends because the order ID is
the event_id. On lost, nothing is committed.

A bounded source (`end_offsets`, what replay reads) hands out only the records below each partition's
end offset: a record at or past it is dropped untracked and its partition stays paused, so nothing
appended after the end was taken (its own re-dead-lettered copies, the live consumer's new failures)
is processed or committed; the next replay reads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from consumer.errors import kafka_error_class
from consumer.offsets import OffsetLedger

log = logging.getLogger(__name__)


def _names(partitions: list[TopicPartition]) -> list[str]:
    return [f"{p.topic}[{p.partition}]" for p in partitions]


class UnsafeConfigError(ValueError):
    """Kafka settings that would lose events."""


def check_safe(conf: Mapping[str, Any]) -> None:
    """Refuse settings that break at-least-once delivery (consumer-semantics.md, rule 2)."""
    if str(conf.get("enable.auto.offset.store", "")).lower() not in ("false", "0"):
        raise UnsafeConfigError("kafka consumer: enable.auto.offset.store must be false")


class KafkaSource:
    """Owns the confluent-kafka Consumer; call every method from the one thread that runs the loop."""

    def __init__(
        self,
        conf: Mapping[str, Any],
        topics: list[str],
        ledger: OffsetLedger,
        *,
        on_partitions_changed: Callable[[], None] | None = None,
        end_offsets: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        """`end_offsets`: read each partition only below this offset (a partition not named: none of it)."""
        check_safe(conf)
        # librdkafka's own log lines go through logging, so they come out as structured JSON too.
        self._consumer = Consumer(dict(conf), logger=logging.getLogger("librdkafka.consumer"))
        self._ledger = ledger
        self._topics = topics
        self._pause_all = False
        self._pause_topics: set[str] = set()
        self.paused_partitions: set[tuple[str, int]] = set()
        self._on_changed = on_partitions_changed
        self.assigned: set[tuple[str, int]] = set()
        self.fatal_error: KafkaError | None = None
        self._ends = dict(end_offsets) if end_offsets is not None else None
        self.at_end: set[tuple[str, int]] = set()
        """Partitions of a bounded source that reached their end offset (kept paused)."""

    def subscribe(self) -> None:
        self._consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    # -- rebalance callbacks (run inside consume())
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._ledger.assign((tp.topic, tp.partition))
            self.assigned.add((tp.topic, tp.partition))
        # Partitions that arrive while we hold back their topic must start paused too.
        hold = [
            tp
            for tp in partitions
            if self._pause_all or tp.topic in self._pause_topics or (tp.topic, tp.partition) in self.at_end
        ]
        if hold:
            consumer.pause(hold)
            self.paused_partitions.update((tp.topic, tp.partition) for tp in hold)
        log.info(
            "partitions assigned", extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]}
        )
        if self._on_changed is not None:
            self._on_changed()

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        offsets = []
        for tp in partitions:
            key = (tp.topic, tp.partition)
            ledger = self._ledger.get(key)
            if ledger is not None and ledger.committable is not None:
                offsets.append(TopicPartition(tp.topic, tp.partition, ledger.committable))
            self._ledger.revoke(key)
            self.assigned.discard(key)
            self.paused_partitions.discard(key)
        if offsets:
            try:
                consumer.store_offsets(offsets=offsets)
                consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                log.warning("commit on revoke failed", extra={"error": str(exc)})
        log.info(
            "partitions revoked", extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]}
        )
        if self._on_changed is not None:
            self._on_changed()

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Another member may already own them: committing now could move its offsets backwards.
        for tp in partitions:
            self._ledger.revoke((tp.topic, tp.partition))
            self.assigned.discard((tp.topic, tp.partition))
        log.warning(
            "partitions lost", extra={"partitions": [f"{p.topic}[{p.partition}]" for p in partitions]}
        )
        if self._on_changed is not None:
            self._on_changed()

    # -- the loop's calls
    def consume(self, max_records: int) -> list[Message]:
        """Records available now (never blocks: the caller is an asyncio loop)."""
        messages: list[Message] = self._consumer.consume(num_messages=max_records, timeout=0)
        records = []
        ends = self._ends
        for msg in messages:
            err = msg.error()
            if err is None:
                if ends is not None and not self._below_end(msg, ends):
                    continue
                records.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif kafka_error_class(err) is None:
                self.fatal_error = err
            else:
                log.warning("kafka consumer error", extra={"error": err.str(), "code": err.code()})
        return records

    def _below_end(self, msg: Message, ends: Mapping[tuple[str, int], int]) -> bool:
        """False (and the partition held paused from now on) for a record at or past its end offset."""
        key = (msg.topic() or "", msg.partition() or 0)
        offset = msg.offset()
        if offset is not None and offset < ends.get(key, 0):
            return True
        if key not in self.at_end:
            self.at_end.add(key)
            if key in self.assigned and key not in self.paused_partitions:
                self._consumer.pause([TopicPartition(*key)])
                self.paused_partitions.add(key)
        return False

    def store_settled(self) -> int:
        """Store the committable offset of every partition whose watermark moved; returns how many."""
        offsets = [TopicPartition(t, p, off) for (t, p), off in self._ledger.take_dirty()]
        if not offsets:
            return 0
        try:
            self._consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:
            # _STATE: the partition moved to another member between settle and store. Its records
            # will be re-read there, which is safe.
            if exc.args and exc.args[0].code() != KafkaError._STATE:
                raise
        return len(offsets)

    def apply_pauses(self, *, all_topics: bool, topics: set[str]) -> None:
        """Pause every assigned partition (backpressure) or those of `topics` (a destination that is
        retrying or parked); resume the rest. Polling continues either way."""
        desired = {tp for tp in self.assigned if all_topics or tp[0] in topics or tp in self.at_end}
        to_pause = desired - self.paused_partitions
        to_resume = self.paused_partitions - desired
        if to_pause:
            self._consumer.pause([TopicPartition(t, p) for t, p in to_pause])
        if to_resume:
            self._consumer.resume([TopicPartition(t, p) for t, p in to_resume])
        self.paused_partitions = desired
        self._pause_all = all_topics
        self._pause_topics = set(topics)

    @property
    def all_paused(self) -> bool:
        return bool(self.assigned) and self.paused_partitions >= self.assigned

    def positions(self) -> dict[tuple[str, int], int]:
        """Next offset the application will read, per assigned partition (local state)."""
        parts = [TopicPartition(t, p) for t, p in self.assigned]
        return {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(parts)} if parts else {}

    def commit_final(self) -> list[TopicPartition]:
        """Synchronously commit every assigned partition's settled watermark (shutdown)."""
        offsets = [
            TopicPartition(t, p, ledger.committable)
            for t, p in list(self.assigned)
            if (ledger := self._ledger.get((t, p))) is not None and ledger.committable is not None
        ]
        if offsets:
            self._consumer.store_offsets(offsets=offsets)
            self._consumer.commit(offsets=offsets, asynchronous=False)
        return offsets

    def lag(self) -> dict[tuple[str, int], int]:
        """High watermark minus the settled watermark per assigned partition (local state, no I/O)."""
        result: dict[tuple[str, int], int] = {}
        for topic, partition in list(self.assigned):
            tp = TopicPartition(topic, partition)
            try:
                _low, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except KafkaException:
                continue
            if high is None or high < 0:
                continue
            ledger = self._ledger.get((topic, partition))
            done = ledger.committable if ledger is not None else None
            if done is None:
                positions = self._consumer.position([tp])
                done = positions[0].offset if positions and positions[0].offset >= 0 else None
            if done is not None:
                result[(topic, partition)] = max(0, high - done)
        return result

    def close(self) -> None:
        self._consumer.close()
