"""Platform mode against the real broker, registry and emulator (issue 14's acceptance).

300 tenants share one 6-partition topic with Zipf-like traffic. One tenant's token expires
mid-stream: the others keep arriving with their usual latency, its events wait in the parked topic,
and once its token is replaced in its secret file they all arrive, none lost, none dead-lettered, no
restart. Tenants come and go through the registry topic and the tenants file while the service runs.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from capi_devstack import Endpoints
from capi_devstack.samples import Sample, order
from capi_emulator import EmulatorConfig, TokenConfig, start_in_thread
from capi_emulator.server import RunningEmulator
from tests.integration.pipeline_helpers import (
    SCHEMAS,
    ConsumerProcess,
    committed_total,
    http_get,
    metrics_port,
    produce,
    registry_client,
    wait_for,
)
from tests.integration.test_failures import read_dlq

pytestmark = pytest.mark.integration

TENANTS = 300
PARTITIONS = 6
RATE = 150  # events/s while pacing
SECONDS = 14
VICTIM = "t002"  # the third most popular tenant


def tenant_id(i: int) -> str:
    return f"t{i:03d}"


def pixel_of(i: int) -> str:
    return str(9000 + i)


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    tokens = {f"tok-{tenant_id(i)}": TokenConfig(pixels=[pixel_of(i)]) for i in range(TENANTS)}
    with start_in_thread(EmulatorConfig(tokens=tokens)) as emu:
        yield emu


def _admin(emu: RunningEmulator, path: str, body: Any) -> Any:
    import urllib.request

    req = urllib.request.Request(
        f"{emu.base_url}/_emulator/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _events(emu: RunningEmulator) -> dict[str, float]:
    """event_id -> received_at of every event the emulator accepted (first receipt)."""
    status, body = http_get(f"{emu.base_url}/_emulator/events")
    assert status == 200
    seen: dict[str, float] = {}
    for e in json.loads(body)["events"]:
        seen.setdefault(e["event"]["event_id"], e["received_at"])
    return seen


@dataclass
class Platform:
    root: Path
    config: Path
    secrets: Path
    tenants_file: Path


def _platform(
    tmp_path: Path, stack: Endpoints, base_url: str, topic: str, group: str, **platform: Any
) -> Platform:
    root = tmp_path / group
    secrets = root / "secrets"
    secrets.mkdir(parents=True)
    for i in range(TENANTS):
        (secrets / tenant_id(i)).write_text(f"tok-{tenant_id(i)}\n")
    tenants_file = root / "tenants.yaml"
    tenants_file.write_text(yaml.safe_dump({tenant_id(i): {"pixel_id": pixel_of(i)} for i in range(TENANTS)}))
    config = {
        "kafka": {"bootstrap_servers": stack.bootstrap_servers, "group_id": group},
        "schema_registry": {"url": stack.schema_registry_url},
        "topics": {
            topic: {"kind": "order", "reader_schema": str(SCHEMAS["order"]), "tenant_field": "shop_id"}
        },
        "platform": {
            "partner_agent": "pltest-1.0-1.0",
            "tenants": {"file": str(tenants_file), **platform.pop("tenants", {})},
            "secrets_dir": str(secrets),
            "reload_interval_s": 0.5,
            "probe_initial_backoff_s": 2,
            "probe_max_backoff_s": 10,
            "parked_pass_interval_s": 5,
            **platform,
        },
        "capi": {
            "base_url": base_url,
            "timeout_s": 5,
            "retry_initial_backoff_s": 0.2,
            "retry_max_backoff_s": 2,
        },
        "batching": {"linger_ms": 100},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "shutdown": {"drain_deadline_s": 10},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return Platform(root, path, secrets, tenants_file)


def _zipf(rng: random.Random, n: int) -> list[str]:
    weights = [1 / (rank + 1) ** 1.1 for rank in range(TENANTS)]
    return [tenant_id(i) for i in rng.choices(range(TENANTS), weights=weights, k=n)]


class _OrderProducer:
    """One producer and one registry client for a whole paced run (a client per batch exhausts the
    registry's connections)."""

    def __init__(self, stack: Endpoints, topic: str) -> None:
        self._registry = registry_client(stack.schema_registry_url)
        self._serialize = AvroSerializer(self._registry, SCHEMAS["order"].read_text())
        self._producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 5})
        self._topic = topic

    def send(self, records: list[dict[str, Any]]) -> None:
        context = SerializationContext(self._topic, MessageField.VALUE)
        for record in records:
            self._producer.produce(
                self._topic, key=record["order_id"].encode(), value=self._serialize(record, context)
            )
        assert self._producer.flush(30) == 0


