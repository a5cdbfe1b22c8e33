"""Source stage: consumed records (`Origin`), partition bookkeeping, backpressure pauses, offset commits.

This is the one place that stores and commits offsets. The recipe is librdkafka's own at-least-once
one: `enable.auto.offset.store=false`; an offset is stored (`store_offsets`) only once
`consumer.offsets` says every record before it is settled; the background auto-commit then commits
stored offsets, and revocation and shutdown commit synchronously.

Rebalancing is incremental (cooperative-sticky by default, or KIP-848 with group_protocol=consumer).
On revoke (a clean rebalance), the loop first lets the revoked partitions' deliveries finish, within
a bound (`before_revoke`, see `poll`), then their settled watermark is committed; whatever is still
unsettled then is abandoned: the next owner re-reads it, and Meta deduplicates the resends because
the order ID is the event_id. On lost (the member was already thrown out), nothing is committed.

Waiting needs the asyncio loop to keep running while librdkafka is inside its rebalance callback, so
`KafkaSource.poll` calls librdkafka's consume() in a worker thread and the callbacks hand their work
back to the loop's thread: every change of the bookkeeping happens on that thread, as before.

A bounded partition hands out only the records below its end offset: a record at or past it is
dropped untracked, the partition is paused and its position set back to the end. Replay bounds every
partition by its end at start-up (`end_offsets`), so nothing appended after that (its own
re-dead-lettered copies, the live consumer's new failures) is processed or committed. Platform mode
bounds its parked topics (`bounded_topics`): they stay paused until a pass is opened up to their
current end (`read_until`), so the copies a pass parks again wait for the next pass.

`PartitionSource` holds that bookkeeping once; `KafkaSource` adds the confluent-kafka consumer, and
the tests' in-memory source adds a list of records, so both run the same rules.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from consumer.errors import kafka_error_class
from consumer.offsets import OffsetLedger, TopicPartitionKey

log = logging.getLogger(__name__)
_T = TypeVar("_T")

_REBALANCING = frozenset({KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION})
_CALLBACK_TIMEOUT_S = 300.0
"""How long a rebalance callback in the poll thread waits for the loop (a safety net: the loop's own
work, `before_revoke` included, has shorter bounds; librdkafka's max.poll.interval.ms is 300 s)."""
DEFAULT_SESSION_TIMEOUT_MS = 45_000
STATS_INTERVAL_MS = 500
"""librdkafka statistics interval (classic protocol): how fresh the join state is when leaving."""
GROUP_WAIT_MARGIN_S = 5.0


def group_wait_s(conf: Mapping[str, Any]) -> float:
    """How long a leaving member waits for the group (its final commit, a join in progress): a
    rebalance lasts until every member has rejoined, at worst until a departed member's session
    times out, so the session timeout plus a margin."""
    return int(conf.get("session.timeout.ms", DEFAULT_SESSION_TIMEOUT_MS)) / 1000 + GROUP_WAIT_MARGIN_S


"""How long a rebalance callback in the poll thread waits for the loop (a safety net: the loop's own
work, `before_revoke` included, has shorter bounds; librdkafka's max.poll.interval.ms is 300 s)."""


@dataclass(slots=True)
class Origin:
    """One consumed record, as the pipeline and the dead-letter topic see it."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None

    @classmethod
    def from_message(cls, msg: Message) -> Origin:
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            raise ValueError("not a consumed record")
        _kind, ts = msg.timestamp()
        raw = msg.headers()
        if raw:
            items = raw.items() if isinstance(raw, dict) else raw
            headers = [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in items]
        else:
            headers = []
        key = msg.key()
        return cls(
            topic,
            partition,
            offset,
            ts if ts > 0 else None,
            key.encode() if isinstance(key, str) else key,
            msg.value(),
            headers,
        )


class Source(Protocol):
    """What the run loop needs from a source of records; call it from the loop's thread only.
    `PartitionSource` implements the bookkeeping once for `KafkaSource` and the tests' memory source."""

    assigned: set[TopicPartitionKey]
    paused_partitions: set[TopicPartitionKey]
    at_end: set[TopicPartitionKey]
    """Bounded partitions held at their end offset."""
    fatal_error: str | None
    """Set when the source can no longer be used (the loop stops without committing further)."""

    before_revoke: RevokeHook | None
    """Awaited before revoked partitions are given up (see `poll`)."""

    def subscribe(self) -> None: ...

    def consume(self, max_records: int) -> list[Origin]:
        """Records available now, without blocking."""
        ...

    async def poll(self, max_records: int) -> list[Origin]:
        """`consume`, during which a revocation may wait for `before_revoke`."""
        ...

    def store_settled(self) -> int:
        """Hand every moved settled watermark to the committer; returns how many partitions."""
        ...

    def apply_pauses(self, *, all_topics: bool, topics: set[str]) -> None: ...

    def read_until(self, key: TopicPartitionKey, end: int) -> None:
        """Let a bounded partition be read up to `end` (exclusive)."""
        ...

    def high_watermark(self, key: TopicPartitionKey) -> int | None: ...

    def positions(self) -> dict[TopicPartitionKey, int]:
        """Next offset the application will read, per assigned partition (negative: unknown)."""
        ...

    def lag(self) -> dict[TopicPartitionKey, int]: ...

    def commit_final(self) -> int:
        """Synchronously commit every assigned partition's settled watermark; returns how many."""
        ...

    def close(self) -> None: ...


RevokeHook = Callable[[list[TopicPartitionKey]], Awaitable[None]]
"""Given the partitions about to be revoked; returns when their in-flight records are settled or
its own bound passed."""


class UnsafeConfigError(ValueError):
    """Kafka settings that would lose events."""


def check_safe(conf: Mapping[str, Any]) -> None:
    """Refuse settings that break at-least-once delivery (../shared/docs/consumer-semantics.md, rule 2)."""
    if str(conf.get("enable.auto.offset.store", "")).lower() not in ("false", "0"):
        raise UnsafeConfigError("kafka consumer: enable.auto.offset.store must be false")


def _names(keys: Iterable[TopicPartitionKey]) -> list[str]:
    return [f"{t}[{p}]" for t, p in keys]


class PartitionSource(abc.ABC):
    """Assignment, ledger, pause and end-offset bookkeeping shared by every source.

    Subclasses call `_assigned`, `_revoked` and `_lost` from their rebalance callbacks, filter what
    they consume through `_below_end`, and implement the four broker operations.
    """

    def __init__(
        self,
        ledger: OffsetLedger,
        *,
        end_offsets: Mapping[TopicPartitionKey, int] | None = None,
        bounded_topics: Iterable[str] = (),
        on_partitions_changed: Callable[[], None] | None = None,
    ) -> None:
        """`end_offsets`: every partition is bounded, read only below this offset (a partition not
        named: none of it). `bounded_topics`: these topics' partitions are bounded, closed until
        `read_until` opens them."""
        self._ledger = ledger
        self._all_bounded = end_offsets is not None
        self._bounded_topics = frozenset(bounded_topics)
        self._ends: dict[TopicPartitionKey, int] = dict(end_offsets or {})
        self._on_changed = on_partitions_changed
        self._pause_all = False
        self._pause_topics: set[str] = set()
        self.assigned: set[TopicPartitionKey] = set()
        self.paused_partitions: set[TopicPartitionKey] = set()
        self.at_end: set[TopicPartitionKey] = set()
        """Partitions of a bounded source that reached their end offset (kept paused)."""
        self.fatal_error: str | None = None
        self.before_revoke: RevokeHook | None = None

    # -- what each source reads in its own way (see `Source`)
    @abc.abstractmethod
    def subscribe(self) -> None: ...

    @abc.abstractmethod
    def consume(self, max_records: int) -> list[Origin]: ...

    async def poll(self, max_records: int) -> list[Origin]:
        return self.consume(max_records)

    @abc.abstractmethod
    def positions(self) -> dict[TopicPartitionKey, int]: ...

    @abc.abstractmethod
    def lag(self) -> dict[TopicPartitionKey, int]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- the broker operations
    @abc.abstractmethod
    def _pause(self, keys: list[TopicPartitionKey]) -> None: ...

    @abc.abstractmethod
    def _resume(self, keys: list[TopicPartitionKey]) -> None: ...

    @abc.abstractmethod
    def _store(self, offsets: list[tuple[TopicPartitionKey, int]]) -> None:
        """Hand offsets to the background committer (ignore partitions that moved away)."""

    @abc.abstractmethod
    def _commit(self, offsets: list[tuple[TopicPartitionKey, int]]) -> None:
        """Commit offsets synchronously."""

    @abc.abstractmethod
    def _seek(self, key: TopicPartitionKey, offset: int) -> None:
        """Set the next offset read from an assigned partition."""

    @abc.abstractmethod
    def high_watermark(self, key: TopicPartitionKey) -> int | None:
        """The partition's end now (may ask the broker), None when unknown."""

    def bounded(self, key: TopicPartitionKey) -> bool:
        return self._all_bounded or key[0] in self._bounded_topics

    def read_until(self, key: TopicPartitionKey, end: int) -> None:
        """Let a bounded partition be read up to `end` (exclusive); it is paused again there."""
        self._ends[key] = end
        self.at_end.discard(key)

    # -- rebalance bookkeeping
    def _assigned(self, keys: list[TopicPartitionKey]) -> None:
        for key in keys:
            self._ledger.assign(key)
            self.assigned.add(key)
            if key[0] in self._bounded_topics:
                # A parked topic's partition is closed until a pass opens it.
                self._ends.pop(key, None)
                self.at_end.add(key)
        # Partitions that arrive while we hold back their topic must start paused too.
        hold = [k for k in keys if self._pause_all or k[0] in self._pause_topics or k in self.at_end]
        if hold:
            self._pause(hold)
            self.paused_partitions.update(hold)
        log.info("partitions assigned", extra={"partitions": _names(keys)})
        self._changed()

    def _revoked(self, keys: list[TopicPartitionKey]) -> None:
        self._commit_revoked(keys, self._give_up(keys))

    def _give_up(self, keys: list[TopicPartitionKey]) -> list[tuple[TopicPartitionKey, int]]:
        """Forget revoked partitions; returns their settled watermarks (to commit)."""
        offsets = []
        for key in keys:
            ledger = self._ledger.get(key)
            if ledger is not None and ledger.committable is not None:
                offsets.append((key, ledger.committable))
            self._ledger.revoke(key)
            self.assigned.discard(key)
            self.paused_partitions.discard(key)
        self._changed()
        return offsets

    def _commit_revoked(
        self, keys: list[TopicPartitionKey], offsets: list[tuple[TopicPartitionKey, int]]
    ) -> None:
        if offsets:
            try:
                self._commit(offsets)
            except KafkaException as exc:
                log.warning("commit on revoke failed", extra={"error": str(exc)})
        log.info("partitions revoked", extra={"partitions": _names(keys)})

    async def _revoke_after_drain(self, keys: list[TopicPartitionKey]) -> list[tuple[TopicPartitionKey, int]]:
        """A clean revocation: let `before_revoke` finish the partitions' deliveries, then give them
        up; returns the watermarks to commit."""
        if self.before_revoke is not None:
            try:
                await self.before_revoke([k for k in keys if k in self.assigned])
            except Exception:
                log.exception("waiting for the revoked partitions' deliveries failed")
        return self._give_up(keys)

    def _lost(self, keys: list[TopicPartitionKey]) -> None:
        # Another member may already own them: committing now could move its offsets backwards.
        for key in keys:
            self._ledger.revoke(key)
            self.assigned.discard(key)
            self.paused_partitions.discard(key)
        log.warning("partitions lost", extra={"partitions": _names(keys)})
        self._changed()

    def _changed(self) -> None:
        if self._on_changed is not None:
            self._on_changed()

    def _below_end(self, key: TopicPartitionKey, offset: int) -> bool:
        """False for a record at or past a bounded partition's end: the partition is paused and its
        position set back to the end, so whatever lies past it is read by a later pass."""
        if not (self._all_bounded or key[0] in self._bounded_topics):
            return True
        end = self._ends.get(key, 0)
        if offset < end and key not in self.at_end:
            return True
        if key not in self.at_end:
            self.at_end.add(key)
        if key in self.assigned:
            if key not in self.paused_partitions:
                self._pause([key])
                self.paused_partitions.add(key)
            self._seek(key, min(offset, end))
        return False

    # -- the loop's calls
    def store_settled(self) -> int:
        offsets = list(self._ledger.take_dirty())
        if offsets:
            self._store(offsets)
        return len(offsets)

    def apply_pauses(self, *, all_topics: bool, topics: set[str]) -> None:
        """Pause every assigned partition (backpressure) or those of `topics` (a destination that is
        retrying or parked); resume the rest. Polling continues either way."""
        desired = {tp for tp in self.assigned if all_topics or tp[0] in topics or tp in self.at_end}
        to_pause = desired - self.paused_partitions
        to_resume = self.paused_partitions - desired
        if to_pause:
            self._pause(sorted(to_pause))
        if to_resume:
            self._resume(sorted(to_resume))
        self.paused_partitions = desired
        self._pause_all = all_topics
        self._pause_topics = set(topics)

    def commit_final(self) -> int:
        offsets = self._settled_offsets()
        if offsets:
            self._commit(offsets)
        return len(offsets)

    def _settled_offsets(self) -> list[tuple[TopicPartitionKey, int]]:
        """Each assigned partition's settled watermark (the offset to commit), where there is one."""
        return [
            (key, ledger.committable)
            for key in sorted(self.assigned)
            if (ledger := self._ledger.get(key)) is not None and ledger.committable is not None
        ]


def _tps(offsets: list[tuple[TopicPartitionKey, int]]) -> list[TopicPartition]:
    return [TopicPartition(t, p, off) for (t, p), off in offsets]


class KafkaSource(PartitionSource):
    """Owns the confluent-kafka Consumer; call every method from the one thread that runs the loop."""

    def __init__(
        self,
        conf: Mapping[str, Any],
        topics: list[str],
        ledger: OffsetLedger,
        *,
        on_partitions_changed: Callable[[], None] | None = None,
        end_offsets: Mapping[TopicPartitionKey, int] | None = None,
        bounded_topics: Iterable[str] = (),
    ) -> None:
        check_safe(conf)
        super().__init__(
            ledger,
            end_offsets=end_offsets,
            bounded_topics=bounded_topics,
            on_partitions_changed=on_partitions_changed,
        )
        # librdkafka's own log lines go through logging, so they come out as structured JSON too.
        self._commits: dict[TopicPartitionKey, int] = {}
        """The highest offset the group confirmed per partition (from commit results)."""
        self._commit_refused: KafkaError | None = None
        self._classic = str(conf.get("group.protocol", "classic")) == "classic"
        self._join_state: str | None = None
        """The classic group's join state from librdkafka's statistics (`steady` between rebalances)."""
        self._join_state_at = 0.0
        callbacks: dict[str, Any] = {"on_commit": self._on_commit}
        if self._classic:
            callbacks["stats_cb"] = self._on_stats
            callbacks["statistics.interval.ms"] = conf.get("statistics.interval.ms", STATS_INTERVAL_MS)
        self._consumer = Consumer({**conf, **callbacks}, logger=logging.getLogger("librdkafka.consumer"))
        self._topics = topics
        self._poller: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._waiting: concurrent.futures.Future[Any] | None = None
        self._deferring = False
        self._deferred: list[Callable[[], None]] = []
        self._group_wait_s = group_wait_s(conf)
        self._subscribed = False
        self._joined = False
        """Whether the group gave this member an assignment (empty or not) since `subscribe`."""

    def subscribe(self) -> None:
        self._subscribed = True
        self._consumer.subscribe(
            self._topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    # rebalance callbacks (run inside consume(): in the poll thread, or in the loop's thread when
    # `consume` or `close` is called directly)
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._joined = True
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._on_loop(self._as_coroutine(self._assigned, keys), lambda: self._assigned(keys))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        offsets = self._on_loop(self._revoke_after_drain(keys), lambda: self._give_up(keys))
        self._commit_revoked(keys, offsets)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self._on_loop(self._as_coroutine(self._lost, keys), lambda: self._lost(keys))

    @staticmethod
    async def _as_coroutine(
        fn: Callable[[list[TopicPartitionKey]], None], keys: list[TopicPartitionKey]
    ) -> None:
        fn(keys)

    def _on_loop(self, work: Coroutine[Any, Any, _T], direct: Callable[[], _T]) -> _T:
        """From the poll thread: run `work` on the loop's thread and wait for it (librdkafka holds the
        rebalance until this callback returns). On the loop's thread itself: `direct()`."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread or loop.is_closed():
            work.close()
            return direct()
        # librdkafka operations on this consumer from the loop's thread while this callback is open
        # never complete (pause, commit): the loop's part queues them and this thread runs them after.
        self._deferring = True
        future = self._waiting = asyncio.run_coroutine_threadsafe(work, loop)
        try:
            result: _T = future.result(timeout=_CALLBACK_TIMEOUT_S)
        except BaseException as exc:  # the loop is gone, stuck or closing: keep the bookkeeping right
            future.cancel()
            log.error("rebalance callback could not run on the loop", extra={"error": repr(exc)})
            self._run_deferred()
            return direct()
        finally:
            self._waiting = None
        self._run_deferred()
        return result

    def _broker(self, op: Callable[[], None]) -> None:
        """Run a librdkafka operation now, or queue it for the open rebalance callback's thread."""
        if self._deferring:
            self._deferred.append(op)
        else:
            op()

    def _run_deferred(self) -> None:
        self._deferring = False
        ops, self._deferred = self._deferred, []
        for op in ops:
            try:
                op()
            except KafkaException as exc:
                log.warning("kafka operation after a rebalance failed", extra={"error": str(exc)})

    async def poll(self, max_records: int) -> list[Origin]:
        """`consume` in the poll thread, so the loop keeps delivering while librdkafka waits in a
        revocation callback for `before_revoke`."""
        if self.before_revoke is None:
            return self.consume(max_records)
        if self._poller is None:
            self._loop = asyncio.get_running_loop()
            self._loop_thread = threading.get_ident()
            self._poller = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kafka-poll")
        assert self._loop is not None
        messages = await self._loop.run_in_executor(self._poller, self._fetch, max_records)
        return self._records(messages)

    # broker operations (through `_broker`: see `_on_loop`)
    def _pause(self, keys: list[TopicPartitionKey]) -> None:
        tps = [TopicPartition(t, p) for t, p in keys]
        self._broker(lambda: self._consumer.pause(tps))

    def _resume(self, keys: list[TopicPartitionKey]) -> None:
        tps = [TopicPartition(t, p) for t, p in keys]
        self._broker(lambda: self._consumer.resume(tps))

    def _store(self, offsets: list[tuple[TopicPartitionKey, int]]) -> None:
        def store() -> None:
            try:
                self._consumer.store_offsets(offsets=_tps(offsets))
            except KafkaException as exc:
                # _STATE: the partition moved to another member between settle and store. Its
                # records will be re-read there, which is safe.
                if exc.args and exc.args[0].code() != KafkaError._STATE:
                    raise

        self._broker(store)

    def _commit(self, offsets: list[tuple[TopicPartitionKey, int]]) -> None:
        def commit() -> None:
            self._consumer.store_offsets(offsets=_tps(offsets))
            self._consumer.commit(offsets=_tps(offsets), asynchronous=False)

        self._broker(commit)

    def _seek(self, key: TopicPartitionKey, offset: int) -> None:
        def seek() -> None:
            try:
                self._consumer.seek(TopicPartition(key[0], key[1], offset))
            except KafkaException as exc:
                log.warning("seek failed", extra={"partition": f"{key[0]}[{key[1]}]", "error": str(exc)})

        self._broker(seek)

    def high_watermark(self, key: TopicPartitionKey) -> int | None:
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(*key), timeout=5)
        except KafkaException:
            return None
        return int(high) if high is not None and high >= 0 else None

    def _fetch(self, max_records: int) -> list[Message]:
        messages: list[Message] = self._consumer.consume(num_messages=max_records, timeout=0)
        return messages

    def consume(self, max_records: int) -> list[Origin]:
        """Records available now (never blocks: the caller is an asyncio loop)."""
        return self._records(self._fetch(max_records))

    def _records(self, messages: list[Message]) -> list[Origin]:
        records = []
        for msg in messages:
            err = msg.error()
            if err is None:
                origin = Origin.from_message(msg)
                if self._below_end((origin.topic, origin.partition), origin.offset):
                    records.append(origin)
            elif err.code() == KafkaError._PARTITION_EOF:
                continue
            elif kafka_error_class(err) is None:
                self.fatal_error = f"fatal Kafka error: {err.str()}"
            else:
                log.warning("kafka consumer error", extra={"error": err.str(), "code": err.code()})
        return records

    def positions(self) -> dict[TopicPartitionKey, int]:
        parts = [TopicPartition(t, p) for t, p in self.assigned]
        return {(tp.topic, tp.partition): tp.offset for tp in self._consumer.position(parts)} if parts else {}

    def lag(self) -> dict[TopicPartitionKey, int]:
        """High watermark minus the settled watermark per assigned partition (local state, no I/O)."""
        result: dict[TopicPartitionKey, int] = {}
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

    def commit_final(self) -> int:
        """As `PartitionSource.commit_final`, while still taking part in the group. The broker answers
        a member's requests in order, and holds its JoinGroup until the rebalance completes (until
        every member has rejoined, or a departed one's session timed out): a commit sent meanwhile
        is answered only then, and refused (ILLEGAL_GENERATION) because the generation moved on. So
        the commit is asynchronous, the consumer keeps polling (partitions paused: nothing is read)
        so that rebalance callbacks run, and a refused commit is made again with the new generation;
        all within `group_wait_s`. Partitions revoked meanwhile are committed by the revocation.
        Giving up early leaves the settled records to the next owner, which sends them again."""
        deadline = time.monotonic() + self._group_wait_s
        self._pause(sorted(self.assigned))
        wanted = self._settled_offsets()
        while wanted:
            self._commit_refused = None
            self._commits.clear()
            self._consumer.commit(offsets=_tps(wanted), asynchronous=True)
            while self._commit_refused is None and time.monotonic() < deadline:
                # Serves rebalance callbacks and the commit's result; nothing is read (paused).
                self._consumer.consume(num_messages=100, timeout=0.2)
                if all(self._commits.get(k, -1) >= o for k, o in wanted if k in self.assigned):
                    return len(wanted)
            refused = self._commit_refused
            if refused is None or refused.code() not in _REBALANCING or time.monotonic() >= deadline:
                raise KafkaException(refused or KafkaError(KafkaError._TIMED_OUT, "final commit unconfirmed"))
            log.info("final commit waits for the group's rebalance", extra={"error": refused.str()})
            wanted = self._settled_offsets()  # without the partitions the rebalance took (committed then)
        return 0

    def _on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Results of commits (the background auto-commit's too), from inside consume()."""
        if error is not None:
            self._commit_refused = error
            return
        for tp in partitions:
            if tp.error is not None:
                self._commit_refused = tp.error
            elif tp.offset >= 0:
                key = (tp.topic, tp.partition)
                self._commits[key] = max(self._commits.get(key, -1), tp.offset)

    def _on_stats(self, stats: str) -> None:
        """librdkafka's statistics (every STATS_INTERVAL_MS, from inside consume()): the join state."""
        try:
            state = orjson.loads(stats).get("cgrp", {}).get("join_state")
        except (orjson.JSONDecodeError, AttributeError):
            return
        self._join_state = state if isinstance(state, str) else None
        self._join_state_at = time.monotonic()

    def _settled_in_group(self, since: float) -> bool:
        """Whether this member has been given an assignment and (classic protocol) the statistics
        taken after `since` show no rebalance under way."""
        if not self._joined:
            return False
        return not self._classic or (self._join_state_at > since and self._join_state == "steady")

    def close(self) -> None:
        """Leave the group, but not in the middle of a join (up to `group_wait_s`). The broker answers
        a connection's requests in order and holds a JoinGroup until the rebalance completes, so a
        LeaveGroup sent meanwhile times out (librdkafka gives up after 5 s) and the process exits
        while the group still counts it: every rebalance then waits for its session to time out
        (45 s by default), and members leaving meanwhile are caught the same way. So, with the
        classic protocol, the member polls (partitions paused) until librdkafka's statistics show
        the group steady; with KIP-848 there is no JoinGroup to wait for, only a first assignment."""
        if self._poller is not None:
            waiting = self._waiting
            if waiting is not None:
                waiting.cancel()  # a callback waiting for this (now busy) thread would wait in vain
            self._poller.shutdown(wait=True)
        started = time.monotonic()
        if self._subscribed and not self._settled_in_group(started):
            wait = self._group_wait_s
            deadline = started + wait
            self._pause_all = True  # what a rebalance assigns starts paused: nothing is read
            self._pause(sorted(self.assigned))
            logged = False
            while not self._settled_in_group(started) and time.monotonic() < deadline:
                self._consumer.consume(num_messages=100, timeout=0.2)
                if not logged and time.monotonic() - started > 1.5 * STATS_INTERVAL_MS / 1000:
                    logged = True  # not for the usual wait of one statistics interval
                    log.info(
                        "leaving the group waits for the join in progress",
                        extra={"max_seconds": wait, "join_state": self._join_state},
                    )
        self._consumer.close()


def ensure_copy_topics(
    conf: Mapping[str, Any], copies: Mapping[str, str], timeout_s: float = 30.0
) -> list[str]:
    """Create each missing copy topic (platform mode's parked topics: copy -> source topic) with its
    source topic's partition count, so the group's subscription finds it from the start (a topic
    created later by a producer would only be seen at the next metadata refresh). Returns problems
    (a topic that could not be created), never raises: the service then runs without it."""
    admin = AdminClient(dict(conf))
    problems: list[str] = []
    try:
        metadata = admin.list_topics(timeout=timeout_s)
    except KafkaException as exc:
        return [f"cannot list topics: {exc}"]
    wanted = []
    for copy, source in copies.items():
        if copy in metadata.topics and metadata.topics[copy].error is None:
            continue
        source_meta = metadata.topics.get(source)
        partitions = len(source_meta.partitions) if source_meta is not None and source_meta.partitions else 1
        wanted.append(NewTopic(copy, num_partitions=partitions))
    if not wanted:
        return problems
    for topic, future in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            log.info("created topic", extra={"topic": topic})
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            problems.append(f"cannot create topic {topic}: {exc.args[0].str() if exc.args else exc}")
    return problems
