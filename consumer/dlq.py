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

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from consumer.batch import Origin
from consumer.errors import Failure

log = logging.getLogger(__name__)

HEADER_PREFIX = "capi.dlq."
DEFAULT_SUFFIX = ".dlq"


def dlq_headers(
    origin: Origin,
    failure: Failure,
    *,
    group_id: str,
    requests: int,
    now_ms: int,
) -> list[tuple[str, bytes]]:
    """The original headers (minus earlier dead-letter context) plus this failure's context."""
    previous = {k: v for k, v in (origin.headers or []) if k.startswith(HEADER_PREFIX)}
    first_failure = previous.get(HEADER_PREFIX + "first.failure.time", str(now_ms).encode())
    # Each run that fails the record counts once, however many requests bisection and retries made.
    attempts = _int(previous.get(HEADER_PREFIX + "attempts")) + 1
    # A replayed record keeps its first origin: that is where the event was produced.
    keep_origin = HEADER_PREFIX + "origin.topic" in previous
    headers = [(k, v) for k, v in (origin.headers or []) if not k.startswith(HEADER_PREFIX)]
    context: dict[str, str | bytes | None] = {
        "origin.topic": previous.get(HEADER_PREFIX + "origin.topic") if keep_origin else origin.topic,
        "origin.partition": previous.get(HEADER_PREFIX + "origin.partition")
        if keep_origin
        else str(origin.partition),
        "origin.offset": previous.get(HEADER_PREFIX + "origin.offset") if keep_origin else str(origin.offset),
        "origin.timestamp": previous.get(HEADER_PREFIX + "origin.timestamp")
        if keep_origin
        else (str(origin.timestamp_ms) if origin.timestamp_ms is not None else None),
        "consumer.group": group_id,
        "stage": str(failure.stage),
        "reason": failure.reason,
        "error.class": str(failure.error_class),
        "error.message": failure.message[:1000],
        "graph.code": None if failure.graph_code is None else str(failure.graph_code),
        "graph.subcode": None if failure.graph_subcode is None else str(failure.graph_subcode),
        "graph.fbtrace_id": failure.fbtrace_id,
        "attempts": str(attempts),
        "delivery.requests": str(requests) if requests else None,
        "first.failure.time": first_failure,
        "failure.time": str(now_ms),
    }
    for name, value in context.items():
        if value is not None:
            headers.append((HEADER_PREFIX + name, value if isinstance(value, bytes) else value.encode()))
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


class DeadLetterWriter:
    """Produces dead-letter copies and calls back once Kafka acknowledged (or finally refused) each."""

    def __init__(
        self,
        producer_config: Mapping[str, Any],
        *,
        group_id: str,
        topic_for: Callable[[str], str],
        write_timeout_s: float = 30.0,
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
        self.pending = 0

    def send(
        self,
        origin: Origin,
        failure: Failure,
        *,
        requests: int,
        dlq_for: str | None = None,
        on_done: Callable[[KafkaError | None], None],
    ) -> str:
        """Queue the dead-letter copy to the DLQ of `dlq_for` (default: the record's own topic);
        `on_done(None)` once Kafka acknowledged it, `on_done(error)` if it was refused."""
        topic = self._topic_for(dlq_for or origin.topic)
        headers = dlq_headers(
            origin, failure, group_id=self._group, requests=requests, now_ms=self._clock_ms()
        )

        def report(err: KafkaError | None, msg: Message) -> None:
            self.pending -= 1
            on_done(err)

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
        self.pending += 1
        return topic

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