def _paced(
    stack: Endpoints, topic: str, seed: int, *, on_second: dict[int, Any] | None = None
) -> dict[str, tuple[str, float]]:
    """Produce RATE orders/s for SECONDS s; returns order id -> (tenant, produce time)."""
    rng = random.Random(seed)
    now_ms = int(time.time() * 1000)
    producer = _OrderProducer(stack, topic)
    produced: dict[str, tuple[str, float]] = {}
    started = time.monotonic()
    tick = RATE // 10
    for step in range(SECONDS * 10):
        if on_second and step % 10 == 0 and step // 10 in on_second:
            on_second[step // 10]()
        records: list[dict[str, Any]] = []
        for shop in _zipf(rng, tick):
            record = order(len(produced) + len(records) + seed * 100_000, now_ms=now_ms, rng=rng)
            record["shop_id"] = shop
            records.append(record)
        producer.send(records)
        at = time.time()
        for record in records:
            produced[record["order_id"]] = (record["shop_id"], at)
        time.sleep(max(0.0, started + (step + 1) / 10 - time.monotonic()))
    return produced


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(0.99 * (len(ordered) - 1))]


def test_one_tenants_expired_token_stalls_no_one_and_loses_nothing(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, kafka_admin: AdminClient
) -> None:
    def topic(name: str) -> str:
        real = f"{name}-{uuid.uuid4().hex[:8]}"
        kafka_admin.create_topics([NewTopic(real, num_partitions=PARTITIONS, replication_factor=1)])[
            real
        ].result(30)
        return real

    def others_p99(produced: dict[str, tuple[str, float]], received: dict[str, float]) -> float:
        return _p99([received[i] - at for i, (shop, at) in produced.items() if shop != VICTIM])

    # 1. The same run without the fault: the latency to compare with.
    base_topic = topic("shop-orders")
    base = _platform(tmp_path, devstack, emulator.base_url, base_topic, "g-base")
    consumer = ConsumerProcess(base.config, base.root / "consumer.log")
    try:
        metrics_port(consumer)
        wait_for(lambda: '"partitions assigned"' in consumer.log(), 60, "the consumer's partitions")
        produced = _paced(devstack, base_topic, seed=1)
        wait_for(lambda: set(produced) <= set(_events(emulator)), 60, "the baseline run's events")
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    baseline = others_p99(produced, _events(emulator))

    # 2. The victim's token expires four seconds into the stream.
    fault_topic = topic("shop-orders")
    run = _platform(tmp_path, devstack, emulator.base_url, fault_topic, "g-fault")
    consumer = ConsumerProcess(run.config, run.root / "consumer.log")
    try:
        port = metrics_port(consumer)
        wait_for(lambda: '"partitions assigned"' in consumer.log(), 60, "the consumer's partitions")
        expire = {4: lambda: _admin(emulator, "tokens", {"token": f"tok-{VICTIM}", "expired": True})}
        produced = _paced(devstack, fault_topic, seed=2, on_second=expire)
        others = {i for i, (shop, _at) in produced.items() if shop != VICTIM}
        victims = set(produced) - others
        wait_for(lambda: others <= set(_events(emulator)), 60, "the other tenants' events")
        received = _events(emulator)
        faulted = others_p99(produced, received)
        print(f"\np99 of the {TENANTS - 1} others: {baseline:.3f}s without the fault, {faulted:.3f}s with it")
        assert faulted <= 2 * max(baseline, 0.25), (baseline, faulted)
        assert len(victims - set(received)) > 0, "the victim lost nothing because it sent nothing: no test"
        status, body = http_get(f"http://127.0.0.1:{port}/tenants?state=parked")
        assert status == 200
        assert [t["tenant"] for t in json.loads(body)["tenants"]] == [VICTIM]

        # 3. The operator replaces the token (a new secret; Meta knows the new token): no restart.
        _admin(emulator, "tokens", {"token": f"tok-{VICTIM}-new", "pixels": [pixel_of(2)]})
        (run.secrets / VICTIM).write_text(f"tok-{VICTIM}-new\n")
        wait_for(lambda: victims <= set(_events(emulator)), 60, "the victim's parked events")
        wait_for(
            lambda: (
                committed_total(devstack.bootstrap_servers, "g-fault", fault_topic, PARTITIONS)
                == len(produced)
            ),
            30,
            "the source topic committed to its end",
        )
        status, body = http_get(f"http://127.0.0.1:{port}/tenants")
        row = next(t for t in json.loads(body)["tenants"] if t["tenant"] == VICTIM)
        assert row["state"] == "ok" and row["connection"] == "ok", row
        assert consumer.proc.poll() is None, "the service restarted"
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert set(produced) <= set(_events(emulator))  # 0 lost
    assert read_dlq(devstack.bootstrap_servers, f"{fault_topic}.dlq", 0, timeout_s=3) == []  # 0 dead-lettered
    assert "tok-" not in consumer.log()  # no token in the logs


