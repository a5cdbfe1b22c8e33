"""In-memory stand-ins for the run loop's edges: partitions of records, the Graph API, dead-letter
topics and the clock. The loop, the batcher, the deliverer, the ledger and the partition bookkeeping
they drive are the real ones (`MemorySource` shares `PartitionSource` with `KafkaSource`)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import fastavro
import orjson
import yaml

from consumer.app import build_decoder
from consumer.batch import Batcher, PendingEvent
from consumer.clock import Clock
from consumer.config import DLQ_SUFFIX, PARKED_SUFFIX, AppConfig
from consumer.deliver import Accepted, Deliverer, Destination, RetryPolicy
from consumer.dlq import DeadLetterGuard, GuardLimits, decode_headers, dlq_headers
from consumer.errors import Failure, GraphError, classify_graph_error
from consumer.mapping import Mapper
from consumer.metrics import Metrics
from consumer.offsets import OffsetLedger, TopicPartitionKey
from consumer.park import ParkingLot, TenantBook
from consumer.pipeline import Parking, Pipeline, PipelineParts
from consumer.replay import LIVE, Policy
from consumer.route import Router
from consumer.source import Origin, PartitionSource
from consumer.tenants import FileTenantSource, SecretStore, TenantRegistry, TenantSync

REPO = Path(__file__).resolve().parents[1]
ORDER_SCHEMA = REPO / "schemas" / "order_event.avsc"


class FakeClock:
    """Virtual time: `sleep` returns at once after moving the clock forward by what it was asked
    (unless `gate` is cleared: then sleepers wait for it, to look at the state in between)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_start = time.time()
        self.sleeps: list[float] = []
        self.gate = asyncio.Event()
        self.gate.set()

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_start + (self.now - 1000.0)

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self.gate.wait()
        self.now += seconds
        await asyncio.sleep(0)

    def clock(self) -> Clock:
        return Clock(wall=self.wall, monotonic=self.monotonic, sleep=self.sleep)


