"""The loop scenarios of tests/unit/test_loop.py, with `KafkaSource` on the real broker instead of the
in-memory source: the same assertions hold for both (pauses, commits, parking)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from capi_devstack import Endpoints
from consumer.offsets import OffsetLedger, TopicPartitionKey
from consumer.source import KafkaSource, PartitionSource
from tests.unit.test_loop import (
    a_parked_destination_holds_its_events_while_the_other_flows,
    every_record_is_delivered_in_batches_and_committed,
)

pytestmark = pytest.mark.integration


class KafkaBackend:
    """Topics, records and committed offsets on the dev stack's broker (names unique per test)."""

    def __init__(self, stack: Endpoints, admin: AdminClient) -> None:
        self._bootstrap = stack.bootstrap_servers
        self._admin = admin
        self._suffix = uuid.uuid4().hex[:8]
        self._producer = Producer({"bootstrap.servers": self._bootstrap})
        self._topics: dict[str, int] = {}

    def topic(self, name: str) -> str:
        return f"{name}-{self._suffix}"

    def group(self, group: str) -> str:
        return f"{group}-{self._suffix}"

    def create(self, topic: str, partitions: int) -> None:
        if topic in self._topics:
            return
        futures = self._admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
        futures[topic].result(timeout=30)
        self._topics[topic] = partitions

    def append(
        self,
        topic: str,
        partition: int,
        value: bytes | None,
        *,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        pairs: list[tuple[str, str | bytes | None]] = list(headers or [])
        self._producer.produce(topic, value=value, key=key, partition=partition, headers=pairs)
        assert self._producer.flush(30) == 0

    def source(
        self,
        topics: Sequence[str],
        ledger: OffsetLedger,
        *,
        group: str,
        end_offsets: Mapping[TopicPartitionKey, int] | None,
        max_per_poll: int,
    ) -> PartitionSource:
        conf = {
            "bootstrap.servers": self._bootstrap,
            "group.id": self.group(group),
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": 100,
            "auto.offset.reset": "earliest",
            "partition.assignment.strategy": "cooperative-sticky",
        }
        return KafkaSource(conf, list(topics), ledger, end_offsets=end_offsets)

    def committed_offsets(self, group: str) -> dict[TopicPartitionKey, int]:
        reader = Consumer({"bootstrap.servers": self._bootstrap, "group.id": self.group(group)})
        try:
            keys = [TopicPartition(t, p) for t, n in self._topics.items() for p in range(n)]
            offsets = reader.committed(keys, timeout=10)
        finally:
            reader.close()
        return {(tp.topic, tp.partition): tp.offset for tp in offsets if tp.offset >= 0}


@pytest.fixture
def backend(devstack: Endpoints, kafka_admin: AdminClient) -> Iterator[KafkaBackend]:
    yield KafkaBackend(devstack, kafka_admin)


def run(scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(scenario, timeout=120))


def test_every_record_is_delivered_in_batches_and_committed_on_the_real_broker(backend: KafkaBackend) -> None:
    run(every_record_is_delivered_in_batches_and_committed(backend))


def test_a_parked_destination_holds_its_events_on_the_real_broker(backend: KafkaBackend) -> None:
    run(a_parked_destination_holds_its_events_while_the_other_flows(backend))
