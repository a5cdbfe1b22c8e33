"""Wiring: build every stage from the configuration and run the pipeline with its health endpoint."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer import health, memory
from consumer.batch import Batcher
from consumer.check import check_destination
from consumer.concurrency import ConcurrencySettings
from consumer.config import DLQ_SUFFIX, TENANT_PREFIX, AppConfig
from consumer.decode import Decoder, parse_schema
from consumer.deliver import Deliverer, Destination, GraphClient, RetryPolicy
from consumer.dlq import DeadLetterGuard, DeadLetterWriter, GuardLimits
from consumer.dlq_monitor import DeadLetterMonitor
from consumer.kafka_errors import KafkaErrors
from consumer.mapping import Mapper
from consumer.metrics import Metrics
from consumer.offsets import OffsetLedger
from consumer.park import ParkingLot, TenantBook
from consumer.pipeline import Parking, Pipeline, PipelineParts
from consumer.replay import Policy, ReplayPolicy
from consumer.route import Router
from consumer.source import KafkaSource, ensure_copy_topics
from consumer.tenants import FileTenantSource, RegistryTopic, SecretStore, TenantRegistry, TenantSync

log = logging.getLogger(__name__)


def build_destinations(config: AppConfig) -> dict[str, Destination]:
    """The fixed destinations (platform.partner_agent unless a destination sets its own)."""
    destinations = {}
    for name, dest in config.destinations.items():
        token = dest.access_token
        if token is None:
            raise ValueError(f"destinations.{name}: access token not resolved")
        destinations[name] = Destination(
            name=name,
            pixel_id=dest.pixel_id,
            token=token.get_secret_value(),
            test_event_code=dest.test_event_code,
            partner_agent=dest.partner_agent or config.platform.partner_agent,
        )
    return destinations


def build_tenants(
    config: AppConfig,
    on_changes: Callable[[set[str], float], None] | None,
    kafka_errors: KafkaErrors | None = None,
) -> TenantSync | None:
    """Platform mode's registry and its sources, or None when no tenant registry is configured."""
    sources = config.platform.tenants
    if sources is None:
        return None
    registry = TenantRegistry(SecretStore(config.platform.secrets_dir))
    topic = None
    if sources.topic is not None:
        conf = {**config.consumer_properties(), "group.id": config.kafka.group_id + "-tenants"}
        if kafka_errors is not None:
            conf = kafka_errors.watch(conf, "tenants")
        topic = RegistryTopic(conf, sources.topic)
    return TenantSync(
        registry,
        file=FileTenantSource(sources.file) if sources.file is not None else None,
        topic=topic,
        interval_s=config.platform.reload_interval_s,
        on_changes=on_changes,
    )


def build_decoder(config: AppConfig) -> Decoder:
    readers = {t: parse_schema(config.reader_schema(t)) for t in config.topics}
    writers = {}
    for topic in config.topics:
        writer = config.writer_schema(topic)
        if writer is not None:
            writers[topic] = parse_schema(writer)
    registry_conf = config.schema_registry_conf()
    registry = SchemaRegistryClient(registry_conf) if registry_conf is not None else None
    return Decoder(readers, registry=registry, writer_schemas=writers)


def build_client(config: AppConfig) -> GraphClient:
    return GraphClient(
        base_url=config.capi.base_url,
        api_version=config.capi.api_version,
        timeout_s=config.capi.timeout_s,
        max_requests_in_flight=config.capi.max_requests_in_flight,
    )


def concurrency_settings(config: AppConfig) -> ConcurrencySettings:
    """Requests in flight: `capi.max_requests_in_flight` in all, `capi.concurrency` per destination."""
    capi = config.capi
    low, initial, high = capi.concurrency_bounds
    return ConcurrencySettings(
        max_in_flight=capi.max_requests_in_flight,
        min_limit=low,
        max_limit=high,
        initial_limit=initial,
        adaptive=capi.concurrency.adaptive,
        latency_tolerance=capi.concurrency.latency_tolerance,
        latency_spike_floor_s=capi.concurrency.latency_spike_floor_s,
        decrease_factor=capi.concurrency.decrease_factor,
    )


