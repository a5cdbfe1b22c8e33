"""Dead-letter topics: a failed record's original bytes plus context headers, written fail-closed.

A record is settled only after Kafka acknowledged its dead-letter copy (idempotent producer,
`acks=all`). The copy keeps the original key, value, headers and timestamp, and adds the headers below,
all UTF-8 strings (like Kafka Connect's `__connect.errors.*`, readable by any tool):

| header | value |
|---|---|
| `capi.dlq.origin.topic` / `.partition` / `.offset` / `.timestamp` | source of the record (epoch ms) |
| `capi.dlq.consumer.group` | the consumer group that dead-lettered it |
| `capi.dlq.stage` | decode, map, validate or deliver |
| `capi.dlq.reason` | machine-readable reason code |
| `capi.dlq.error.class` | transient, permanent or destination |
| `capi.dlq.error.message` | short PII-free description |
| `capi.dlq.graph.code` / `.subcode` / `.fbtrace_id` | the Graph API error, when Meta rejected it |
| `capi.dlq.attempts` | 1 when first dead-lettered, +1 on every replay that fails again |
| `capi.dlq.delivery.requests` | requests to Meta this event was part of in the run that failed it |
| `capi.dlq.first.failure.time` | epoch ms of the first failure (kept across replays) |
| `capi.dlq.failure.time` | epoch ms of this failure (what `replay --since/--until` filter on) |

No header ever carries an access token or raw PII.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, Producer

from consumer.errors import Failure
from consumer.source import Origin

log = logging.getLogger(__name__)

HEADER_PREFIX = "capi.dlq."


class Header(enum.StrEnum):
    """Dead-letter context header names, without `HEADER_PREFIX` (as `decode_headers` returns them)."""

    ORIGIN_TOPIC = "origin.topic"
    ORIGIN_PARTITION = "origin.partition"
    ORIGIN_OFFSET = "origin.offset"
    ORIGIN_TIMESTAMP = "origin.timestamp"
    CONSUMER_GROUP = "consumer.group"
    STAGE = "stage"
    REASON = "reason"
    ERROR_CLASS = "error.class"
    ERROR_MESSAGE = "error.message"
    GRAPH_CODE = "graph.code"
    GRAPH_SUBCODE = "graph.subcode"
    GRAPH_FBTRACE_ID = "graph.fbtrace_id"
    ATTEMPTS = "attempts"
    DELIVERY_REQUESTS = "delivery.requests"
    FIRST_FAILURE_TIME = "first.failure.time"
    FAILURE_TIME = "failure.time"

    @property
    def key(self) -> str:
        """The full Kafka header name."""
        return HEADER_PREFIX + self.value


_ORIGIN = (Header.ORIGIN_TOPIC, Header.ORIGIN_PARTITION, Header.ORIGIN_OFFSET, Header.ORIGIN_TIMESTAMP)


def dlq_headers(
    origin: Origin,
    failure: Failure,
    *,
    group_id: str,
    requests: int,
    now_ms: int,
) -> list[tuple[str, bytes]]:
    """The original headers (minus earlier dead-letter context) plus this failure's context."""
    previous = {k[len(HEADER_PREFIX) :]: v for k, v in (origin.headers or []) if k.startswith(HEADER_PREFIX)}
    headers = [(k, v) for k, v in (origin.headers or []) if not k.startswith(HEADER_PREFIX)]
    context: dict[Header, str | bytes | None]
    if Header.ORIGIN_TOPIC in previous:
        # A replayed record keeps its first origin: that is where the event was produced.
        context = {h: previous.get(h) for h in _ORIGIN}
    else:
        context = {
            Header.ORIGIN_TOPIC: origin.topic,
            Header.ORIGIN_PARTITION: str(origin.partition),
            Header.ORIGIN_OFFSET: str(origin.offset),
            Header.ORIGIN_TIMESTAMP: str(origin.timestamp_ms) if origin.timestamp_ms is not None else None,
        }
    context |= {
        Header.CONSUMER_GROUP: group_id,
        Header.STAGE: str(failure.stage),
        Header.REASON: failure.reason,
        Header.ERROR_CLASS: str(failure.error_class),
        Header.ERROR_MESSAGE: failure.message[:1000],
        Header.GRAPH_CODE: None if failure.graph_code is None else str(failure.graph_code),
        Header.GRAPH_SUBCODE: None if failure.graph_subcode is None else str(failure.graph_subcode),
        Header.GRAPH_FBTRACE_ID: failure.fbtrace_id,
        # Each run that fails the record counts once, however many requests bisection and retries made.
        Header.ATTEMPTS: str(_int(previous.get(Header.ATTEMPTS)) + 1),
        Header.DELIVERY_REQUESTS: str(requests) if requests else None,
        Header.FIRST_FAILURE_TIME: previous.get(Header.FIRST_FAILURE_TIME, str(now_ms).encode()),
        Header.FAILURE_TIME: str(now_ms),
    }
    for name, value in context.items():
        if value is not None:
            headers.append((name.key, value if isinstance(value, bytes) else value.encode()))
    return headers


