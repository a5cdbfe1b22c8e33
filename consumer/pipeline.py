"""The run loop: source -> decode -> map/normalize/validate -> batch -> deliver -> settle.

One asyncio loop in one thread owns the Kafka consumer (so rebalance callbacks never race the
pipeline's state), polls it without blocking, and runs deliveries as tasks. Every consumed record gets a
`Ticket` and ends settled exactly once: accepted by Meta, dead-lettered (acknowledged by Kafka), or
filtered on purpose. Backpressure pauses all partitions while too many records are in flight; a
destination that is retrying or parked has the partitions of its topics paused while the others flow.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message

from consumer.batch import Batch, Batcher, Origin, PendingEvent
from consumer.decode import Decoder
from consumer.deliver import Accepted, Deliverer, DeliveryHooks, Destination, GraphClient, RetryPolicy
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
_MATCH_KEY_SET = frozenset(MATCH_KEYS)


class FatalPipelineError(RuntimeError):
    """The pipeline must stop without committing past the failure (consumer-semantics.md rule 9)."""


@dataclass
class PipelineStats:
    """Counts for summaries (`make demo`, replay); the metrics carry the same numbers for Prometheus."""

    consumed: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    """Failures settled without a dead-letter copy (replay: events past Meta's window)."""

    @property
    def settled(self) -> int:
        return (
            sum(self.accepted.values())
            + sum(self.filtered.values())
            + self.failed
            + sum(self.skipped.values())
        )

    @property
    def failed(self) -> int:
        return sum(self.dead_lettered.values())


@dataclass(frozen=True)
class DeadLetterGuard:
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

    def add(self, now: float, failed: bool) -> None:
        second = int(now)
        buckets = self._buckets
        if buckets and buckets[-1][0] == second:
            bucket = buckets[-1]
        else:
            bucket = [second, 0, 0]
            buckets.append(bucket)
            self._expire(now)
        bucket[1] += 1
        bucket[2] += failed
        self._settled += 1
        self._failed += failed

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
    destination_topics: dict[str, set[str]]
    """Destination name -> the source topics that feed it (paused together when it is blocked)."""
    client: GraphClient
    metrics: Metrics
    max_in_flight_events: int
    max_in_flight_bytes: int
    drain_deadline_s: float
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    guard: DeadLetterGuard | None = field(default_factory=DeadLetterGuard)
    wall_clock: Callable[[], float] = time.time
    route: Callable[[Origin], str] | None = None
    """The configured topic whose schema and mapping apply to a record (replay: its origin topic)."""
    skip_reasons: frozenset[str] = frozenset()
    """Failure reasons settled without a dead-letter copy (replay: expired events)."""
    finished: Callable[[Pipeline], bool] | None = None
    """Stop on its own once this returns True (replay: the end of the dead-letter topic)."""
    skip: Callable[[Origin], str | None] | None = None
    """A reason to settle a record unprocessed, or None (replay: outside --since/--until/--reason)."""


class Pipeline(DeliveryHooks):
    def __init__(self, parts: PipelineParts) -> None:
        self.p = parts
        self.stats = PipelineStats()
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        self._deliverer = Deliverer(
            parts.client, policy=parts.retry_policy, wall_clock=parts.wall_clock, hooks=self
        )
        self._retrying: Counter[str] = Counter()
        self._parked: Counter[str] = Counter()
        self._recent = SettleWindow(parts.guard.window_s if parts.guard is not None else 60.0)
        self._overloaded = False
        self._lag_series: set[tuple[str, int]] = set()
        self._mapped_counters: dict[str, Any] = {}
        self.loop_turned_at = 0.0
        """Monotonic time of the last loop turn (/healthz)."""
        self.running = False

    @property
    def parked(self) -> list[str]:
        """Destinations whose token, permissions, pixel or API version Meta refuses right now."""
        return sorted(name for name, n in self._parked.items() if n > 0)

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz: the loop runs, partitions are assigned, nothing is parked."""
        if not self.running:
            return False, "not running"
        if not self.p.source.assigned:
            return False, "no partitions assigned"
        if self.parked:
            return False, "destination parked: " + ", ".join(self.parked)
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
                # Paused partitions return nothing, but polling keeps the group membership alive.
                records = p.source.consume(MAX_RECORDS_PER_POLL)
                if records:
                    self._count_consumed(records)
                for msg in records:
                    self._handle(msg)
                for batch in p.batcher.due():
                    self._launch(batch)
                p.dlq.poll()
                p.source.store_settled()
                self._apply_pauses()
                if now - last_lag >= LAG_INTERVAL_S:
                    last_lag = now
                    self._export_lag()
                if p.finished is not None and p.finished(self):
                    break
                await asyncio.sleep(0 if records else IDLE_SLEEP_S)
        finally:
            self.running = False
            await self._shutdown()
        if self._fatal is not None:
            raise FatalPipelineError(str(self._fatal)) from self._fatal

    def _count_consumed(self, records: Sequence[Message]) -> None:
        # One increment per topic and poll: prometheus-client costs about a microsecond per call.
        counts = Counter(msg.topic() for msg in records)
        for topic, n in counts.items():
            self.p.metrics.records_consumed.labels(topic).inc(n)

    def _handle(self, msg: Message) -> None:
        p = self.p
        origin = Origin.from_message(msg)
        value = origin.value
        ticket = p.ledger.track((origin.topic, origin.partition), origin.offset, len(value) if value else 0)
        self.stats.consumed += 1
        skip_reason = p.skip(origin) if p.skip is not None else None
        if skip_reason is not None:
            self.stats.filtered[skip_reason] += 1
            self._settle(ticket, failed=False)
            return
        topic = p.route(origin) if p.route is not None else origin.topic
        try:
            record = p.decoder.decode(topic, value)
        except PipelineError as exc:
            p.metrics.decode_failures.labels(exc.failure.reason).inc()
            if exc.failure.error_class is ErrorClass.TRANSIENT:
                # The registry is down: stop rather than dead-letter everything (rule 9).
                self._fatal = exc
                return
            self._fail(origin, exc.failure, ticket, requests=0)
            return
        self._route(topic, record, origin, ticket)

    def _route(self, topic: str, record: dict[str, Any], origin: Origin, ticket: Ticket) -> None:
        p = self.p
        result = p.mapper.map(topic, record)
        if isinstance(result, Filtered):
            p.metrics.events_filtered.labels(result.reason).inc()
            self.stats.filtered[result.reason] += 1
            self._settle(ticket, failed=False)
            return
        if isinstance(result, Rejected):
            stage = Stage(result.stage)
            p.metrics.events_rejected.labels(str(stage), result.reason).inc()
            self._fail(
                origin, Failure(stage, result.reason, ErrorClass.PERMANENT, result.detail), ticket, requests=0
            )
            return
        for omission in result.omitted:
            p.metrics.identifiers_omitted.labels(omission.field, omission.reason).inc()
        event: dict[str, Any] = result.event
        event_name: str = event["event_name"]
        mapped = self._mapped_counters.get(event_name)
        if mapped is None:
            mapped = self._mapped_counters[event_name] = p.metrics.events_mapped.labels(event_name)
        mapped.inc()
        pending = PendingEvent(
            body=orjson.dumps(event),
            event_name=event_name,
            event_time=int(event["event_time"]),
            action_source=str(event.get("action_source", "")),
            ticket=ticket,
            origin=origin,
            record_timestamp_ms=origin.timestamp_ms,
            user_data_keys=tuple(event["user_data"]),
        )
        for batch in p.batcher.add(result.destination, pending):
            self._launch(batch)

    def _settle(self, ticket: Ticket, *, failed: bool) -> None:
        self.p.ledger.settle(ticket)
        self._recent.add(time.monotonic(), failed)

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
        outcomes = await self._deliverer.deliver(destination, batch.events)
        accepted_at = p.wall_clock()
        names: Counter[str] = Counter()
        keys: Counter[str] = Counter()
        latency = p.metrics.end_to_end_latency
        for event, failure in outcomes:
            if failure is None:
                names[event.event_name] += 1
                keys.update(event.user_data_keys)
                if event.record_timestamp_ms is not None:
                    latency.observe(max(0.0, accepted_at - event.record_timestamp_ms / 1000))
                self._settle(event.ticket, failed=False)
            else:
                self._fail(event.origin, failure, event.ticket, requests=event.attempts)
        # Counters once per batch and label set rather than per event.
        for name, n in names.items():
            p.metrics.events_accepted.labels(destination.pixel_id, name).inc(n)
        self.stats.accepted.update(names)
        for key, n in keys.items():
            if key in _MATCH_KEY_SET:
                p.metrics.match_keys.labels(destination.pixel_id, key).inc(n)

    # DeliveryHooks
    def on_send(self, destination: Destination, events: Sequence[PendingEvent]) -> None:
        m = self.p.metrics
        now = self.p.wall_clock()
        names: Counter[str] = Counter()
        age = m.event_age_at_send
        for event in events:
            names[event.event_name] += 1
            age.observe(max(0.0, now - event.event_time))
        for name, n in names.items():
            m.events_sent.labels(destination.pixel_id, name).inc(n)

    def on_response(
        self, destination: Destination, events: int, result: Accepted | GraphError, seconds: float
    ) -> None:
        m = self.p.metrics
        outcome = "accepted" if isinstance(result, Accepted) else str(result.error_class)
        m.request_duration.labels(destination.pixel_id, outcome).observe(seconds)
        if isinstance(result, GraphError) and result.code is not None:
            m.graph_errors.labels(str(result.code), str(result.subcode or "")).inc()

    def enter_backoff(self, destination: Destination, error: GraphError, delay_s: float) -> None:
        self.p.metrics.retries.labels(destination.pixel_id, str(error.error_class)).inc()
        if error.error_class is ErrorClass.DESTINATION:
            if self._parked[destination.name] == 0:
                log.error(
                    "destination parked",
                    extra={
                        "destination": destination.name,
                        "pixel_id": destination.pixel_id,
                        "graph_code": error.code,
                        "graph_subcode": error.subcode,
                    },
                )
            self._parked[destination.name] += 1
        else:
            self._retrying[destination.name] += 1
        self._export_parked()
        self._apply_pauses()

    def leave_backoff(self, destination: Destination, error: GraphError) -> None:
        counter = self._parked if error.error_class is ErrorClass.DESTINATION else self._retrying
        counter[destination.name] -= 1
        self._export_parked()
        # Resuming waits for the next loop turn; a parked destination resumes only after it answers again.

    def _export_parked(self) -> None:
        self.p.metrics.destinations_parked.set(len(self.parked))

    # -- failures
    def _fail(self, origin: Origin, failure: Failure, ticket: Ticket, *, requests: int) -> None:
        """A record that cannot be delivered: skip it (replay's expired events) or dead-letter it."""
        p = self.p
        if failure.reason in p.skip_reasons:
            self.stats.skipped[failure.reason] += 1
            self._settle(ticket, failed=False)
            return
        guard = p.guard
        if guard is not None and self._guard_tripped(guard):
            if self._fatal is None:
                self._fatal = FatalPipelineError(
                    f"dead-letter rate above {guard.max_ratio:.0%} of the last {guard.window_s:.0f}s: "
                    f"stopping instead of dead-lettering {origin.topic}[{origin.partition}]@{origin.offset} "
                    f"({failure.stage}/{failure.reason})"
                )
            return
        self._dead_letter(origin, failure, ticket, requests=requests)

    def _guard_tripped(self, guard: DeadLetterGuard) -> bool:
        total, failed = self._recent.counts(time.monotonic())
        total += 1
        return total >= guard.min_events and (failed + 1) / total > guard.max_ratio

    def _dead_letter(self, origin: Origin, failure: Failure, ticket: Ticket, *, requests: int) -> None:
        p = self.p

        def done(err: KafkaError | None) -> None:
            if err is None:
                p.metrics.dead_lettered.labels(topic, str(failure.stage), failure.reason).inc()
                self.stats.dead_lettered[failure.reason] += 1
                self._settle(ticket, failed=True)
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
            if self._fatal is None:
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
        routed = p.route(origin) if p.route is not None else origin.topic
        topic = p.dlq.send(origin, failure, requests=requests, dlq_for=routed, on_done=done)

    # -- backpressure, lag
    def _apply_pauses(self) -> None:
        p = self.p
        events, size = p.ledger.events_in_flight, p.ledger.bytes_in_flight
        p.metrics.in_flight_events.set(events)
        p.metrics.in_flight_bytes.set(size)
        source = p.source
        if events >= p.max_in_flight_events or size >= p.max_in_flight_bytes:
            overloaded = True
        elif events < p.max_in_flight_events // 2 and size < p.max_in_flight_bytes // 2:
            overloaded = False
        else:
            overloaded = self._overloaded  # hysteresis: keep the current state between the marks
        self._overloaded = overloaded
        blocked = {d for d, n in (self._retrying + self._parked).items() if n > 0}
        topics = set().union(*(p.destination_topics.get(d, set()) for d in blocked)) if blocked else set()
        source.apply_pauses(all_topics=overloaded, topics=topics)
        p.metrics.partitions_paused.set(len(source.paused_partitions))

    def _export_lag(self) -> None:
        lags = self.p.source.lag()
        gauge = self.p.metrics.consumer_lag
        # A partition that moved to another member must stop reporting its frozen lag here.
        for topic, partition in self._lag_series - set(lags):
            gauge.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            gauge.labels(topic, str(partition)).set(lag)
        self._lag_series = set(lags)

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
