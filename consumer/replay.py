"""Replay: send dead-lettered records again through the same pipeline, once their cause is fixed.

The run loop takes a `Policy`: how to treat records. Live consumption uses `Policy()` itself;
`ReplayPolicy` is every difference replay makes, kept here:

- it reads dead-letter topics with its own consumer group (`<kafka.group_id>-replay`) up to their end
  at start-up and no further (the source is bounded by `end_offsets`: its own re-dead-lettered copies
  and the live consumer's new failures wait for the next replay), and finishes on its own there;
- it decodes and maps the original bytes with the *current* schemas and mapping of the topic named by
  the `capi.dlq.origin.topic` header;
- events past Meta's window are reported as expired and settled without a copy (they can never be
  sent); events that fail again go back to the dead-letter topic once per run with `attempts + 1`;
- records outside the `--since/--until/--reason` filters are skipped (and committed), so a later
  replay with other filters needs `--from-beginning`;
- the dead-letter guard is off: records in a dead-letter topic are failures already.

A dry run (`dry_run`) decodes and maps with the same `process_record`, prints what would be sent and
commits nothing.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from consumer.config import AppConfig
from consumer.decode import Decoder
from consumer.dlq import Header, decode_headers
from consumer.errors import EVENT_EXPIRED
from consumer.mapping import Filtered, Mapper, Rejected
from consumer.offsets import TopicPartitionKey
from consumer.process import Processed, Undecodable, process_record
from consumer.source import Origin, Source
from consumer.validate import EVENT_TOO_OLD

EXPIRED_REASONS = frozenset({EVENT_TOO_OLD, EVENT_EXPIRED})
"""Failures that settle without a dead-letter copy in a replay: Meta would refuse them forever."""
FILTERED_OUT = "replay_filter"
"""Filtered reason of records outside `--since/--until/--reason`."""

Ends = dict[TopicPartitionKey, tuple[int, int]]
"""(where reading starts, end offset at start-up) per dead-letter partition."""


class Policy:
    """How the run loop treats records. This class is live consumption; `ReplayPolicy` overrides it.

    `copies`: topics holding copies of a source topic's records (platform mode's parked topics,
    parked topic -> source topic); their records are decoded and mapped as the source topic's.
    """

    guard_dead_letters = True
    """Stop instead of dead-lettering when failures dominate (`consumer.dlq.DeadLetterGuard`)."""
    settles_without_copy: frozenset[str] = frozenset()
    """Failure reasons settled without a dead-letter copy."""

    def __init__(self, copies: Mapping[str, str] | None = None) -> None:
        self._copies = dict(copies or {})

    def route(self, origin: Origin) -> str:
        """The configured topic whose schema, mapping and dead-letter topic apply to a record."""
        return self._copies.get(origin.topic, origin.topic)

    def skip(self, origin: Origin) -> str | None:
        """A filtered reason to settle the record unprocessed, or None."""
        return None

    def finished(self, source: Source, idle: bool) -> bool:
        """Stop on its own? `idle`: nothing consumed is unsettled or waiting in a batch."""
        return False


LIVE = Policy()


@dataclass(frozen=True)
class ReplayFilter:
    since_ms: int | None = None
    until_ms: int | None = None
    reason: str | None = None

    def rejects(self, origin: Origin) -> bool:
        """True when the record is outside the filters (judged by its dead-letter headers)."""
        ctx = decode_headers(origin.headers)
        if self.reason is not None and ctx.get(Header.REASON) != self.reason:
            return True
        when = _int(ctx.get(Header.FAILURE_TIME) or ctx.get(Header.FIRST_FAILURE_TIME))
        if self.since_ms is not None and (when is None or when < self.since_ms):
            return True
        return self.until_ms is not None and (when is None or when >= self.until_ms)


class ReplayPolicy(Policy):
    guard_dead_letters = False
    settles_without_copy = EXPIRED_REASONS

    def __init__(self, config: AppConfig, ends: Ends, flt: ReplayFilter) -> None:
        super().__init__()
        self._topics = set(config.topics)
        self._by_dlq = {t.dlq_topic: name for name, t in config.topics.items()}
        self._filter = flt
        self.end_offsets = {key: end for key, (_start, end) in ends.items()}
        """What the source may read: each partition below its end at start-up."""
        self._pending = {key: end for key, (start, end) in ends.items() if end > start}

    def route(self, origin: Origin) -> str:
        origin_topic = decode_headers(origin.headers).get(Header.ORIGIN_TOPIC)
        if origin_topic in self._topics:
            return origin_topic
        return self._by_dlq.get(origin.topic, origin.topic)

    def skip(self, origin: Origin) -> str | None:
        return FILTERED_OUT if self._filter.rejects(origin) else None

    def finished(self, source: Source, idle: bool) -> bool:
        """Every partition read up to its end at start-up and everything read is settled."""
        if not idle or not set(self._pending) <= source.assigned:
            return False
        # At its end a partition is held (a record past the end came back, and librdkafka reports
        # no position after the seek back) or its position reached the end.
        positions = source.positions()
        return all(
            key in source.at_end or positions.get(key, -1) >= end for key, end in self._pending.items()
        )


def parse_time(text: str | None) -> int | None:
    """ISO-8601 (naive = UTC) or epoch milliseconds -> epoch milliseconds."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return int(parsed.timestamp() * 1000)


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def dlq_topics(config: AppConfig, only: str | None) -> list[str]:
    return [only] if only is not None else config.dlq_topics


