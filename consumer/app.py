"""Wiring: build every stage from the configuration and run the pipeline with its health endpoint."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

from confluent_kafka.schema_registry import SchemaRegistryClient

from consumer import health
from consumer.batch import Batcher
from consumer.config import DLQ_SUFFIX, AppConfig
from consumer.decode import Decoder, parse_schema
from consumer.deliver import Deliverer, Destination, GraphClient, RetryPolicy
from consumer.dlq import DeadLetterGuard, DeadLetterWriter, GuardLimits
from consumer.dlq_monitor import DeadLetterMonitor
from consumer.mapping import Mapper
from consumer.metrics import Metrics
from consumer.offsets import OffsetLedger
from consumer.pipeline import Pipeline, PipelineParts
from consumer.replay import LIVE, ReplayPolicy
from consumer.source import KafkaSource

log = logging.getLogger(__name__)


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


def build_client(config: AppConfig) -> GraphClient:
    return GraphClient(
        base_url=config.capi.base_url,
        api_version=config.capi.api_version,
        timeout_s=config.capi.timeout_s,
        max_requests_in_flight=config.capi.max_requests_in_flight,
    )


def build_pipeline(
    config: AppConfig,
    metrics: Metrics,
    client: GraphClient,
    mapper: Mapper | None = None,
    *,
    replay: ReplayPolicy | None = None,
) -> Pipeline:
    """The live pipeline, or with `replay` the one that reads the dead-letter topics."""
    ledger = OffsetLedger()
    consumer_conf = config.consumer_properties()
    group = config.kafka.group_id
    topics = list(config.topics)
    dlq_topics = {name: topic.dlq_topic for name, topic in config.topics.items()}
    if replay is not None:
        group = consumer_conf["group.id"] = config.replay_group_id
        topics = sorted({t for t, _p in replay.end_offsets})
    parts = PipelineParts(
        source=KafkaSource(
            consumer_conf, topics, ledger, end_offsets=replay.end_offsets if replay is not None else None
        ),
        ledger=ledger,
        decoder=build_decoder(config),
        mapper=mapper or Mapper.from_config(config),
        batcher=Batcher(
            max_events=config.batching.max_events,
            max_bytes=config.batching.max_bytes,
            linger_s=config.batching.linger_ms / 1000,
            clock=time.monotonic,
        ),
        dlq=DeadLetterWriter(
            config.producer_properties(),
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
        ),
        destinations=build_destinations(config),
        destination_topics={
            name: {t for t, topic in config.topics.items() if topic.destination == name}
            for name in config.destinations
        },
        metrics=metrics,
        max_in_flight_events=config.limits.max_in_flight_events,
        max_in_flight_bytes=config.limits.max_in_flight_bytes,
        drain_deadline_s=config.shutdown.drain_deadline_s,
        guard=DeadLetterGuard(GuardLimits(config.dlq.max_ratio, config.dlq.window_s, config.dlq.min_events)),
        policy=replay or LIVE,
    )
    return Pipeline(parts)


class Service:
    """The pipeline plus its /metrics, /healthz, /readyz endpoint."""

    def __init__(
        self, config: AppConfig, mapper: Mapper | None = None, *, replay: ReplayPolicy | None = None
    ) -> None:
        self.config = config
        self.replay = replay
        self.metrics = Metrics()
        self.client = build_client(config)
        self.pipeline = build_pipeline(config, self.metrics, self.client, mapper, replay=replay)
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
            async with self.client:
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
    (modules, schemas, the country index) out of every later collection. See docs/performance.md,
    "Optimisations".
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
