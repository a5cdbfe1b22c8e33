"""Pieces the benchmark's own worker processes share (decode ceiling, SDK baseline)."""

from __future__ import annotations

import io
import json
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import fastavro
from confluent_kafka import KafkaError, Message, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient


class WireDecoder:
    """Confluent wire format -> dict with fastavro, writer schemas fetched once per schema ID."""

    def __init__(self, registry_url: str) -> None:
        self._registry = SchemaRegistryClient({"url": registry_url})
        self._schemas: dict[int, Any] = {}

    def decode(self, value: bytes) -> Any:
        schema_id = int.from_bytes(value[1:5], "big")
        schema = self._schemas.get(schema_id)
        if schema is None:
            text = str(self._registry.get_schema(schema_id).schema_str)
            schema = self._schemas[schema_id] = fastavro.parse_schema(json.loads(text))
        buf = io.BytesIO(value)
        buf.seek(5)
        return fastavro.schemaless_reader(buf, schema, None)


class StopFlag:
    """Set by SIGTERM/SIGINT; workers finish their current step and exit."""

    def __init__(self) -> None:
        self.stopped = False
        signal.signal(signal.SIGTERM, self._set)
        signal.signal(signal.SIGINT, self._set)

    def _set(self, *_: object) -> None:
        self.stopped = True


class AnnounceAssignment:
    """`on_assign` for `Consumer.subscribe`: one JSON line on stdout when the first partitions are
    assigned, the harness's start of the clock. capi-consumer's clock starts at the same moment (its
    "partitions assigned" log line), so every scenario's window includes the time from assignment to
    the first fetched record."""

    def __init__(self) -> None:
        self._announced = False

    def __call__(self, _consumer: Any, partitions: list[TopicPartition]) -> None:
        if partitions and not self._announced:
            self._announced = True
            print(json.dumps({"assigned": time.time()}), flush=True)


def records(messages: list[Message]) -> Iterator[Message]:
    """The records among consumed messages: partition EOFs skipped, any other Kafka error fatal."""
    for msg in messages:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                fail(f"kafka error: {err.str()}")
            continue
        yield msg


def fail(message: str) -> None:
    print(json.dumps({"error": message}), flush=True)
    sys.exit(1)