def build_pipeline(
    config: AppConfig,
    metrics: Metrics,
    client: GraphClient,
    mapper: Mapper | None = None,
    *,
    replay: ReplayPolicy | None = None,
    tenants: TenantSync | None = None,
    kafka_errors: KafkaErrors | None = None,
) -> Pipeline:
    """The live pipeline, or with `replay` the one that reads the dead-letter topics."""
    ledger = OffsetLedger()
    errors = kafka_errors or KafkaErrors()
    consumer_conf = errors.watch(config.consumer_properties(), "consumer")
    producer_conf = errors.watch(config.producer_properties(), "dlq")
    group = config.kafka.group_id
    topics = list(config.topics)
    dlq_topics = {name: topic.dlq_topic for name, topic in config.topics.items()}
    parked_topics = config.parked_topics  # parked topic -> source topic
    parking = None
    if replay is not None:
        group = consumer_conf["group.id"] = config.replay_group_id
        consumer_conf.pop("group.instance.id", None)  # the replay group has members of its own
        topics = sorted({t for t, _p in replay.end_offsets})
    elif parked_topics:
        topics += sorted(parked_topics)
        by_source = {source: parked for parked, source in parked_topics.items()}
        parking = Parking(
            lot=ParkingLot(
                initial_backoff_s=config.platform.probe_initial_backoff_s,
                max_backoff_s=config.platform.probe_max_backoff_s,
            ),
            book=TenantBook(),
            writer=DeadLetterWriter(
                producer_conf,
                group_id=group,
                topic_for=lambda topic: by_source[topic],
                write_timeout_s=config.dlq.write_timeout_s,
            ),
            topics=frozenset(parked_topics),
            pass_interval_s=config.platform.parked_pass_interval_s,
        )
    platform = config.platform
    router = Router(
        build_destinations(config),
        tenants.registry if tenants is not None else None,
        partner_agent=platform.partner_agent,
        unknown_tenant=platform.unknown_tenant,
        status_tenants=frozenset(platform.status_tenants),
        park_tenants=parking is not None,
    )
    source = KafkaSource(
        consumer_conf,
        topics,
        ledger,
        end_offsets=replay.end_offsets if replay is not None else None,
        bounded_topics=parked_topics if parking is not None else (),
    )
    errors.on_fatal("consumer", source)
    parts = PipelineParts(
        source=source,
        ledger=ledger,
        decoder=build_decoder(config),
        mapper=mapper or Mapper.from_config(config),
        batcher=Batcher(
            max_events=config.batching.max_events,
            max_bytes=config.batching.max_bytes,
            linger_s=config.batching.linger_ms / 1000,
            clock=time.monotonic,
            tenant_linger_s=config.platform.batch_linger_ms / 1000,
            tenant_catch_up_linger_s=config.platform.catch_up_linger_ms / 1000,
        ),
        dlq=DeadLetterWriter(
            producer_conf,
            group_id=group,
            topic_for=lambda topic: dlq_topics.get(topic, topic + DLQ_SUFFIX),
            write_timeout_s=config.dlq.write_timeout_s,
        ),
        deliverer=Deliverer(
            client,
            metrics,
            policy=RetryPolicy(
                base_s=config.capi.retry_initial_backoff_s,
                cap_s=config.capi.retry_max_backoff_s,
                destination_base_s=config.capi.parked_retry_initial_backoff_s,
                destination_cap_s=config.capi.parked_retry_max_backoff_s,
                parked_dead_letter_after_s=config.dlq.parked_dead_letter_after_s,
            ),
            concurrency=concurrency_settings(config),
        ),
        router=router,
        destination_topics={
            name: {t for t, topic in config.topics.items() if topic.destination == name}
            for name in config.destinations
        },
        metrics=metrics,
        max_in_flight_events=config.limits.max_in_flight_events,
        max_in_flight_bytes=config.limits.max_in_flight_bytes,
        drain_deadline_s=config.shutdown.drain_deadline_s,
        guard=DeadLetterGuard(GuardLimits(config.dlq.max_ratio, config.dlq.window_s, config.dlq.min_events)),
        policy=replay or Policy(parked_topics),
        parking=parking,
    )
    pipeline = Pipeline(parts)
    if tenants is not None:
        parts.on_turn = _tenant_upkeep(tenants, pipeline, config.platform.reload_interval_s)
    return pipeline


def _tenant_upkeep(tenants: TenantSync, pipeline: Pipeline, interval_s: float) -> Callable[[float], None]:
    """Each loop turn: follow the registry; every `interval_s` export the tenants by state."""
    last = [float("-inf")]

    def upkeep(now: float) -> None:
        tenants.tick(now)
        if now - last[0] >= interval_s:
            last[0] = now
            pipeline.export_tenants()

    return upkeep


