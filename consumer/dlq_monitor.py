"""Dead-letter monitor: how old is the oldest record still waiting in each dead-letter topic?

Meta refuses events older than 7 days, so that age is the replay deadline. "Waiting" means after the
replay consumer group's committed offset (`<kafka.group_id>-replay`; from the start of the partition
when the group has committed nothing). Every `interval_s` the monitor sets, per dead-letter topic:

- `capi_dlq_oldest_record_age_seconds{topic}`: now minus the oldest timestamp among the waiting
  records (0 when none wait). A dead-letter copy keeps the original record's timestamp, so this is the
  age of the source record.
- `capi_dlq_records_waiting{topic}`: high watermark minus the replay group's offset, summed.
- `capi_dlq_monitor_last_success_timestamp_seconds` after a check of every topic, or
  `capi_dlq_monitor_errors_total` when a check fails (the gauges then keep their last values).

The oldest waiting record is not always the first one: a replay that fails again appends the record,
with its old timestamp, behind younger ones. So the monitor reads the waiting records, once: per
partition it remembers how far it has read and the oldest timestamp seen, reads only new records on
the next check, and reads again from the replay offset only when that offset has moved past the oldest
record (it was replayed) or backwards (reset). At most `max_records_per_check` records per partition
are read per check, so a large backlog is measured over several checks (until then the age is a lower
bound).

The Kafka calls block, so `run()` makes them in a worker thread (`asyncio.to_thread`) with a short-lived
consumer per check that is assigned partitions directly: it never joins a group and never commits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import (
    OFFSET_INVALID,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from consumer.config import AppConfig
from consumer.dlq import Header
from consumer.metrics import Metrics

log = logging.getLogger(__name__)

_ORIGIN_TIMESTAMP = Header.ORIGIN_TIMESTAMP.key
# Consumer settings of the source consumer that make no sense for an assign-only reader.
_DROPPED_KEYS = ("partition.assignment.strategy", "group.protocol", "group.instance.id")


@dataclass
class _Scan:
    """What has been read of one partition's waiting records."""

    start: int
    """The replay offset when reading began; the oldest record is the oldest in [start, next)."""
    next: int
    """The next offset to read."""
    oldest_ms: int | None = None
    oldest_offset: int | None = None


@dataclass(frozen=True)
class TopicState:
    oldest_age_s: float
    waiting: int


