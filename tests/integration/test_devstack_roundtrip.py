"""The dev stack's real broker and registry: Confluent wire format through a consumer group."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from capi_devstack import Endpoints
from tests.integration.pipeline_helpers import registry_client

pytestmark = pytest.mark.integration

SCHEMA = """
{"type": "record", "name": "Ping", "namespace": "test.devstack",
 "fields": [{"name": "id", "type": "long"}, {"name": "note", "type": "string"}]}
"""


def test_avro_records_roundtrip_through_consumer_group(
    devstack: Endpoints, make_topic: Callable[..., str]
) -> None:
    topic = make_topic("roundtrip", partitions=4)
    registry = registry_client(devstack.schema_registry_url)
    serializer = AvroSerializer(registry, SCHEMA)
    deserializer = AvroDeserializer(registry)

    producer = Producer({"bootstrap.servers": devstack.bootstrap_servers, "enable.idempotence": True})
    ctx = SerializationContext(topic, MessageField.VALUE)
    for i in range(1000):
        value = serializer({"id": i, "note": f"n{i}"}, ctx)
        assert value is not None and value[0] == 0  # Confluent magic byte
        producer.produce(topic, key=str(i).encode(), value=value)
    assert producer.flush(30) == 0

    # The registry knows the subject and serves the schema back by the ID embedded in the records.
    assert f"{topic}-value" in registry.get_subjects()
    schema_id = int.from_bytes(value[1:5], "big")
    schema_str = registry.get_schema(schema_id).schema_str
    assert schema_str is not None and "Ping" in schema_str

    consumer = Consumer(
        {
            "bootstrap.servers": devstack.bootstrap_servers,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    seen: dict[int, int] = {}
    partitions: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(seen) < 1000 and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None:
                continue
            assert msg.error() is None, msg.error()
            record = deserializer(msg.value(), SerializationContext(topic, MessageField.VALUE))
            seen[record["id"]] = seen.get(record["id"], 0) + 1
            partition = msg.partition()
            assert partition is not None
            partitions.add(partition)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert sorted(seen) == list(range(1000))
    assert partitions == {0, 1, 2, 3}
