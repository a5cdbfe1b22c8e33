"""The run loop: source -> decode -> map/normalize/validate -> batch -> deliver -> settle.

One asyncio loop in one thread owns the Kafka consumer (so rebalance callbacks never race the
pipeline's state), polls it without blocking, and runs deliveries as tasks. Every consumed record gets a
`Ticket` and ends settled exactly once: accepted by Meta, dead-lettered (acknowledged by Kafka), or
filtered on purpose. Backpressure pauses all partitions while too many records are in flight.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message

from consumer.batch import Batch, Batcher, Origin, PendingEvent
from consumer.decode import Decoder
from consumer.deliver import Accepted, Deliverer, Destination, GraphClient, RetryPolicy
from consumer.dlq import DeadLetterWriter
from consumer.errors import ErrorClass, Failure, GraphError, PipelineError, Stage
from consumer.mapping import Filtered, Mapper, Rejected
from consumer.metrics import MATCH_KEYS, Metrics
from consumer.offsets import OffsetLedger, Ticket
from consumer.source import KafkaSource

log = logging.getLogger(__name__)

MAX_RECORDS_PER_POLL = 1000
IDLE_SLEEP_S = 0.01
LAG_INTERVAL_S = 2.0


class FatalPipelineError(RuntimeError):
    """The pipeline must stop without committing past the failure (consumer-semantics.md rule 9)."""


@dataclass
class PipelineStats:
    """Counts for summaries (`make demo`, replay); the metrics carry the same numbers for Prometheus."""

    consumed: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)

    @property
    def settled(self) -> int:
        return sum(self.accepted.values()) + sum(self.filtered.values()) + sum(self.dead_lettered.values())


@dataclass
class PipelineParts:
    """Everything the loop needs, built from the configuration by `consumer.app.build_pipeline`."""

    source: KafkaSource
    ledger: OffsetLedger
    decoder: Decoder
    mapper: Mapper
    batcher: Batcher
    dlq: DeadLetterWriter
    destinations: dict[str, Destination]
    client: GraphClient
    metrics: Metrics
    max_in_flight_events: int
    max_in_flight_bytes: int
    drain_deadline_s: float
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    wall_clock: Callable[[], float] = time.time


class Pipeline:
    def __init__(self, parts: PipelineParts) -> None:
        self.p = parts
        self.stats = PipelineStats()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        self._deliverer = Deliverer(
            parts.client,
            policy=parts.retry_policy,
            wall_clock=parts.wall_clock,
            on_retry=self._on_retry,
            on_response=self._on_response,
        )
        self.loop_turned_at = 0.0
        """Monotonic time of the last loop turn (/healthz)."""
        self.running = False

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz: the loop runs and partitions are assigned."""
        if not self.running:
            return False, "not running"
        if not self.p.source.assigned:
            return False, "no partitions assigned"
        return True, "ok"

    # -- the loop
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set, then drain within the deadline and commit. Raises
        FatalPipelineError when it had to stop early (offsets stay at the last settled record)."""
        p = self.p
        p.source.subscribe()
        self.running = True
        last_lag = 0.0
        try:
            while not stop.is_set():
                if self._fatal is not None:
                    raise FatalPipelineError(str(self._fatal)) from self._fatal
                if p.source.fatal_error is not None:
                    raise FatalPipelineError(f"fatal Kafka error: {p.source.fatal_error.str()}")
                now = time.monotonic()
                self.loop_turned_at = now
                p.metrics.last_loop.set(time.time())
                records = p.source.consume(MAX_RECORDS_PER_POLL) if not p.source.paused else []
                if p.source.paused:
                    # Keep serving the group protocol and callbacks while paused.
                    p.source.consume(1)
                for msg in records:
                    self._handle(msg)
                for batch in p.batcher.due():
                    self._launch(batch)
                p.dlq.poll()
                p.source.store_settled()
                self._apply_backpressure()
                if now - last_lag >= LAG_INTERVAL_S:
                    last_lag = now
                    self._export_lag()
                await asyncio.sleep(0 if records else IDLE_SLEEP_S)
        finally:
            self.running = False
            await self._shutdown()

    def _handle(self, msg: Message) -> None:
        p = self.p
        origin = Origin.from_message(msg)
        topic, value = origin.topic, origin.value
        ticket = p.ledger.track((topic, origin.partition), origin.offset, len(value) if value else 0)
        self.stats.consumed += 1
        p.metrics.records_consumed.labels(topic).inc()
        try:
            record = p.decoder.decode(topic, value)
        except PipelineError as exc:
            p.metrics.decode_failures.labels(exc.failure.reason).inc()
            if exc.failure.error_class is ErrorClass.TRANSIENT:
                # The registry is down: stop rather than dead-letter everything (rule 9).
                self._fatal = exc
                return
            self._dead_letter(origin, exc.failure, ticket, attempts=0)
            return
        self._route(topic, record, origin, ticket)

    def _route(self, topic: str, record: dict[str, Any], origin: Origin, ticket: Ticket) -> None:
        p = self.p
        result = p.mapper.map(topic, record)
        if isinstance(result, Filtered):
            p.metrics.events_filtered.labels(result.reason).inc()
            self.stats.filtered[result.reason] += 1
            p.ledger.settle(ticket)
            return
        if isinstance(result, Rejected):
            stage = Stage(result.stage)
            p.metrics.events_rejected.labels(str(stage), result.reason).inc()
            failure = Failure(stage, result.reason, ErrorClass.PERMANENT, result.detail)
            self._dead_letter(origin, failure, ticket, attempts=0)
            return
        for omission in result.omitted:
            p.metrics.identifiers_omitted.labels(omission.field, omission.reason).inc()
        event: dict[str, Any] = result.event
        p.metrics.events_mapped.labels(event["event_name"]).inc()
        pending = PendingEvent(
            body=orjson.dumps(event),
            event_name=event["event_name"],
            event_time=int(event["event_time"]),
            action_source=str(event.get("action_source", "")),
            ticket=ticket,
            origin=origin,
            record_timestamp_ms=origin.timestamp_ms,
            meta={"keys": tuple(k for k in MATCH_KEYS if k in event.get("user_data", {}))},
        )
        for batch in p.batcher.add(result.destination, pending):
            self._launch(batch)

    # -- delivery
    def _launch(self, batch: Batch) -> None:
        task = asyncio.create_task(self._deliver(batch))
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._fatal = task.exception()

    async def _deliver(self, batch: Batch) -> None:
        p = self.p
        destination = p.destinations[batch.destination]
        p.metrics.batch_size.observe(len(batch.events))
        sent_at = p.wall_clock()
        for event in batch.events:
            p.metrics.event_age_at_send.observe(max(0.0, sent_at - event.event_time))
        outcomes = await self._deliverer.deliver(destination, batch.events)
        accepted_at = p.wall_clock()
        for event, failure in outcomes:
            if failure is None:
                p.metrics.events_accepted.labels(destination.pixel_id, event.event_name).inc()
                for key in event.meta.get("keys", ()):
                    p.metrics.match_keys.labels(destination.pixel_id, key).inc()
                if event.record_timestamp_ms is not None:
                    p.metrics.end_to_end_latency.observe(
                        max(0.0, accepted_at - event.record_timestamp_ms / 1000)
                    )
                self.stats.accepted[event.event_name] += 1
                p.ledger.settle(event.ticket)
            else:
                self._dead_letter(event.origin, failure, event.ticket, attempts=event.attempts)

    def _on_retry(self, destination: Destination, error: GraphError, delay: float) -> None:
        self.p.metrics.retries.labels(destination.pixel_id, str(error.error_class)).inc()

    def _on_response(
        self, destination: Destination, events: int, result: Accepted | GraphError, seconds: float
    ) -> None:
        m = self.p.metrics
        outcome = "accepted" if isinstance(result, Accepted) else str(result.error_class)
        m.request_duration.labels(destination.pixel_id, outcome).observe(seconds)
        if isinstance(result, GraphError) and result.code is not None:
            m.graph_errors.labels(str(result.code), str(result.subcode or "")).inc()

    # -- dead letters
    def _dead_letter(self, origin: Origin, failure: Failure, ticket: Ticket, *, attempts: int) -> None:
        p = self.p

        def done(err: KafkaError | None) -> None:
            if err is None:
                p.metrics.dead_lettered.labels(topic, str(failure.stage), failure.reason).inc()
                self.stats.dead_lettered[failure.reason] += 1
                p.ledger.settle(ticket)
                return
            p.metrics.dead_letter_failures.labels(topic).inc()
            log.error(
                "dead-letter write failed; stopping without committing past the record",
                extra={
                    "dlq_topic": topic,
                    "error": err.str(),
                    "origin_topic": origin.topic,
                    "partition": origin.partition,
                    "offset": origin.offset,
                },
            )
            self._fatal = FatalPipelineError(
                f"dead-letter write to {topic} failed: {err.str()} "
                f"(record {origin.topic}[{origin.partition}]@{origin.offset} not settled)"
            )

        log.info(
            "dead-lettering record",
            extra={
                "origin_topic": origin.topic,
                "partition": origin.partition,
                "offset": origin.offset,
                "stage": str(failure.stage),
                "reason": failure.reason,
            },
        )
        topic = p.dlq.send(origin, failure, attempts=attempts, on_done=done)

    # -- backpressure, lag
    def _apply_backpressure(self) -> None:
        p = self.p
        events, size = p.ledger.events_in_flight, p.ledger.bytes_in_flight
        p.metrics.in_flight_events.set(events)
        p.metrics.in_flight_bytes.set(size)
        if not p.source.paused and (events >= p.max_in_flight_events or size >= p.max_in_flight_bytes):
            p.source.set_paused(True)
        elif p.source.paused and events < p.max_in_flight_events // 2 and size < p.max_in_flight_bytes // 2:
            p.source.set_paused(False)
        p.metrics.partitions_paused.set(len(p.source.assigned) if p.source.paused else 0)

    def _export_lag(self) -> None:
        for (topic, partition), lag in self.p.source.lag().items():
            self.p.metrics.consumer_lag.labels(topic, str(partition)).set(lag)

    # -- shutdown
    async def _shutdown(self) -> None:
        p = self.p
        deadline = time.monotonic() + p.drain_deadline_s
        if self._fatal is None:
            for batch in p.batcher.drain():
                self._launch(batch)
            if self._tasks:
                await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - time.monotonic()))
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        left = p.dlq.flush(max(0.5, deadline - time.monotonic()))
        if left:
            log.error("dead-letter copies unacknowledged at shutdown", extra={"count": left})
        p.dlq.close()
        p.source.store_settled()
        try:
            committed = p.source.commit_final()
            log.info("committed on shutdown", extra={"partitions": len(committed)})
        except Exception as exc:
            log.error("final commit failed", extra={"error": str(exc)})
        p.source.close()