class MemoryBroker:
    """Topics as lists of records per partition, plus committed offsets per consumer group."""

    def __init__(self) -> None:
        self.log: dict[TopicPartitionKey, list[Origin]] = {}
        self.committed: dict[str, dict[TopicPartitionKey, int]] = defaultdict(dict)

    def create(self, topic: str, partitions: int) -> None:
        if not self.partitions(topic):
            for p in range(partitions):
                self.log[(topic, p)] = []

    def partitions(self, topic: str) -> list[TopicPartitionKey]:
        return sorted(k for k in self.log if k[0] == topic)

    def append(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Origin:
        records = self.log[(topic, partition)]
        origin = Origin(topic, partition, len(records), int(time.time() * 1000), key, value, headers or [])
        records.append(origin)
        return origin

    def high(self, key: TopicPartitionKey) -> int:
        return len(self.log[key])

    # -- Backend
    def topic(self, name: str) -> str:
        return name

    def source(
        self,
        topics: Sequence[str],
        ledger: OffsetLedger,
        *,
        group: str,
        end_offsets: Mapping[TopicPartitionKey, int] | None,
        max_per_poll: int,
    ) -> PartitionSource:
        return MemorySource(
            self, topics, ledger, group=group, end_offsets=end_offsets, max_per_poll=max_per_poll
        )

    def committed_offsets(self, group: str) -> dict[TopicPartitionKey, int]:
        return dict(self.committed[group])


class Backend(Protocol):
    """Where the loop's records come from: a `MemoryBroker`, or the real broker (tests/integration)."""

    def topic(self, name: str) -> str:
        """The real name of a test's topic `name` (unique per test on a shared broker)."""
        ...

    def create(self, topic: str, partitions: int) -> None: ...

    def append(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> Any: ...

    def source(
        self,
        topics: Sequence[str],
        ledger: OffsetLedger,
        *,
        group: str,
        end_offsets: Mapping[TopicPartitionKey, int] | None,
        max_per_poll: int,
    ) -> PartitionSource: ...

    def committed_offsets(self, group: str) -> dict[TopicPartitionKey, int]: ...


class MemorySource(PartitionSource):
    """A consumer group member of a `MemoryBroker`: subscribe assigns every partition of its topics;
    `revoke`/`assign` play a rebalance; stored offsets are committed at once (as auto-commit would)."""

    def __init__(
        self,
        broker: MemoryBroker,
        topics: Sequence[str],
        ledger: OffsetLedger,
        *,
        group: str = "g",
        end_offsets: Mapping[TopicPartitionKey, int] | None = None,
        bounded_topics: Sequence[str] = (),
        max_per_poll: int = 1000,
    ) -> None:
        super().__init__(ledger, end_offsets=end_offsets, bounded_topics=bounded_topics)
        self.max_per_poll = max_per_poll
        self.broker = broker
        self.topics = list(topics)
        self.group = group
        self._positions: dict[TopicPartitionKey, int] = {}
        self._broker_paused: set[TopicPartitionKey] = set()
        self._unknown_position: set[TopicPartitionKey] = set()
        self.closed = False

    @property
    def committed(self) -> dict[TopicPartitionKey, int]:
        return self.broker.committed[self.group]

    def subscribe(self) -> None:
        self.assign([k for t in self.topics for k in self.broker.partitions(t)])

    def assign(self, keys: list[TopicPartitionKey]) -> None:
        for key in keys:
            self._positions[key] = self.committed.get(key, 0)
        self._assigned(keys)

    async def revoke_cleanly(self, keys: list[TopicPartitionKey]) -> None:
        """A revocation as librdkafka's callback makes it in the service: `before_revoke` first."""
        self._commit_revoked(keys, await self._revoke_after_drain(keys))
        self._forget(keys)

    def revoke(self, keys: list[TopicPartitionKey]) -> None:
        """A revocation without waiting (as when `before_revoke` ran out of time)."""
        self._revoked(keys)
        self._forget(keys)

    def _forget(self, keys: list[TopicPartitionKey]) -> None:
        for key in keys:
            self._positions.pop(key, None)
            self._broker_paused.discard(key)

    def _pause(self, keys: list[TopicPartitionKey]) -> None:
        self._broker_paused.update(keys)

    def _resume(self, keys: list[TopicPartitionKey]) -> None:
        self._broker_paused.difference_update(keys)

    def _store(self, offsets: list[tuple[TopicPartitionKey, int]]) -> None:
        for key, offset in offsets:
            if key in self.assigned:
                self.committed[key] = offset

    def _commit(self, offsets: list[tuple[TopicPartitionKey, int]]) -> None:
        for key, offset in offsets:
            self.committed[key] = offset

    def _seek(self, key: TopicPartitionKey, offset: int) -> None:
        # As librdkafka: after a seek the application position is unknown until a record comes.
        self._positions[key] = offset
        self._unknown_position.add(key)

    def high_watermark(self, key: TopicPartitionKey) -> int | None:
        return self.broker.high(key)

    def consume(self, max_records: int) -> list[Origin]:
        max_records = min(max_records, self.max_per_poll)
        out: list[Origin] = []
        for key in sorted(self.assigned - self._broker_paused):
            records = self.broker.log[key]
            while self._positions[key] < len(records) and len(out) < max_records:
                origin = records[self._positions[key]]
                self._positions[key] += 1
                self._unknown_position.discard(key)
                if not self._below_end(key, origin.offset):
                    break  # the partition is held paused from here on
                out.append(origin)
        return out

    def positions(self) -> dict[TopicPartitionKey, int]:
        return {k: -1001 if k in self._unknown_position else self._positions[k] for k in self.assigned}

    def lag(self) -> dict[TopicPartitionKey, int]:
        result = {}
        for key in self.assigned:
            ledger = self._ledger.get(key)
            done = ledger.committable if ledger is not None and ledger.committable is not None else None
            result[key] = self.broker.high(key) - (done if done is not None else self._positions[key])
        return result

    def close(self) -> None:
        self.closed = True


Rule = Callable[[Destination, list[dict[str, Any]]], Accepted | GraphError | None]


def graph_error(code: int, subcode: int | None = None, **extra: Any) -> GraphError:
    """A Graph error response, classified by the real taxonomy."""
    headers = extra.pop("headers", {})
    body = {"code": code, "error_subcode": subcode, "fbtrace_id": "Fake", **extra}
    return classify_graph_error(body, http_status=400, headers=headers)


class FakeGraph:
    """The events edge: answers by the first rule that returns something, else accepts. Every request
    is recorded, by destination name. After `hold()`, requests wait until `release(n)` lets n of them
    (or all) answer."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, list[str]]] = []
        self.accepted: dict[str, list[str]] = defaultdict(list)
        self.rules: list[Rule] = []
        self._budget: int | None = None
        self._changed = asyncio.Condition()
        self.waiting = 0

    def hold(self) -> None:
        self._budget = 0

    async def release(self, n: int | None = None) -> None:
        async with self._changed:
            self._budget = None if n is None else (self._budget or 0) + n
            self._changed.notify_all()

    async def _admit(self) -> None:
        async with self._changed:
            self.waiting += 1
            await self._changed.wait_for(lambda: self._budget is None or self._budget > 0)
            self.waiting -= 1
            if self._budget is not None:
                self._budget -= 1

    async def post(self, destination: Destination, events: Sequence[PendingEvent]) -> Accepted | GraphError:
        bodies = [orjson.loads(e.body) for e in events]
        ids = [b["event_id"] for b in bodies]
        self.requests.append((destination.name, ids))
        await self._admit()
        for rule in self.rules:
            answer = rule(destination, bodies)
            if answer is not None:
                return answer
        self.accepted[destination.name].extend(ids)
        return Accepted(len(events), "Fake")


class MemoryDeadLetters:
    """Dead-letter topics of a `MemoryBroker` (one partition each); a copy becomes durable on the next
    `poll`, as Kafka acknowledgements do."""

    def __init__(self, broker: MemoryBroker, group: str = "g", suffix: str = DLQ_SUFFIX) -> None:
        self.broker = broker
        self.group = group
        self.suffix = suffix
        self.refuse: str | None = None
        """An error text to refuse every copy with (an unwritable topic)."""
        self._acks: list[Callable[[], None]] = []

    def send(
        self,
        origin: Origin,
        failure: Failure,
        *,
        requests: int,
        dlq_for: str,
        on_done: Callable[[str, str | None], None],
    ) -> None:
        topic = dlq_for + self.suffix
        headers = dlq_headers(origin, failure, group_id=self.group, requests=requests, now_ms=1)

        def ack() -> None:
            if self.refuse is not None:
                on_done(topic, self.refuse)
                return
            self.broker.create(topic, 1)
            self.broker.append(topic, 0, origin.value, key=origin.key, headers=headers)
            on_done(topic, None)

        self._acks.append(ack)

    def poll(self) -> None:
        acks, self._acks = self._acks, []
        for ack in acks:
            ack()

    def flush(self, timeout_s: float) -> int:
        self.poll()
        return 0

    def close(self) -> None:
        pass

    def copies(self, topic: str) -> list[Origin]:
        return list(self.broker.log.get((topic, 0), []))

    def reasons(self, topic: str) -> list[str]:
        return [decode_headers(o.headers)["reason"] for o in self.copies(topic)]


def pixel_of(destination: str) -> str:
    """The pixel id of a test destination ("A" -> "1065")."""
    return str(1000 + sum(map(ord, destination)))


def order_config(topics: Mapping[str, str], **sections: Any) -> AppConfig:
    """A configuration of order topics, topic -> destination name (pixel: `pixel_of`)."""
    return AppConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:1", "group_id": "g"},
            # Schemaless Avro (a fixed writer schema): no registry needed.
            "topics": {
                name: {
                    "kind": "order",
                    "reader_schema": str(ORDER_SCHEMA),
                    "writer_schema": str(ORDER_SCHEMA),
                    "destination": dest,
                }
                for name, dest in topics.items()
            },
            "destinations": {
                dest: {"pixel_id": pixel_of(dest), "access_token_env": "UNUSED"}
                for dest in set(topics.values())
            },
            **sections,
        }
    )


def avro(record: Mapping[str, Any]) -> bytes:
    """Schemaless Avro of an order record (the loop's decoder reads these topics without a registry)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, _ORDER_PARSED, dict(record))
    return buf.getvalue()


_ORDER_PARSED = fastavro.parse_schema(json.loads(ORDER_SCHEMA.read_text()))


@dataclass
class Harness:
    """A real Pipeline over in-memory edges."""

    config: AppConfig
    backend: Backend
    source: PartitionSource
    graph: FakeGraph
    dlq: MemoryDeadLetters
    clock: FakeClock
    metrics: Metrics
    pipeline: Pipeline
    group: str
    secrets: Path = Path()
    tenants_file: Path = Path()
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] = field(init=False)

    @classmethod
    def build(
        cls,
        topics: Mapping[str, str],
        *,
        partitions: int = 1,
        max_events: int = 1000,
        linger_s: float = 0.0,
        max_in_flight_events: int = 10_000,
        max_per_poll: int = 1000,
        retry: RetryPolicy | None = None,
        guard: GuardLimits | None = None,
        policy: Policy = LIVE,
        backend: Backend | None = None,
        end_offsets: Mapping[TopicPartitionKey, int] | None = None,
        source_topics: Sequence[str] | None = None,
        drain_deadline_s: float = 5.0,
    ) -> Harness:
        config = order_config(topics)
        backend = backend if backend is not None else MemoryBroker()
        for topic in topics:
            backend.create(topic, partitions)
        clock = FakeClock()
        metrics = Metrics()
        ledger = OffsetLedger()
        group = "g" if policy is LIVE else "g-replay"
        source = backend.source(
            source_topics or list(topics),
            ledger,
            group=group,
            end_offsets=end_offsets,
            max_per_poll=max_per_poll,
        )
        graph = FakeGraph()
        # Dead-letter copies land in the memory broker (on a real broker too: the loop is what is tested).
        dlq = MemoryDeadLetters(backend if isinstance(backend, MemoryBroker) else MemoryBroker(), group=group)
        parts = PipelineParts(
            source=source,
            ledger=ledger,
            decoder=build_decoder(config),
            mapper=Mapper.from_config(config),
            batcher=Batcher(
                max_events=max_events, max_bytes=2_000_000, linger_s=linger_s, clock=clock.monotonic
            ),
            dlq=dlq,
            deliverer=Deliverer(graph, metrics, policy=retry or RetryPolicy(), clock=clock.clock()),
            router=Router(
                {
                    d: Destination(name=d, pixel_id=pixel_of(d), token="secret-" + d)
                    for d in set(topics.values())
                }
            ),
            destination_topics={
                d: {t for t, dest in topics.items() if dest == d} for d in set(topics.values())
            },
            metrics=metrics,
            max_in_flight_events=max_in_flight_events,
            max_in_flight_bytes=100_000_000,
            drain_deadline_s=drain_deadline_s,
            guard=DeadLetterGuard(guard) if guard is not None else None,
            policy=policy,
            clock=clock.clock(),
        )
        return cls(config, backend, source, graph, dlq, clock, metrics, Pipeline(parts), group)

    @classmethod
    def build_platform(
        cls,
        tmp_path: Path,
        tenants: Mapping[str, Mapping[str, Any]],
        tokens: Mapping[str, str],
        *,
        topic: str = "shop-orders",
        partitions: int = 1,
        max_events: int = 1000,
        unknown_tenant: str = "dead_letter",
    ) -> Harness:
        """Platform mode: `topic` routed by `shop_id`, `tenants` (id -> entry) in a tenants file,
        `tokens` (id -> token) in `tmp_path/secrets` (change them with `write_token`), parked copies
        in `<topic>.parked`."""
        secrets = tmp_path / "secrets"
        secrets.mkdir(exist_ok=True)
        for tenant_id, token in tokens.items():
            (secrets / tenant_id).write_text(token + "\n")
        tenants_file = tmp_path / "tenants.yaml"
        tenants_file.write_text(yaml.safe_dump({k: dict(v) for k, v in tenants.items()}))
        config = AppConfig.model_validate(
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:1", "group_id": "g"},
                "topics": {
                    topic: {
                        "kind": "order",
                        "reader_schema": str(ORDER_SCHEMA),
                        "writer_schema": str(ORDER_SCHEMA),
                        "tenant_field": "shop_id",
                    }
                },
                "platform": {
                    "partner_agent": "plshop-2.0-1.1",
                    "tenants": {"file": str(tenants_file)},
                    "secrets_dir": str(secrets),
                    "reload_interval_s": 0.001,
                    "unknown_tenant": unknown_tenant,
                },
            }
        )
        broker = MemoryBroker()
        broker.create(topic, partitions)
        broker.create(topic + PARKED_SUFFIX, 1)
        clock = FakeClock()
        metrics = Metrics()
        ledger = OffsetLedger()
        parked = config.parked_topics
        source = MemorySource(broker, [topic, *parked], ledger, bounded_topics=list(parked))
        graph = FakeGraph()
        lot = ParkingLot(initial_backoff_s=30, max_backoff_s=240)
        sync = TenantSync(
            TenantRegistry(SecretStore(secrets)),
            file=FileTenantSource(tenants_file),
            topic=None,
            interval_s=0.0,
            on_changes=lambda changed, now: lot.probe_now(changed, now),
        )
        sync.load(timeout_s=1)
        parking = Parking(
            lot=lot,
            book=TenantBook(),
            writer=MemoryDeadLetters(broker, suffix=PARKED_SUFFIX),
            topics=frozenset(parked),
            pass_interval_s=60,
        )
        parts = PipelineParts(
            source=source,
            ledger=ledger,
            decoder=build_decoder(config),
            mapper=Mapper.from_config(config, clock=clock.wall),
            batcher=Batcher(max_events=max_events, max_bytes=2_000_000, linger_s=0, clock=clock.monotonic),
            dlq=MemoryDeadLetters(broker),
            deliverer=Deliverer(graph, metrics, clock=clock.clock()),
            router=Router(
                {},
                sync.registry,
                partner_agent="plshop-2.0-1.1",
                unknown_tenant=config.platform.unknown_tenant,
            ),
            destination_topics={},
            metrics=metrics,
            max_in_flight_events=10_000,
            max_in_flight_bytes=100_000_000,
            drain_deadline_s=5,
            policy=Policy(parked),
            clock=clock.clock(),
            parking=parking,
        )
        pipeline = Pipeline(parts)

        def upkeep(now: float) -> None:
            sync.tick(now)
            pipeline.export_tenants()

        parts.on_turn = upkeep
        harness = cls(config, broker, source, graph, parts.dlq, clock, metrics, pipeline, "g")  # type: ignore[arg-type]
        harness.secrets = secrets
        harness.tenants_file = tenants_file
        return harness

    def write_token(self, tenant_id: str, token: str) -> None:
        (self.secrets / tenant_id).write_text(token + "\n")

    def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self.pipeline.run(self._stop))

    async def until(self, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
        """Let the loop run until `condition()` holds."""
        deadline = time.monotonic() + timeout_s
        while not condition():
            if self._task.done():
                await self._task  # raises what ended it
                raise AssertionError("the loop ended before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError("condition not reached in time")
            await asyncio.sleep(0.002)

    async def turns(self, n: int = 3) -> None:
        """Let the loop turn `n` more times."""
        target = self.pipeline.turns + n
        await self.until(lambda: self.pipeline.turns >= target)

    async def stop(self) -> None:
        self._stop.set()
        await self._task

    async def run_until(self, condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
        self.start()
        await self.until(condition, timeout_s)
        await self.stop()

    @property
    def broker(self) -> MemoryBroker:
        assert isinstance(self.backend, MemoryBroker)
        return self.backend

    @property
    def memory_source(self) -> MemorySource:
        assert isinstance(self.source, MemorySource)
        return self.source

    def committed(self) -> dict[TopicPartitionKey, int]:
        return self.backend.committed_offsets(self.group)

    def produce(self, topic: str, records: Sequence[Mapping[str, Any]], partitions: int = 1) -> list[str]:
        """Order records as schemaless Avro, round-robin over `partitions`; returns their order IDs."""
        for i, record in enumerate(records):
            self.backend.append(topic, i % partitions, avro(record), key=str(record["order_id"]).encode())
        return [str(r["order_id"]) for r in records]

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return value or 0.0
