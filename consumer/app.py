"""Wiring: build every stage from the configuration and run the pipeline with its health endpoint."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from dataclasses import dataclass

from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer import health
from consumer.batch import Batcher
from consumer.config import AppConfig
from consumer.decode import Decoder, parse_schema
from consumer.deliver import Destination, GraphClient, RetryPolicy
from consumer.dlq import DeadLetterWriter
from consumer.dlq_monitor import DeadLetterMonitor
from consumer.mapping import Mapper
from consumer.metrics import Metrics
from consumer.normalize import Normalizer
from consumer.offsets import OffsetLedger
from consumer.pipeline import DeadLetterGuard, Pipeline, PipelineParts
from consumer.replay import EXPIRED_REASONS, FILTERED_OUT, ReplayFilter, router
from consumer.source import KafkaSource

log = logging.getLogger(__name__)


def build_mapper(config: AppConfig) -> Mapper:
    """The mapper, checked against every topic's reader schema (raises ConfigError on a bad path)."""
    normalizer = Normalizer(
        default_phone_region=config.normalization.default_phone_region,
        hash_external_id=config.normalization.hash_external_id,
        cache_size=config.normalization.cache_size,
    )
    return Mapper(config, config.reader_schemas(), normalizer)


def build_destinations(config: AppConfig) -> dict[str, Destination]:
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
            partner_agent=dest.partner_agent,
        )
    return destinations


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


@dataclass(frozen=True)
class ReplayPlan:
    """What a live replay reads and how it treats records (see consumer.replay)."""

    topics: list[str]
    ends: dict[tuple[str, int], tuple[int, int]]
    filter: ReplayFilter


def build_pipeline(
    config: AppConfig, metrics: Metrics, mapper: Mapper | None = None, *, replay: ReplayPlan | None = None
) -> Pipeline:
    ledger = OffsetLedger()
    mapper = mapper or build_mapper(config)
    dlq_topics = {name: topic.dlq_topic for name, topic in config.topics.items()}
    consumer_conf = config.consumer_properties()
    topics = list(config.topics)
    group = config.kafka.group_id
    if replay is not None:
        group = consumer_conf["group.id"] = f"{config.kafka.group_id}-replay"
        topics = replay.topics
    # Replay reads each dead-letter partition only up to its end at start-up (never its own copies).
    ends = {key: high for key, (_start, high) in replay.ends.items()} if replay is not None else None
    parts = PipelineParts(
        source=KafkaSource(consumer_conf, topics, ledger, end_offsets=ends),
        ledger=ledger,
        decoder=build_decoder(config),
        mapper=mapper,
        batcher=Batcher(
            max_events=config.batching.max_events,
            max_bytes=config.batching.max_bytes,
            linger_s=config.batching.linger_ms / 1000,
            clock=time.monotonic,
        ),
        dlq=DeadLetterWriter(
            config.producer_properties(),
            group_id=group,
            topic_for=lambda topic: dlq_topics.get(topic, topic + ".dlq"),
            write_timeout_s=config.dlq.write_timeout_s,
        ),
        destinations=build_destinations(config),
        destination_topics={
            name: {t for t, topic in config.topics.items() if topic.destination == name}
            for name in config.destinations
        },
        client=GraphClient(
            base_url=config.capi.base_url,
            api_version=config.capi.api_version,
            timeout_s=config.capi.timeout_s,
            max_requests_in_flight=config.capi.max_requests_in_flight,
        ),
        metrics=metrics,
        max_in_flight_events=config.limits.max_in_flight_events,
        max_in_flight_bytes=config.limits.max_in_flight_bytes,
        drain_deadline_s=config.shutdown.drain_deadline_s,
        retry_policy=RetryPolicy(
            base_s=config.capi.retry_initial_backoff_s,
            cap_s=config.capi.retry_max_backoff_s,
            destination_base_s=config.capi.parked_retry_initial_backoff_s,
            destination_cap_s=config.capi.parked_retry_max_backoff_s,
            parked_dead_letter_after_s=config.dlq.parked_dead_letter_after_s,
        ),
        guard=DeadLetterGuard(config.dlq.max_ratio, config.dlq.window_s, config.dlq.min_events),
    )
    if replay is not None:
        # Records in the DLQ are already failures: sending one back is no drain, so no guard.
        parts.guard = None
        parts.route = router(config)
        parts.skip_reasons = EXPIRED_REASONS
        flt = replay.filter
        parts.skip = lambda origin: FILTERED_OUT if flt.rejects(origin) else None
        pending = {key: high for key, (low, high) in replay.ends.items() if high > low}
        parts.finished = lambda pipeline: replay_finished(pipeline, pending)
    return Pipeline(parts)


def replay_finished(pipeline: Pipeline, ends: dict[tuple[str, int], int]) -> bool:
    """Every dead-letter partition read up to its end snapshot and everything read is settled."""
    source = pipeline.p.source
    if not set(ends) <= source.assigned:
        return False
    positions = source.positions()
    if any(positions.get(key, -1) < high for key, high in ends.items()):
        return False
    return pipeline.p.ledger.events_in_flight == 0 and pipeline.p.batcher.open_events == 0


class Service:
    """The pipeline plus its /metrics, /healthz, /readyz endpoint."""

    def __init__(
        self, config: AppConfig, mapper: Mapper | None = None, *, replay: ReplayPlan | None = None
    ) -> None:
        self.config = config
        self.replay = replay
        self.metrics = Metrics()
        self.pipeline = build_pipeline(config, self.metrics, mapper, replay=replay)
        self.metrics_port: int | None = None

    async def run(self, stop: asyncio.Event) -> int:
        """Run until `stop` is set, drain, commit. Exit code 0 on a clean stop, 1 on a fatal error."""
        pipeline = self.pipeline
        runner = None
        if self.config.metrics.enabled:
            app = health.create_app(
                self.metrics,
                loop_turned_at=lambda: pipeline.loop_turned_at or time.monotonic(),
                ready=pipeline.readiness,
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
                self.config, self.metrics, interval_s=self.config.dlq.monitor_interval_s
            )
            monitor = asyncio.create_task(dlq_monitor.run(stop))
        try:
            async with pipeline.p.client:
                await pipeline.run(stop)
        except Exception as exc:
            log.error(
                "pipeline stopped on a fatal error",
                extra={"error": str(exc), "error_type": type(exc).__name__},
            )
            code = 1
        finally:
            if monitor is not None:
                monitor.cancel()
                await asyncio.gather(monitor, return_exceptions=True)
            if runner is not None:
                await runner.cleanup()
        log.info("stopped", extra={"exit_code": code, "consumed": pipeline.stats.consumed})
        return code


GC_YOUNG_THRESHOLD = 20_000


def tune_gc() -> None:
    """Garbage-collector settings for a long-running consumer, called once start-up is done.

    Every record allocates a few dozen container objects that die young; the default threshold of
    700 allocations runs a young collection every few records and a full one (which walks the
    normalization cache and everything in flight) every few thousand. The pipeline makes no reference
    cycles per record, so rarer young collections cost no memory; freezing moves the start-up objects
    (modules, schemas, the country index) out of every later collection. See README "Performance".
    """
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def run_until_signalled(config: AppConfig, mapper: Mapper | None = None) -> int:
    """`capi-consumer run`: SIGTERM/SIGINT start the drain."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return await Service(config, mapper).run(stop)