def decode_headers(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """The dead-letter context headers of a record as a dict without the prefix."""
    return {
        k[len(HEADER_PREFIX) :]: v.decode(errors="replace")
        for k, v in (headers or [])
        if k.startswith(HEADER_PREFIX) and v is not None
    }


def _int(value: bytes | None) -> int:
    try:
        return int(value) if value is not None else 0
    except ValueError:
        return 0


class DeadLetters(Protocol):
    """Where dead-letter copies go (a Kafka topic; an in-memory list in the loop's unit tests)."""

    def send(
        self,
        origin: Origin,
        failure: Failure,
        *,
        requests: int,
        dlq_for: str,
        on_done: Callable[[str, str | None], None],
    ) -> None:
        """Queue the copy to the dead-letter topic of source topic `dlq_for`; later (from `poll` or
        `flush`) `on_done(dlq topic, None)` once it is durable, `on_done(dlq topic, error)` if refused."""
        ...

    def poll(self) -> None: ...

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding copies; returns how many are still unacknowledged."""
        ...

    def close(self) -> None: ...


class DeadLetterWriter:
    """Produces dead-letter copies and calls back once Kafka acknowledged (or finally refused) each."""

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        *,
        group_id: str,
        topic_for: Callable[[str], str],
        write_timeout_s: float = 120.0,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        """`topic_for(source topic)` names its dead-letter topic."""
        conf = dict(producer_config)
        conf.setdefault("enable.idempotence", True)
        conf["acks"] = "all"
        # Fail within a bounded time when the topic cannot be written, instead of librdkafka's 5 min.
        conf["message.timeout.ms"] = int(write_timeout_s * 1000)
        # librdkafka's own log lines go through logging, so they come out as structured JSON too.
        self._producer = Producer(conf, logger=logging.getLogger("librdkafka.dlq"))
        self._group = group_id
        self._topic_for = topic_for
        self._clock_ms = clock_ms

    def send(
        self,
        origin: Origin,
        failure: Failure,
        *,
        requests: int,
        dlq_for: str,
        on_done: Callable[[str, str | None], None],
    ) -> None:
        """Queue the dead-letter copy to the DLQ of source topic `dlq_for`; `on_done(topic, None)` once
        Kafka acknowledged it (acks=all), `on_done(topic, error text)` if it was refused."""
        topic = self._topic_for(dlq_for)
        headers = dlq_headers(
            origin, failure, group_id=self._group, requests=requests, now_ms=self._clock_ms()
        )

        def report(err: KafkaError | None, msg: Message) -> None:
            on_done(topic, None if err is None else err.str())

        kwargs: dict[str, Any] = {"key": origin.key, "value": origin.value, "headers": headers}
        if origin.timestamp_ms is not None:
            kwargs["timestamp"] = origin.timestamp_ms
        while True:
            try:
                self._producer.produce(topic, on_delivery=report, **kwargs)
                break
            except BufferError:
                # The local queue is full: let deliveries complete, then try again.
                self._producer.poll(0.1)

    def poll(self) -> None:
        self._producer.poll(0)

    def close(self) -> None:
        """Release the producer (its broker connections) now rather than whenever it is collected."""
        self._producer.flush(0)
        del self._producer

    def flush(self, timeout_s: float) -> int:
        """Wait for outstanding copies; returns how many are still unacknowledged."""
        remaining: int = self._producer.flush(timeout_s)
        return remaining


@dataclass(frozen=True)
class GuardLimits:
    """Stop (rather than dead-letter) when more than `max_ratio` of the records settled in the last
    `window_s` seconds, at least `min_events` of them, would be dead-lettered."""

    max_ratio: float = 0.5
    window_s: float = 60.0
    min_events: int = 100


class SettleWindow:
    """How many records were settled, and how many of them dead-lettered, in the last `window_s` seconds.

    Kept in one-second buckets, so its size is bounded by the window, not by the record rate (a
    deque entry per record grew by ~100 MB per million records when nothing ever failed).
    """

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._buckets: deque[list[int]] = deque()  # [second, settled, failed]
        self._settled = 0
        self._failed = 0

    def add(self, now: float, failed: bool, count: int = 1) -> None:
        """`count` records settled at `now` (all failed, or none)."""
        second = int(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            bucket = buckets[-1]
        else:
            bucket = [second, 0, 0]
            buckets.append(bucket)
            self._expire(now)
        failures = count if failed else 0
        bucket[1] += count
        bucket[2] += failures
        self._settled += count
        self._failed += failures

    def counts(self, now: float) -> tuple[int, int]:
        """(settled, failed) within the window ending at `now` (to one-second resolution)."""
        self._expire(now)
        return self._settled, self._failed

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        buckets = self._buckets
        while buckets and buckets[0][0] + 1 <= horizon:
            _second, settled, failed = buckets.popleft()
            self._settled -= settled
            self._failed -= failed


class DeadLetterGuard:
    """Refuses a dead-letter copy when failures dominate what was settled recently: a broken mapping
    or a schema mistake would otherwise drain the whole topic into the dead-letter topic
    (../shared/docs/consumer-semantics.md, rule 9)."""

    def __init__(self, limits: GuardLimits) -> None:
        self.limits = limits
        self._window = SettleWindow(limits.window_s)

    def settled(self, now: float, *, failed: bool, count: int = 1) -> None:
        """`count` records settled at `now`, dead-lettered (`failed`) or not."""
        self._window.add(now, failed, count)

    def refuses(self, now: float) -> bool:
        """True when one more dead-letter copy would cross the limits."""
        total, failed = self._window.counts(now)
        total += 1
        return total >= self.limits.min_events and (failed + 1) / total > self.limits.max_ratio