class DeadLetterMonitor:
    def __init__(
        self,
        conf: Mapping[str, Any],
        topics: Iterable[str],
        metrics: Metrics,
        *,
        interval_s: float = 60.0,
        max_records_per_check: int = 50_000,
        check_deadline_s: float = 20.0,
        request_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.time,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
    ) -> None:
        """`conf`: librdkafka settings with `bootstrap.servers` and `group.id` = the replay group."""
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._conf = {k: v for k, v in conf.items() if k not in _DROPPED_KEYS}
        self._conf.update(
            {
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            }
        )
        self.topics = sorted(set(topics))
        self.metrics = metrics
        self.interval_s = interval_s
        self.max_records_per_check = max_records_per_check
        self.check_deadline_s = check_deadline_s
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        self._factory = consumer_factory
        self._scans: dict[tuple[str, int], _Scan] = {}
        self._halt = threading.Event()

    @classmethod
    def from_config(cls, config: AppConfig, metrics: Metrics, **kwargs: Any) -> DeadLetterMonitor:
        """A monitor of every configured dead-letter topic, with the source consumer's Kafka settings."""
        conf: dict[str, Any] = dict(config.consumer_properties())
        conf["group.id"] = config.replay_group_id
        return cls(conf, config.dlq_topics, metrics, **kwargs)

    # -- the asyncio side
    async def run(self, stop: asyncio.Event) -> None:
        """Check now and every `interval_s` until `stop` is set (or the task is cancelled)."""
        self._halt.clear()
        try:
            while not stop.is_set():
                await self.check_async()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.interval_s)
        finally:
            # A check still running in its thread stops reading at the next batch.
            self._halt.set()

    async def check_async(self) -> dict[str, TopicState] | None:
        """One check in a worker thread; failures are logged and counted, never raised."""
        try:
            return await asyncio.to_thread(self.check)
        except Exception as exc:
            self.metrics.dlq_monitor_errors.inc()
            log.warning(
                "dead-letter monitor check failed",
                extra={"error": str(exc), "error_type": type(exc).__name__},
            )
            return None

    # -- the blocking side (a worker thread)
    def check(self) -> dict[str, TopicState]:
        """Measure every dead-letter topic and set the gauges. Blocks for Kafka round trips."""
        deadline = time.monotonic() + self.check_deadline_s
        consumer = self._factory(dict(self._conf))
        try:
            states = {topic: self._check_topic(consumer, topic, deadline) for topic in self.topics}
        finally:
            consumer.close()
        for topic, state in states.items():
            self.metrics.dlq_oldest_age.labels(topic).set(state.oldest_age_s)
            self.metrics.dlq_waiting.labels(topic).set(state.waiting)
        self.metrics.dlq_monitor_last_success.set(self._clock())
        return states

    def _check_topic(self, consumer: Consumer, topic: str, deadline: float) -> TopicState:
        partitions = self._partitions(consumer, topic)
        if not partitions:
            self._forget(topic, keep=())
            return TopicState(0.0, 0)
        tps = [TopicPartition(topic, p) for p in partitions]
        committed = {
            tp.partition: tp.offset for tp in consumer.committed(tps, timeout=self.request_timeout_s)
        }
        oldest_ms: int | None = None
        waiting = 0
        for partition in partitions:
            low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self.request_timeout_s, cached=False
            )
            position = committed.get(partition, OFFSET_INVALID)
            start = max(position if position >= 0 else low, low)
            if start >= high:
                self._scans.pop((topic, partition), None)
                continue
            waiting += high - start
            found = self._oldest_in(consumer, topic, partition, start, high, deadline)
            if found is not None and (oldest_ms is None or found < oldest_ms):
                oldest_ms = found
        self._forget(topic, keep=partitions)
        age = 0.0 if oldest_ms is None else max(0.0, self._clock() - oldest_ms / 1000)
        return TopicState(age, waiting)

    def _partitions(self, consumer: Consumer, topic: str) -> list[int]:
        """The topic's partitions; none when it does not exist (nothing was dead-lettered yet)."""
        metadata = consumer.list_topics(topic, timeout=self.request_timeout_s).topics.get(topic)
        if metadata is None:
            return []
        if metadata.error is not None:
            if metadata.error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                return []
            raise KafkaException(metadata.error)
        return sorted(metadata.partitions)

    def _forget(self, topic: str, keep: Iterable[int]) -> None:
        kept = set(keep)
        for key in [k for k in self._scans if k[0] == topic and k[1] not in kept]:
            del self._scans[key]

    def _oldest_in(
        self, consumer: Consumer, topic: str, partition: int, start: int, high: int, deadline: float
    ) -> int | None:
        """Oldest timestamp (epoch ms) among offsets [start, high) read so far."""
        key = (topic, partition)
        scan = self._scans.get(key)
        if (
            scan is None
            or start < scan.start
            or scan.next > high
            or (scan.oldest_offset is not None and scan.oldest_offset < start)
            or (scan.oldest_offset is None and scan.next < start)
        ):
            # First look, a reset or truncated partition, or the oldest record was replayed: read again.
            scan = _Scan(start=start, next=start)
        else:
            scan.start = start
        self._scans[key] = scan
        stop_at = min(high, scan.next + self.max_records_per_check)
        if scan.next < stop_at:
            self._read(consumer, topic, partition, scan, stop_at, deadline)
        return scan.oldest_ms

    def _read(
        self, consumer: Consumer, topic: str, partition: int, scan: _Scan, stop_at: int, deadline: float
    ) -> None:
        consumer.assign([TopicPartition(topic, partition, scan.next)])
        try:
            while scan.next < stop_at and time.monotonic() < deadline and not self._halt.is_set():
                messages = consumer.consume(num_messages=min(500, stop_at - scan.next), timeout=0.5)
                for msg in messages:
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            # The end: offsets up to the watermark held no readable record.
                            scan.next = max(scan.next, min(stop_at, msg.offset() or 0))
                            return
                        raise KafkaException(err)
                    offset = msg.offset()
                    if offset is None or offset < scan.next:
                        continue
                    timestamp = _timestamp_ms(msg)
                    if timestamp is not None and (scan.oldest_ms is None or timestamp < scan.oldest_ms):
                        scan.oldest_ms, scan.oldest_offset = timestamp, offset
                    scan.next = offset + 1
        finally:
            consumer.unassign()


def _timestamp_ms(msg: Message) -> int | None:
    kind, value = msg.timestamp()
    if kind != TIMESTAMP_NOT_AVAILABLE and value is not None and value > 0:
        return int(value)
    headers = msg.headers()
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    for name, raw in pairs:
        if name == _ORIGIN_TIMESTAMP and raw:
            try:
                return int(raw.decode() if isinstance(raw, bytes) else str(raw))
            except ValueError:
                return None
    return None
