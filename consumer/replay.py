"""Replay: send dead-lettered records again through the same pipeline, once their cause is fixed.

A replay reads dead-letter topics with its own consumer group (`<kafka.group_id>-replay`) up to their
end at start-up and no further (the bounded `KafkaSource`: its own re-dead-lettered copies and the
live consumer's new failures wait for the next replay). It decodes and maps the original bytes with
the *current* schemas and mapping (routed by the `capi.dlq.origin.topic` header) and delivers them
like the service does. Events past Meta's window are reported as expired and skipped (their offsets
are committed: they can never be sent); events that fail again go back to the dead-letter topic once
per run with `attempts + 1`; records outside the `--since/--until/--reason` filters are skipped too,
so a later replay with other filters needs `--from-beginning`. A dry run prints what would be sent
and commits nothing.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from consumer.batch import Origin
from consumer.config import AppConfig
from consumer.dlq import decode_headers
from consumer.errors import EVENT_EXPIRED, PipelineError
from consumer.mapping import Filtered, Mapper, Rejected

EXPIRED_REASONS = frozenset({"event_too_old", EVENT_EXPIRED})
FILTERED_OUT = "replay_filter"


@dataclass(frozen=True)
class ReplayFilter:
    since_ms: int | None = None
    until_ms: int | None = None
    reason: str | None = None

    def rejects(self, origin: Origin) -> bool:
        """True when the record is outside the filters (judged by its dead-letter headers)."""
        ctx = decode_headers(origin.headers)
        if self.reason is not None and ctx.get("reason") != self.reason:
            return True
        when = _int(ctx.get("failure.time") or ctx.get("first.failure.time"))
        if self.since_ms is not None and (when is None or when < self.since_ms):
            return True
        return self.until_ms is not None and (when is None or when >= self.until_ms)


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
    topics = sorted({t.dlq_topic for t in config.topics.values()})
    if only is not None:
        return [only]
    return topics


def router(config: AppConfig) -> Callable[[Origin], str]:
    """The configured source topic a dead-lettered record belongs to."""
    by_dlq = {t.dlq_topic: name for name, t in config.topics.items()}

    def route(origin: Origin) -> str:
        origin_topic = decode_headers(origin.headers).get("origin.topic")
        if origin_topic in config.topics:
            return origin_topic
        return by_dlq.get(origin.topic, origin.topic)

    return route


def end_offsets(config: AppConfig, topics: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """(low, high) watermark of every partition of `topics`, taken once at start-up."""
    probe = Consumer({**config.consumer_properties(), "group.id": f"{config.kafka.group_id}-replay-probe"})
    try:
        ends: dict[tuple[str, int], tuple[int, int]] = {}
        metadata = probe.list_topics(timeout=30)
        for topic in topics:
            meta = metadata.topics.get(topic)
            if meta is None or meta.error is not None:
                raise SystemExit(f"capi-consumer replay: dead-letter topic {topic!r} does not exist")
            for partition in meta.partitions:
                low, high = probe.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
                ends[(topic, partition)] = (low, high)
        return ends
    finally:
        probe.close()


def replay_starts(
    config: AppConfig, ends: dict[tuple[str, int], tuple[int, int]]
) -> dict[tuple[str, int], tuple[int, int]]:
    """(where the replay group stands, end) per partition; the low watermark where it never committed."""
    probe = Consumer({**config.consumer_properties(), "group.id": f"{config.kafka.group_id}-replay"})
    try:
        committed = probe.committed([TopicPartition(t, p) for t, p in ends], timeout=30)
    finally:
        probe.close()
    starts = {(tp.topic, tp.partition): tp.offset for tp in committed}
    return {key: (max(low, starts.get(key, -1)), high) for key, (low, high) in ends.items()}


def reset_to_beginning(config: AppConfig, group: str, ends: dict[tuple[str, int], tuple[int, int]]) -> None:
    """--from-beginning: move the replay group to the low watermark of every partition."""
    resetter = Consumer({**config.consumer_properties(), "group.id": group, "enable.auto.commit": False})
    try:
        offsets = [TopicPartition(t, p, low) for (t, p), (low, _high) in ends.items()]
        resetter.commit(offsets=offsets, asynchronous=False)
    finally:
        resetter.close()


@dataclass
class DryRunStats:
    would_send: Counter[str] = field(default_factory=Counter)
    expired: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)


def dry_run(
    config: AppConfig,
    mapper: Mapper,
    decoder: Any,
    topics: list[str],
    ends: dict[tuple[str, int], tuple[int, int]],
    flt: ReplayFilter,
    out: IO[str] = sys.stdout,
    timeout_s: float = 60.0,
) -> DryRunStats:
    """Decode and map every record up to the end snapshot; print what would be sent; commit nothing."""
    group = f"{config.kafka.group_id}-replay"
    consumer = Consumer({**config.consumer_properties(), "group.id": group, "enable.auto.commit": False})
    route = router(config)
    stats = DryRunStats()
    # Start where the replay group stands (or the beginning), without joining the group.
    committed = consumer.committed([TopicPartition(t, p) for t, p in ends], timeout=30)
    start = {(tp.topic, tp.partition): tp.offset for tp in committed}
    assignment = []
    remaining = set()
    for key, (low, high) in ends.items():
        offset = start.get(key, -1)
        offset = low if offset is None or offset < 0 else offset
        if offset < high:
            assignment.append(TopicPartition(key[0], key[1], offset))
            remaining.add(key)
    consumer.assign(assignment)
    deadline = time.monotonic() + timeout_s
    try:
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=500, timeout=0.5):
                if msg.error() is not None:
                    continue
                origin = Origin.from_message(msg)
                key = (origin.topic, origin.partition)
                if origin.offset + 1 >= ends[key][1]:
                    remaining.discard(key)
                if origin.offset >= ends[key][1]:
                    continue
                if flt.rejects(origin):
                    stats.filtered[FILTERED_OUT] += 1
                    continue
                topic = route(origin)
                try:
                    record = decoder.decode(topic, origin.value)
                except PipelineError as exc:
                    stats.failed[exc.failure.reason] += 1
                    print(
                        orjson.dumps({"offset": origin.offset, "failed": exc.failure.reason}).decode(),
                        file=sys.stderr,
                    )
                    continue
                result = mapper.map(topic, record)
                if isinstance(result, Filtered):
                    stats.filtered[result.reason] += 1
                elif isinstance(result, Rejected):
                    if result.reason in EXPIRED_REASONS:
                        stats.expired += 1
                    else:
                        stats.failed[result.reason] += 1
                    line = {"offset": origin.offset, "stage": result.stage, "reason": result.reason}
                    print(orjson.dumps(line).decode(), file=sys.stderr)
                else:
                    stats.would_send[result.event["event_name"]] += 1
                    sent: dict[str, Any] = {"destination": result.destination, "event": result.event}
                    out.write(orjson.dumps(sent).decode() + "\n")
    finally:
        consumer.close()
    return stats