def _probe(config: AppConfig, group: str) -> Consumer:
    conf = {**config.consumer_properties(), "group.id": group, "enable.auto.commit": False}
    conf.pop("group.instance.id", None)
    return Consumer(conf)


def replay_ends(config: AppConfig, topics: list[str], *, from_beginning: bool = False) -> Ends:
    """Per partition of `topics`, taken once at start-up: where reading starts (the replay group's
    committed offset, else or with `from_beginning` the low watermark) and the high watermark."""
    probe = _probe(config, config.replay_group_id)
    try:
        metadata = probe.list_topics(timeout=30)
        watermarks: dict[TopicPartitionKey, tuple[int, int]] = {}
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                raise SystemExit(f"capi-consumer replay: dead-letter topic {topic!r} does not exist")
            for partition in meta.partitions:
                watermarks[(topic, partition)] = probe.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=30
                )
        committed = [] if from_beginning else probe.committed([TopicPartition(*k) for k in watermarks], 30)
    finally:
        probe.close()
    starts = {(tp.topic, tp.partition): tp.offset for tp in committed}
    return {key: (max(low, starts.get(key, -1)), high) for key, (low, high) in watermarks.items()}


def move_replay_group(config: AppConfig, ends: Ends) -> None:
    """Commit each partition's start for the replay group (--from-beginning: its low watermark)."""
    committer = _probe(config, config.replay_group_id)
    try:
        committer.commit(
            offsets=[TopicPartition(t, p, start) for (t, p), (start, _) in ends.items()], asynchronous=False
        )
    finally:
        committer.close()


@dataclass
class DryRunStats:
    would_send: Counter[str] = field(default_factory=Counter)
    expired: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)


def dry_run(
    config: AppConfig,
    mapper: Mapper,
    decoder: Decoder,
    ends: Ends,
    flt: ReplayFilter,
    out: IO[str] = sys.stdout,
    timeout_s: float = 60.0,
) -> DryRunStats:
    """Decode and map every record from where the replay group stands up to the end snapshot; print
    what would be sent; commit nothing (the reader is assigned, it never joins the group)."""
    policy = ReplayPolicy(config, ends, flt)
    consumer = _probe(config, config.replay_group_id)
    stats = DryRunStats()
    remaining = {key for key, (start, end) in ends.items() if start < end}
    consumer.assign([TopicPartition(t, p, ends[(t, p)][0]) for t, p in remaining])
    deadline = time.monotonic() + timeout_s
    try:
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is not None:
                    continue
                origin = Origin.from_message(msg)
                key = (origin.topic, origin.partition)
                end = ends[key][1]
                if origin.offset + 1 >= end:
                    remaining.discard(key)
                if origin.offset >= end:
                    continue
                if policy.skip(origin) is not None:
                    stats.filtered[FILTERED_OUT] += 1
                    continue
                result = process_record(decoder, mapper, policy.route(origin), origin.value)
                _dry_run_one(policy, result, origin, stats, out)
    finally:
        consumer.close()
    return stats


def _dry_run_one(policy: Policy, result: Processed, origin: Origin, stats: DryRunStats, out: IO[str]) -> None:
    if isinstance(result, Filtered):
        stats.filtered[result.reason] += 1
        return
    if isinstance(result, Undecodable | Rejected):
        reason = result.failure.reason if isinstance(result, Undecodable) else result.reason
        if reason in policy.settles_without_copy:
            stats.expired += 1
        else:
            stats.failed[reason] += 1
        line: dict[str, Any] = {"offset": origin.offset, "reason": reason}
        if isinstance(result, Rejected):
            line["stage"] = result.stage
        print(orjson.dumps(line).decode(), file=sys.stderr)
        return
    stats.would_send[result.event["event_name"]] += 1
    sent: dict[str, Any] = {"destination": result.destination, "event": result.event}
    out.write(orjson.dumps(sent).decode() + "\n")