class Service:
    """The pipeline plus its /metrics, /healthz, /readyz endpoint."""

    def __init__(
        self, config: AppConfig, mapper: Mapper | None = None, *, replay: ReplayPolicy | None = None
    ) -> None:
        self.config = config
        self.replay = replay
        self.metrics = Metrics()
        self.client = build_client(config)
        self._checks: set[asyncio.Task[None]] = set()
        self.kafka_errors = KafkaErrors()
        """Refused broker connections: one clear log line, and /readyz says why it is not ready."""
        self.tenants = build_tenants(config, self._tenants_changed, self.kafka_errors)
        self.pipeline = build_pipeline(
            config,
            self.metrics,
            self.client,
            mapper,
            replay=replay,
            tenants=self.tenants,
            kafka_errors=self.kafka_errors,
        )
        self.metrics_port: int | None = None

    def _monitor_consumer(self, conf: dict[str, Any]) -> Consumer:
        """The dead-letter monitor's consumer, its librdkafka lines and errors as the others'."""
        return Consumer(
            self.kafka_errors.watch(conf, "dlq_monitor"), logger=logging.getLogger("librdkafka.dlq_monitor")
        )

    def _tenants_changed(self, tenant_ids: set[str], now: float) -> None:
        """A tenant appeared or its entry or token changed: test its connection, and let a parked
        one's events go out again at once."""
        parking = self.pipeline.p.parking
        if parking is None:
            return
        parking.lot.probe_now(tenant_ids, now)
        for tenant_id in sorted(tenant_ids):
            destination = self.pipeline.p.router.resolve(TENANT_PREFIX + tenant_id)
            if isinstance(destination, Destination):
                task = asyncio.create_task(self._test_connection(tenant_id, destination))
                self._checks.add(task)
                task.add_done_callback(self._checks.discard)

    async def _test_connection(self, tenant_id: str, destination: Destination) -> None:
        result = await check_destination(self.client, destination, tenant_id)
        parking = self.pipeline.p.parking
        assert parking is not None
        parking.book.connection_tested(tenant_id, result.verdict, result.checked_at)
        log.info(
            "tenant connection tested",
            extra={"tenant": tenant_id, "pixel_id": result.pixel_id, "verdict": result.verdict},
        )
        if result.ok:
            self.pipeline.release(tenant_id)

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set, drain, commit. Exit code 0 on a clean stop, 1 on a fatal error."""
        pipeline = self.pipeline
        runner = None
        if self.config.metrics.enabled:
            app = health.create_app(
                self.metrics,
                loop_turned_at=lambda: pipeline.loop_turned_at or time.monotonic(),
                ready=self.kafka_errors.readiness(pipeline.readiness),
                tenants=pipeline.tenant_status if self.tenants is not None else None,
            )
            runner, self.metrics_port = await health.start(
                app, self.config.metrics.host, self.config.metrics.port
            )
            log.info(
                "metrics endpoint listening",
                extra={"host": self.config.metrics.host, "port": self.metrics_port},
            )
        code = 0
        monitor = None
        if self.replay is None:
            dlq_monitor = DeadLetterMonitor.from_config(
                self.config,
                self.metrics,
                interval_s=self.config.dlq.monitor_interval_s,
                consumer_factory=self._monitor_consumer,
            )
            monitor = asyncio.create_task(dlq_monitor.run(stop))
        trimmer = asyncio.create_task(
            memory.trim_periodically(stop, busy=lambda: pipeline.p.batcher.catching_up)
        )
        try:
            if self.tenants is not None:
                sources = self.config.platform.tenants
                assert sources is not None
                # Every member routes by the same registry: read it to its end before the first event.
                await asyncio.to_thread(self.tenants.load, sources.load_timeout_s)
            if pipeline.p.parking is not None:
                problems = await asyncio.to_thread(
                    ensure_copy_topics, self.config.producer_properties(), self.config.parked_topics
                )
                for problem in problems:
                    log.error("parked topic unavailable", extra={"error": problem})
            async with self.client:
                await pipeline.run(stop)
        except Exception as exc:
            log.error(
                "pipeline stopped on a fatal error",
                extra={"error": str(exc), "error_type": type(exc).__name__},
            )
            code = 1
        finally:
            trimmer.cancel()
            if monitor is not None:
                monitor.cancel()
            await asyncio.gather(trimmer, *([monitor] if monitor is not None else []), return_exceptions=True)
            if runner is not None:
                await runner.cleanup()
            for check in list(self._checks):
                check.cancel()
            await asyncio.gather(*self._checks, return_exceptions=True)
            if self.tenants is not None:
                self.tenants.close()
        log.info("stopped", extra={"exit_code": code, "consumed": pipeline.stats.consumed})
        return code


async def run_until_signalled(
    config: AppConfig, mapper: Mapper | None = None, early_signals: Sequence[int] = ()
) -> int:
    """`capi-consumer run`: SIGTERM/SIGINT start the drain. `early_signals`: those that came while the
    process started (before these handlers): the service then starts and stops at once, cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def requested(sig: signal.Signals) -> None:
        if not stop.is_set():
            log.info("stop requested", extra={"signal": sig.name})
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, requested, sig)
    if early_signals:
        log.info("stop requested while starting", extra={"signal": early_signals[0]})
        stop.set()
    return await Service(config, mapper).run(stop)