def test_registry_topic_and_file_change_while_the_service_runs(
    tmp_path: Path, devstack: Endpoints, emulator: RunningEmulator, kafka_admin: AdminClient
) -> None:
    suffix = uuid.uuid4().hex[:8]
    source, registry = f"shop-orders-{suffix}", f"capi-tenants-{suffix}"
    futures = kafka_admin.create_topics(
        [
            NewTopic(source, num_partitions=2, replication_factor=1),
            NewTopic(registry, num_partitions=1, replication_factor=1, config={"cleanup.policy": "compact"}),
        ]
    )
    for future in futures.values():
        future.result(30)
    publisher = Producer({"bootstrap.servers": devstack.bootstrap_servers})

    def publish(tenant: str, entry: dict[str, Any] | None) -> None:
        publisher.produce(registry, key=tenant, value=None if entry is None else json.dumps(entry).encode())
        assert publisher.flush(10) == 0

    publish(tenant_id(10), {"pixel_id": pixel_of(10)})
    publish(tenant_id(11), {"pixel_id": pixel_of(11)})
    publish("leaky", {"pixel_id": "9999", "access_token": "EAAB-do-not-use"})
    run = _platform(tmp_path, devstack, emulator.base_url, source, "g-registry", tenants={"topic": registry})
    run.tenants_file.write_text(yaml.safe_dump({tenant_id(20): {"pixel_id": pixel_of(20)}}))
    rng = random.Random(3)
    now_ms = int(time.time() * 1000)

    def orders_for(shop: str, n: int) -> set[str]:
        samples = []
        for _ in range(n):
            record = order(rng.randrange(10**9), now_ms=now_ms, rng=rng)
            record["shop_id"] = shop
            samples.append(Sample("order", record))
        produce(devstack, samples, {source: "order"})
        return {s.record["order_id"] for s in samples}

    consumer = ConsumerProcess(run.config, run.root / "consumer.log")
    try:
        port = metrics_port(consumer)
        first = orders_for(tenant_id(10), 5) | orders_for(tenant_id(20), 5)
        late = orders_for(tenant_id(30), 3)  # not in the registry yet: dead-lettered as unknown_tenant
        wait_for(lambda: first <= set(_events(emulator)), 30, "events of the registered tenants")
        dlq = read_dlq(devstack.bootstrap_servers, f"{source}.dlq", 3)
        assert sorted(r["headers"]["reason"] for r in dlq) == ["unknown_tenant"] * 3
        _status, body = http_get(f"http://127.0.0.1:{port}/tenants")
        rows = {t["tenant"]: t for t in json.loads(body)["tenants"]}
        assert rows["leaky"]["state"] == "invalid" and "plaintext token refused" in rows["leaky"]["problem"]
        assert "EAAB-do-not-use" not in body.decode() + consumer.log()

        # A tenant added to the topic, one added to the file, one removed from the topic.
        publish(tenant_id(30), {"pixel_id": pixel_of(30)})
        run.tenants_file.write_text(
            yaml.safe_dump(
                {tenant_id(20): {"pixel_id": pixel_of(20)}, tenant_id(21): {"pixel_id": pixel_of(21)}}
            )
        )
        publish(tenant_id(11), None)
        started = time.monotonic()

        def registry_changed() -> bool:
            rows = json.loads(http_get(f"http://127.0.0.1:{port}/tenants")[1])["tenants"]
            ok = {t["tenant"] for t in rows if t["state"] == "ok"}
            return ok == {tenant_id(10), tenant_id(20), tenant_id(21), tenant_id(30)}

        wait_for(
            registry_changed,
            20,
            "the registry changes",
        )
        added = orders_for(tenant_id(30), 4) | orders_for(tenant_id(21), 4)
        removed = orders_for(tenant_id(11), 2)
        wait_for(lambda: added <= set(_events(emulator)), 30, "events of the added tenants")
        print(f"\nregistry changes took effect within {time.monotonic() - started:.1f}s")
        wait_for(
            lambda: len(read_dlq(devstack.bootstrap_servers, f"{source}.dlq", 5, timeout_s=3)) == 5, 30, "DLQ"
        )
        assert not (removed & set(_events(emulator)))
    finally:
        assert consumer.terminate() == 0, consumer.log()[-3000:]
    assert late.isdisjoint(_events(emulator))
    # Replay sends the unknown tenant's events now that it exists; the removed tenant's fail again.
    replay = subprocess.run(
        [sys.executable, "-m", "consumer", "replay", "--config", str(run.config)],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert replay.returncode == 1, replay.stderr[-3000:]
    assert "replayed 3 " in replay.stderr and "failed again 2 " in replay.stderr, replay.stderr[-2000:]
    assert late <= set(_events(emulator))
