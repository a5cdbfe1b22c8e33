"""The run loop: source -> decode -> map/normalize/validate -> batch -> deliver -> settle.

One asyncio loop in one thread owns the source (so rebalance callbacks never race the pipeline's
state), polls it without blocking, and runs deliveries as tasks. Every consumed record gets a `Ticket`
and ends settled exactly once: accepted by Meta, dead-lettered (acknowledged by Kafka), or filtered on
purpose. Backpressure pauses all partitions while too many records are in flight; a destination that
is retrying or parked (`consumer.deliver.DeliveryState`) has the partitions of its topics paused while
the others flow. How records are routed, skipped and finished is the `Policy` (live or replay).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson

from consumer.batch import (
    EVENT_NAME,
    RECORD_TIMESTAMP_MS,
    TICKET,
    USER_DATA_KEYS,
    Batch,
    Batcher,
    PendingEvent,
)
from consumer.clock import SYSTEM_CLOCK, Clock
from consumer.config import TENANT_PREFIX
from consumer.decode import Decoder, RegistryUnavailable
from consumer.deliver import Deliverer, Destination
from consumer.dlq import DeadLetterGuard, DeadLetters
from consumer.errors import TENANT_PARKED, ErrorClass, Failure, Stage
from consumer.mapping import Filtered, Mapped, Mapper, Rejected
from consumer.metrics import MATCH_KEYS, Metrics
from consumer.offsets import OffsetLedger, Ticket, TopicPartitionKey
from consumer.park import ParkingLot, TenantBook
from consumer.process import process_record, rejection_failure
from consumer.replay import LIVE, Policy
from consumer.route import Router, Unroutable
from consumer.source import Origin, Source

log = logging.getLogger(__name__)

MAX_RECORDS_PER_POLL = 1000
IDLE_SLEEP_S = 0.01
REVOKE_POLL_S = 0.01
_T = TypeVar("_T")
REGISTRY_RETRY_S = 0.5
SCHEMA_WAIT_UNPAUSED_S = 2.0
"""How long records wait for a writer schema with the loop not polling; after that every partition is
paused and the loop polls again (group membership, rebalances) until the registry answers."""
REGISTRY_RETRY_MAX_S = 15.0
REGISTRY_WARN_EVERY_S = 30.0
LAG_INTERVAL_S = 2.0
_MATCH_KEY_SET = frozenset(MATCH_KEYS)


class FatalPipelineError(RuntimeError):
    """The pipeline must stop without committing past the failure
    (../shared/docs/consumer-semantics.md, rule 9)."""


@dataclass
class PipelineStats:
    """Counts for summaries (`make demo`, replay); the metrics carry the same numbers for Prometheus."""

    consumed: int = 0
    accepted: Counter[str] = field(default_factory=Counter)
    filtered: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    """Failures settled without a dead-letter copy (replay: events past Meta's window)."""
    parked: int = 0
    """Platform mode: records copied to a parked topic (settled there)."""

    @property
    def settled(self) -> int:
        return (
            sum(self.accepted.values())
            + sum(self.filtered.values())
            + self.failed
            + sum(self.skipped.values())
            + self.parked
        )

    @property
    def failed(self) -> int:
        return sum(self.dead_lettered.values())


@dataclass
class Parking:
    """Platform mode's parking: who is parked, where their events wait, how often to read them."""

    lot: ParkingLot
    book: TenantBook
    writer: DeadLetters
    """Writes parked copies (to the parked topic of `dlq_for`)."""
    topics: frozenset[str]
    """The parked topics (read in passes)."""
    pass_interval_s: float = 60.0


@dataclass
class _Pass:
    started: float
    ends: dict[TopicPartitionKey, int]


@dataclass
class PipelineParts:
    """Everything the loop needs, built from the configuration by `consumer.app.build_pipeline`."""

    source: Source
    ledger: OffsetLedger
    decoder: Decoder
    mapper: Mapper
    batcher: Batcher
    dlq: DeadLetters
    deliverer: Deliverer
    router: Router
    destination_topics: dict[str, set[str]]
    """Destination name -> the source topics that feed it (paused together when it is blocked)."""
    metrics: Metrics
    max_in_flight_events: int
    max_in_flight_bytes: int
    drain_deadline_s: float
    guard: DeadLetterGuard | None = None
    """None: dead-letter whatever fails (also when the policy turns the guard off)."""
    policy: Policy = LIVE
    clock: Clock = SYSTEM_CLOCK
    parking: Parking | None = None
    on_turn: Callable[[float], None] | None = None
    """Called every loop turn with the monotonic time (platform mode: refresh the tenant registry)."""


class Pipeline:
    def __init__(self, parts: PipelineParts) -> None:
        self.p = parts
        self.stats = PipelineStats()
        self._guard = parts.guard if parts.policy.guard_dead_letters else None
        self._tasks: set[asyncio.Task[None]] = set()
        self._fatal: BaseException | None = None
        self._mapped: Counter[str] = Counter()
        """Events mapped in this poll, by event name (counted into the metric once per poll)."""
        self._overloaded = False
        self._held: list[tuple[Origin, object]] = []
        """Records waiting for their writer schema (with their partition's ledger when held)."""
        self._held_since = 0.0
        """Monotonic time the first of the held records was held."""
        self._schema_task: asyncio.Task[None] | None = None
        self.registry_problem: str | None = None
        """Set while the schema registry cannot be reached for a schema the held records need."""
        self._lag_series: set[tuple[str, int]] = set()
        self._pass: _Pass | None = None
        self._last_pass_end = float("-inf")
        self._pass_wanted = False
        self.loop_turned_at = 0.0
        """Monotonic time of the last loop turn (/healthz)."""
        self.turns = 0
        """Loop turns so far."""
        self.running = False

    @property
    def parked(self) -> list[str]:
        """Destinations whose token, permissions, pixel or API version Meta refuses right now."""
        return self.p.deliverer.state.parked_names()

    @property
    def idle(self) -> bool:
        """Nothing consumed is unsettled, waiting in an open batch or waiting for its schema."""
        return self.p.ledger.events_in_flight == 0 and self.p.batcher.open_events == 0 and not self._held

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) for /readyz: the loop runs, partitions are assigned, nothing is parked."""
        if not self.running:
            return False, "not running"
        if not self.p.source.assigned:
            return False, "no partitions assigned"
        if self.registry_problem is not None:
            return False, self.registry_problem
        if self.parked:
            return False, "destination parked: " + ", ".join(self.parked)
        return True, "ok"

    def tenant_status(self) -> dict[str, Any]:
        """Platform mode: every tenant's state as this member sees it (`/tenants`)."""
        p = self.p
        registry = p.router.registry
        if registry is None:
            return {"tenants": [], "counts": {}}
        lot = p.parking.lot if p.parking is not None else None
        book = p.parking.book if p.parking is not None else None
        rows: list[dict[str, Any]] = []
        for tenant_id in registry.tenant_ids():
            resolved = registry.resolve(tenant_id)
            state: str = resolved.state
            row: dict[str, Any] = {"tenant": tenant_id, "state": state}
            if resolved.entry is not None:
                row["pixel_id"] = resolved.entry.pixel_id
            if resolved.problem is not None:
                row["problem"] = resolved.problem
            if lot is not None and tenant_id in lot.parked:
                row["state"] = "parked"
                row["parked_for_s"] = round(p.clock.monotonic() - lot.parked[tenant_id].since, 1)
            activity = book.activity.get(tenant_id) if book is not None else None
            if activity is not None:
                row["last_success"] = activity.last_success
                row["last_error"] = activity.last_error
                row["events_waiting"] = activity.waiting
                row["connection"] = activity.connection
                row["connection_checked_at"] = activity.connection_checked_at
            rows.append(row)
        if book is not None:
            rows += [{"tenant": t, "state": "unknown", "last_seen": seen} for t, seen in book.unknown.items()]
        return {"tenants": rows, "counts": dict(Counter(r["state"] for r in rows))}

    def release(self, tenant_id: str) -> None:
        """A connection test passed: a parked tenant's events may go (the next pass reads them)."""
        if self.p.parking is not None and self.p.parking.lot.release(tenant_id):
            log.warning("tenant released: its connection test passed", extra={"tenant": tenant_id})
            self._pass_wanted = True

    def export_tenants(self) -> None:
        """Tenants by state into `capi_tenants` (no per-tenant series)."""
        counts = self.tenant_status()["counts"]
        gauge = self.p.metrics.tenants
        for state in ("ok", "parked", "disabled", "invalid", "unknown"):
            gauge.labels(state).set(counts.get(state, 0))
        if self.p.parking is not None:
            self.p.metrics.parked_oldest_event_age.set(
                self.p.parking.lot.oldest_event_age(self.p.clock.wall())
            )
            if self.p.router.registry is not None:
                self.p.parking.book.keep_only(self.p.router.registry.tenant_ids())

    # -- the loop
    async def run(self, stop: asyncio.Event) -> None:
        """Consume until `stop` is set (or the policy says it is finished), then drain within the
        deadline and commit. Raises FatalPipelineError when it had to stop early (offsets stay at
        the last settled record)."""
        p = self.p
        clock = p.clock
        p.source.before_revoke = self._drain_revoked
        if p.decoder.uses_registry:
            self._schema_task = asyncio.create_task(self._reach_registry())
        p.source.subscribe()
        self.running = True
        last_lag = 0.0
        try:
            while not stop.is_set():
                self._raise_if_fatal()
                now = clock.monotonic()
                self.loop_turned_at = now
                self.turns += 1
                p.metrics.last_loop.set(clock.wall())
                if self._held and not self._schema_wait_is_long(now):
                    # A short wait for a writer schema: records stay in librdkafka's queue rather than
                    # being polled (pausing would drop its prefetched records and cost a second of
                    # fetching again once resumed).
                    records = []
                else:
                    # Paused partitions return nothing, but polling keeps the group membership alive.
                    records = await p.source.poll(MAX_RECORDS_PER_POLL)
                if records:
                    self._count_consumed(records)
                self._pace(len(records))
                if self._held or self._schemas_missing(records):
                    records = self._hold_for_schemas(records)
                for origin in records:
                    self._handle(origin)
                if self._mapped:
                    self._count_mapped()
                for batch in p.batcher.due():
                    self._launch(batch)
                if self._overloaded and p.batcher.open_events:
                    # Paused for backpressure: no event joins an open batch until some leave, so
                    # lingering further only stalls the loop (with many tenants' batches open, their
                    # events alone can fill the in-flight limit).
                    for batch in p.batcher.drain():
                        self._launch(batch)
                if p.on_turn is not None:
                    p.on_turn(now)
                if p.parking is not None:
                    p.parking.writer.poll()
                    self._run_passes(now)
                p.dlq.poll()
                p.source.store_settled()
                self._apply_pauses()
                if now - last_lag >= LAG_INTERVAL_S:
                    last_lag = now
                    self._export_lag()
                if p.policy.finished(p.source, self.idle):
                    break
                await asyncio.sleep(0 if records else IDLE_SLEEP_S)
        finally:
            self.running = False
            await self._shutdown()
        if self._fatal is not None:
            raise FatalPipelineError(str(self._fatal)) from self._fatal

    def _raise_if_fatal(self) -> None:
        if self._fatal is not None:
            raise FatalPipelineError(str(self._fatal)) from self._fatal
        if self.p.source.fatal_error is not None:
            raise FatalPipelineError(self.p.source.fatal_error)

    def _count_consumed(self, records: Sequence[Origin]) -> None:
        # One increment per topic and poll: prometheus-client costs about a microsecond per call.
        counts = Counter(origin.topic for origin in records)
        for topic, n in counts.items():
            m = self.p.metrics
            m.child(m.records_consumed, topic).inc(n)

    def _count_mapped(self) -> None:
        # Once per poll and event name, like _count_consumed.
        m = self.p.metrics
        for event_name, n in self._mapped.items():
            m.child(m.events_mapped, event_name).inc(n)
        self._mapped.clear()

    def _handle(self, origin: Origin) -> None:
        p = self.p
        value = origin.value
        ticket = p.ledger.track((origin.topic, origin.partition), origin.offset, len(value) if value else 0)
        self.stats.consumed += 1
        skip_reason = p.policy.skip(origin)
        if skip_reason is not None:
            self.stats.filtered[skip_reason] += 1
            self._settle(ticket, failed=False)
            return
        result = process_record(p.decoder, p.mapper, p.policy.route(origin), value)
        if isinstance(result, Mapped):
            if p.parking is not None and origin.topic in p.parking.topics:
                tenant = _tenant_of(result.destination)
                if tenant is not None:
                    p.parking.book.read_back(tenant)
            self._enqueue(result, origin, ticket)
        elif isinstance(result, Filtered):
            p.metrics.events_filtered.labels(result.reason).inc()
            self.stats.filtered[result.reason] += 1
            self._settle(ticket, failed=False)
        elif isinstance(result, Rejected):
            p.metrics.events_rejected.labels(result.stage, result.reason).inc()
            self._fail(origin, rejection_failure(result), ticket, requests=0)
        else:
            p.metrics.decode_failures.labels(result.failure.reason).inc()
            if result.failure.error_class is ErrorClass.TRANSIENT:
                # The registry is down: stop rather than dead-letter everything (rule 9).
                failure = result.failure
                self._fatal = FatalPipelineError(f"{failure.stage}/{failure.reason}: {failure.message}")
                return
            self._fail(origin, result.failure, ticket, requests=0)

    def _enqueue(self, result: Mapped, origin: Origin, ticket: Ticket) -> None:
        p = self.p
        route = p.router.resolve(result.destination)
        if isinstance(route, Unroutable):
            self._unroutable(route, origin, ticket)
            return
        parking = p.parking
        if parking is not None and parking.lot.parked and parking.lot.holds(route.name, p.clock.monotonic()):
            tenant = _tenant_of(route.name)
            self._park(
                origin, ticket, _HELD, requests=0, tenant=tenant, event_time=result.event["event_time"]
            )
            return
        for omission in result.omitted:
            p.metrics.identifiers_omitted.labels(omission.field, omission.reason).inc()
        event: dict[str, Any] = result.event
        event_name: str = event["event_name"]
        self._mapped[event_name] += 1
        pending = PendingEvent(
            # A copy of exactly the body's size: orjson's result keeps its growth buffer (about 4 KB of
            # RSS for a 1 KB event), which multiplied by the events in flight was most of the RSS.
            body=bytes(memoryview(orjson.dumps(event))),
            event_name=event_name,
            event_time=int(event["event_time"]),
            action_source=str(event.get("action_source", "")),
            ticket=ticket,
            origin=origin,
            record_timestamp_ms=origin.timestamp_ms,
            user_data_keys=tuple(event["user_data"]),
        )
        for batch in p.batcher.add(route.name, pending):
            self._launch(batch)

    def _settle(self, ticket: Ticket, *, failed: bool) -> None:
        self.p.ledger.settle(ticket)
        if self._guard is not None:
            self._guard.settled(self.p.clock.monotonic(), failed=failed)

    def _settle_accepted(self, tickets: list[Ticket]) -> None:
        """`_settle(ticket, failed=False)` for each of a request's accepted events, the clock read once."""
        settle = self.p.ledger.settle
        for ticket in tickets:
            settle(ticket)
        if self._guard is not None and tickets:
            self._guard.settled(self.p.clock.monotonic(), failed=False, count=len(tickets))

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
        destination = p.router.resolve(batch.destination)
        if isinstance(destination, Unroutable):
            # The tenant was removed or disabled while its events waited in the batch.
            for event in batch.events:
                self._unroutable(destination, event.origin, event.ticket)
            return
        p.metrics.batch_size.observe(len(batch.events))
        outcomes = await p.deliverer.deliver(destination, batch.events)
        accepted_at = p.clock.wall()
        accepted = [event for event, failure in outcomes if failure is None]
        others = [(event, failure) for event, failure in outcomes if failure is not None]
        # Counted with Counter's C loop (a request carries up to 1,000 events): event names, and
        # user_data key sets (few distinct ones: count those, not keys).
        names = Counter(map(EVENT_NAME, accepted))
        key_sets = Counter(map(USER_DATA_KEYS, accepted))
        latencies = [
            max(0.0, accepted_at - stamp / 1000)
            for stamp in map(RECORD_TIMESTAMP_MS, accepted)
            if stamp is not None
        ]
        # The accepted events settle first (together: one clock read), then the others in order.
        self._settle_accepted(list(map(TICKET, accepted)))
        parked = False
        tenant = _tenant_of(destination.name)
        for event, failure in others:
            if failure.reason == TENANT_PARKED:
                parked = True
                self._park(
                    event.origin,
                    event.ticket,
                    failure,
                    requests=event.attempts,
                    tenant=tenant,
                    event_time=event.event_time,
                )
            else:
                self._fail(event.origin, failure, event.ticket, requests=event.attempts)
        if p.parking is not None and destination.parks:
            self._parked_or_released(destination, outcomes, parked=parked)
        p.metrics.end_to_end_latency.observe_many(latencies)
        # Counters and histograms once per batch and label set rather than per event.
        m, label = p.metrics, destination.pixel_label
        for name, n in names.items():
            m.child(m.events_accepted, label, name).inc(n)
        self.stats.accepted.update(names)
        keys: Counter[str] = Counter()
        for key_set, n in key_sets.items():
            for key in key_set:
                if key in _MATCH_KEY_SET:
                    keys[key] += n
        for key, n in keys.items():
            m.child(m.match_keys, label, key).inc(n)

    # -- routing and parking (platform mode)
    def _unroutable(self, route: Unroutable, origin: Origin, ticket: Ticket) -> None:
        if route.unknown and self.p.parking is not None:
            self.p.parking.book.saw_unknown(route.tenant, self.p.clock.wall())
        if route.action == "filter":
            self.p.metrics.events_filtered.labels(route.reason).inc()
            self.stats.filtered[route.reason] += 1
            self._settle(ticket, failed=False)
            return
        failure = Failure(Stage.ROUTE, route.reason, ErrorClass.PERMANENT, route.detail)
        self.p.metrics.events_rejected.labels(str(Stage.ROUTE), route.reason).inc()
        self._fail(origin, failure, ticket, requests=0)

    def _parked_or_released(self, destination: Destination, outcomes: Sequence[Any], *, parked: bool) -> None:
        assert self.p.parking is not None
        lot, book = self.p.parking.lot, self.p.parking.book
        tenant = destination.name[len(TENANT_PREFIX) :]
        if parked:
            failure = next(f for _e, f in outcomes if f is not None and f.reason == TENANT_PARKED)
            book.refused(tenant, failure.message)
            if lot.park(tenant, failure.message, self.p.clock.monotonic()):
                log.error(
                    "tenant parked: Meta refuses its token, permission or pixel; its events wait",
                    extra={"tenant": tenant, "pixel_id": destination.pixel_id, "error": failure.message},
                )
            return
        if any(f is None for _e, f in outcomes):
            book.accepted(tenant, self.p.clock.wall())
        if lot.release(tenant):
            log.warning("tenant released: Meta accepts its events again", extra={"tenant": tenant})
            self._pass_wanted = True  # what waits for it in the parked topics can go now

    def _park(
        self,
        origin: Origin,
        ticket: Ticket,
        failure: Failure,
        *,
        requests: int,
        tenant: str | None,
        event_time: float,
    ) -> None:
        """Copy the record to its parked topic; it is settled once Kafka acknowledged the copy."""
        p = self.p
        assert p.parking is not None
        book, lot = p.parking.book, p.parking.lot

        def done(topic: str, error: str | None) -> None:
            if error is None:
                p.metrics.events_parked.labels(topic).inc()
                self.stats.parked += 1
                if tenant is not None:
                    book.parked(tenant)
                    lot.note_event(tenant, event_time)
                self._settle(ticket, failed=False)
            elif self._fatal is None:
                self._fatal = FatalPipelineError(
                    f"parking write to {topic} failed: {error} "
                    f"(record {origin.topic}[{origin.partition}]@{origin.offset} not settled)"
                )

        p.parking.writer.send(
            origin, failure, requests=requests, dlq_for=p.policy.route(origin), on_done=done
        )

    def _run_passes(self, now: float) -> None:
        """Read the parked topics through, up to their end when the pass starts (see consumer.park)."""
        p = self.p
        parking = p.parking
        assert parking is not None
        source = p.source
        current = self._pass
        if current is not None:
            # A partition is read through when a record at or past its end came (it is held again;
            # librdkafka reports no position after the seek back) or its position reached the end.
            positions = source.positions()
            done = all(
                key not in source.assigned
                or (
                    (key in source.at_end or positions.get(key, -1) >= end) and _in_flight(p.ledger, key) == 0
                )
                for key, end in current.ends.items()
            )
            if done:
                parking.lot.postpone_unprobed(current.started, now)
                self._pass = None
                self._last_pass_end = now
                log.info("parked topics read through", extra={"seconds": round(now - current.started, 3)})
            return
        due = (
            self._pass_wanted
            or parking.lot.probe_due(now)
            or now - self._last_pass_end >= parking.pass_interval_s
        )
        if not due:
            return
        self._pass_wanted = False
        ends: dict[TopicPartitionKey, int] = {}
        positions = source.positions()
        for key in sorted(source.assigned):
            if key[0] not in parking.topics:
                continue
            high = source.high_watermark(key)
            start = positions.get(key, -1)
            ledger = p.ledger.get(key)
            if ledger is not None and ledger.committable is not None:
                start = max(start, ledger.committable)
            if high is not None and high > max(start, 0):
                source.read_until(key, high)
                ends[key] = high
        if ends:
            self._pass = _Pass(now, ends)
            log.info(
                "reading the parked topics through",
                extra={
                    "partitions": {f"{t}[{p}]": [positions.get((t, p)), end] for (t, p), end in ends.items()},
                    "parked_tenants": len(parking.lot.parked),
                },
            )
        else:
            parking.lot.postpone_unprobed(now, now)
            self._last_pass_end = now

    # -- failures
    def _fail(self, origin: Origin, failure: Failure, ticket: Ticket, *, requests: int) -> None:
        """A record that cannot be delivered: settle it without a copy (the policy says so), stop
        (the guard says failures dominate), or dead-letter it."""
        p = self.p
        if failure.reason in p.policy.settles_without_copy:
            self.stats.skipped[failure.reason] += 1
            self._settle(ticket, failed=False)
            return
        guard = self._guard
        if guard is not None and guard.refuses(p.clock.monotonic()):
            if self._fatal is None:
                limits = guard.limits
                self._fatal = FatalPipelineError(
                    f"dead-letter rate above {limits.max_ratio:.0%} of the last {limits.window_s:.0f}s: "
                    f"stopping instead of dead-lettering {origin.topic}[{origin.partition}]@{origin.offset} "
                    f"({failure.stage}/{failure.reason})"
                )
            return
        self._dead_letter(origin, failure, ticket, requests=requests)

    def _dead_letter(self, origin: Origin, failure: Failure, ticket: Ticket, *, requests: int) -> None:
        p = self.p

        def done(topic: str, error: str | None) -> None:
            if error is None:
                p.metrics.dead_lettered.labels(topic, str(failure.stage), failure.reason).inc()
                self.stats.dead_lettered[failure.reason] += 1
                self._settle(ticket, failed=True)
                return
            p.metrics.dead_letter_failures.labels(topic).inc()
            log.error(
                "dead-letter write failed; stopping without committing past the record",
                extra={
                    "dlq_topic": topic,
                    "error": error,
                    "origin_topic": origin.topic,
                    "partition": origin.partition,
                    "offset": origin.offset,
                },
            )
            if self._fatal is None:
                self._fatal = FatalPipelineError(
                    f"dead-letter write to {topic} failed: {error} "
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
        p.dlq.send(origin, failure, requests=requests, dlq_for=p.policy.route(origin), on_done=done)

    # -- backpressure, lag
    def _pace(self, polled: int) -> None:
        """Catching up (full polls: a backlog) or live (polls well below full): the batcher lets
        tenants' batches wait longer while catching up, where their events are late already and fuller
        requests shorten the catch-up (the in-flight limits still bound what waits)."""
        if polled >= MAX_RECORDS_PER_POLL:
            self.p.batcher.catching_up = True
        elif polled < MAX_RECORDS_PER_POLL // 10:
            self.p.batcher.catching_up = False

    def _apply_pauses(self) -> None:
        p = self.p
        events, size = p.ledger.events_in_flight, p.ledger.bytes_in_flight
        p.metrics.in_flight_events.set(events)
        p.metrics.in_flight_bytes.set(size)
        if events >= p.max_in_flight_events or size >= p.max_in_flight_bytes:
            overloaded = True
        elif events < p.max_in_flight_events // 2 and size < p.max_in_flight_bytes // 2:
            overloaded = False
        else:
            overloaded = self._overloaded  # hysteresis: keep the current state between the marks
        self._overloaded = overloaded
        blocked = p.deliverer.state.blocked()
        topics = set().union(*(p.destination_topics.get(d, set()) for d in blocked)) if blocked else set()
        waiting_long = bool(self._held) and self._schema_wait_is_long(p.clock.monotonic())
        p.source.apply_pauses(all_topics=overloaded or waiting_long, topics=topics)
        p.metrics.partitions_paused.set(len(p.source.paused_partitions))

    def _export_lag(self) -> None:
        lags = self.p.source.lag()
        gauge = self.p.metrics.consumer_lag
        # A partition that moved to another member must stop reporting its frozen lag here.
        for topic, partition in self._lag_series - set(lags):
            gauge.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            gauge.labels(topic, str(partition)).set(lag)
        self._lag_series = set(lags)

    # -- writer schemas: loaded ahead, so decoding never waits for the registry in the loop
    def _schemas_missing(self, records: Sequence[Origin]) -> set[int]:
        to_fetch = self.p.decoder.schema_to_fetch
        return {i for o in records if (i := to_fetch(o.topic, o.value)) is not None}

    def _schema_wait_is_long(self, now: float) -> bool:
        """Held records have waited SCHEMA_WAIT_UNPAUSED_S: partitions pause and the loop polls again."""
        return now - self._held_since >= SCHEMA_WAIT_UNPAUSED_S

    def _hold_for_schemas(self, records: Sequence[Origin]) -> list[Origin]:
        """Hold records (the loop stops polling for up to SCHEMA_WAIT_UNPAUSED_S, then all partitions
        pause and it polls again) until the writer schemas they need are loaded;
        returns the records to handle now, in consumption order. A held record is untracked: nothing
        past it is committed, and if its partition moves away meanwhile it is dropped (the next owner
        reads it again)."""
        ledger = self.p.ledger
        if not self._held:
            self._held_since = self.p.clock.monotonic()
        self._held.extend((o, ledger.get((o.topic, o.partition))) for o in records)
        if self._schema_task is not None and not self._schema_task.done():
            return []
        self._schema_task = None
        missing = self._schemas_missing([o for o, _ in self._held])
        if missing:
            self._schema_task = asyncio.create_task(self._load_schemas(missing))
            return []
        held, self._held = self._held, []
        return [o for o, owner in held if ledger.get((o.topic, o.partition)) is owner]

    async def _load_schemas(self, schema_ids: set[int]) -> None:
        decoder = self.p.decoder
        for schema_id in sorted(schema_ids):
            text = await self._ask_registry(functools.partial(decoder.fetch_schema, schema_id))
            if text is not None:  # else the registry refused the ID: decode dead-letters the records
                decoder.learn(schema_id, text)
        self._registry_answered()

    async def _reach_registry(self) -> None:
        """At start-up: not ready until the registry has answered once (records wait meanwhile)."""
        self.registry_problem = "schema registry not reached yet"
        await self._ask_registry(self.p.decoder.ping)
        self._registry_answered()

    async def _ask_registry(self, call: Callable[[], _T]) -> _T:
        """`call` (blocking) in a worker thread, again and again while the registry is unreachable."""
        clock = self.p.clock
        delay = REGISTRY_RETRY_S
        warned_at = float("-inf")
        while True:
            try:
                return await asyncio.to_thread(call)
            except RegistryUnavailable as exc:
                self.registry_problem = f"schema registry unreachable: {exc}"
                if clock.monotonic() - warned_at >= REGISTRY_WARN_EVERY_S:
                    warned_at = clock.monotonic()
                    log.warning(
                        "schema registry unreachable: records wait for their writer schema",
                        extra={"error": str(exc), "retry_in_s": delay},
                    )
            await clock.sleep(delay)
            delay = min(delay * 2, REGISTRY_RETRY_MAX_S)

    def _registry_answered(self) -> None:
        if self.registry_problem is not None:
            self.registry_problem = None
            log.info("schema registry reachable")

    # -- rebalance
    async def _drain_revoked(self, keys: list[TopicPartitionKey]) -> None:
        """Before partitions are revoked (a clean rebalance): send what waits in open batches and let
        the in-flight records of those partitions settle, within the shutdown drain deadline, so the
        commit that follows covers them and their next owner does not send them again."""
        p = self.p
        clock = p.clock
        if not keys or self._fatal is not None:
            return
        for batch in p.batcher.drain():
            self._launch(batch)
        started = clock.monotonic()
        deadline = started + p.drain_deadline_s
        waiting = sum(_in_flight(p.ledger, k) for k in keys)
        while waiting and self._fatal is None and clock.monotonic() < deadline:
            # The loop body is suspended in poll(): serve the producers' callbacks from here.
            p.dlq.poll()
            if p.parking is not None:
                p.parking.writer.poll()
            await clock.sleep(REVOKE_POLL_S)
            waiting = sum(_in_flight(p.ledger, k) for k in keys)
        extra = {"partitions": len(keys), "seconds": round(clock.monotonic() - started, 3)}
        if waiting:
            log.warning("revoking with events still in flight", extra={**extra, "events": waiting})
        else:
            log.info("revoked partitions' deliveries finished", extra=extra)

    # -- shutdown
    async def _settle_in_flight(self, deadline: float) -> None:
        """Wait for the requests in flight until `deadline`, still taking part in the group: every
        partition is paused, and polling lets a rebalance that starts meanwhile (another member joins
        or leaves) go through its revocation, which commits what settled, instead of waiting for this
        member (which would then be evicted, its commits refused, and its settled records sent again
        by their next owner)."""
        p = self.p
        clock = p.clock
        p.source.apply_pauses(all_topics=True, topics=set())
        while self._tasks and clock.monotonic() < deadline:
            # Nothing is read from paused partitions; a record fetched before the pause took effect
            # is left untracked (not committed): its next owner reads it again.
            await p.source.poll(MAX_RECORDS_PER_POLL)
            p.dlq.poll()
            if p.parking is not None:
                p.parking.writer.poll()
            await clock.sleep(REVOKE_POLL_S)

    async def _shutdown(self) -> None:
        p = self.p
        clock = p.clock
        deadline = clock.monotonic() + p.drain_deadline_s
        if self._schema_task is not None:
            self._schema_task.cancel()
        if self._fatal is None:
            for batch in p.batcher.drain():
                self._launch(batch)
            await self._settle_in_flight(deadline)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        left = p.dlq.flush(max(0.5, deadline - clock.monotonic()))
        if left:
            log.error("dead-letter copies unacknowledged at shutdown", extra={"count": left})
        p.dlq.close()
        p.source.store_settled()
        try:
            committed = p.source.commit_final()
            log.info("committed on shutdown", extra={"partitions": committed})
        except Exception as exc:
            log.error("final commit failed", extra={"error": str(exc)})
        p.source.close()


_HELD = Failure(Stage.DELIVER, TENANT_PARKED, ErrorClass.DESTINATION, "tenant parked: held without a request")


def _tenant_of(destination: str) -> str | None:
    return destination[len(TENANT_PREFIX) :] if destination.startswith(TENANT_PREFIX) else None


def _in_flight(ledger: OffsetLedger, key: TopicPartitionKey) -> int:
    partition = ledger.get(key)
    return partition.events_in_flight if partition is not None else 0
