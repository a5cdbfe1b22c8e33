"""Shared helpers of the pipeline integration tests: config files, producing samples, running the consumer."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import fastavro
import yaml
from confluent_kafka import Message, Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from capi_devstack import Endpoints
from capi_devstack.samples import Sample

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = {
    "order": REPO / "schemas" / "order_event.avsc",
    "subscription": REPO / "schemas" / "subscription_event.avsc",
}
TOKEN = "test-token"
PIXEL = "1234567890"


def header_pairs(msg: Message) -> list[tuple[str, bytes]]:
    """A consumed record's headers as (name, bytes) pairs; the client may hand them over as a dict or str."""
    raw = msg.headers() or []
    items = raw.items() if isinstance(raw, dict) else raw
    return [(k, v if isinstance(v, bytes) else (v or "").encode()) for k, v in items]


def write_config(
    tmp_path: Path,
    stack: Endpoints,
    capi_base_url: str,
    topics: dict[str, str],
    *,
    group_id: str,
    extra: dict[str, Any] | None = None,
) -> Path:
    """A consumer config for `topics` (name -> kind) sending everything to PIXEL."""
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": stack.bootstrap_servers, "group_id": group_id},
        "schema_registry": {"url": stack.schema_registry_url},
        "topics": {
            name: {"kind": kind, "reader_schema": str(SCHEMAS[kind]), "destination": "main"}
            for name, kind in topics.items()
        },
        "destinations": {"main": {"pixel_id": PIXEL, "access_token_env": "CAPI_ACCESS_TOKEN"}},
        "capi": {"base_url": capi_base_url, "timeout_s": 5.0},
        "batching": {"linger_ms": 100},
        "metrics": {"port": 0, "host": "127.0.0.1"},
        "shutdown": {"drain_deadline_s": 10},
    }
    for key, value in (extra or {}).items():
        config.setdefault(key, {}).update(value)
    path = tmp_path / f"config-{group_id}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def registry_client(url: str | None) -> SchemaRegistryClient:
    """The tests' registry client: a request that gets no answer in 30 s is sent again (the client's
    own default waits forever, so a stalled registry would hang a test until its timeout)."""
    assert url is not None
    return SchemaRegistryClient({"url": url, "timeout": 30})


def produce(stack: Endpoints, samples: Iterable[Sample], topics: dict[str, str]) -> int:
    """Produce samples in Confluent wire format to the topic of their kind; returns the count."""
    registry = registry_client(stack.schema_registry_url)
    by_kind = {kind: name for name, kind in topics.items()}
    serializers = {kind: AvroSerializer(registry, SCHEMAS[kind].read_text()) for kind in by_kind}
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers, "linger.ms": 20})
    count = 0
    for sample in samples:
        topic = by_kind[sample.kind]
        value = serializers[sample.kind](sample.record, SerializationContext(topic, MessageField.VALUE))
        key = str(sample.record.get("order_id") or sample.record.get("subscription_id")).encode()
        producer.produce(topic, key=key, value=value)
        count += 1
        if count % 1000 == 0:
            producer.poll(0)
    assert producer.flush(60) == 0
    del producer  # close its connections now, not when the broker is already gone
    return count


def produce_raw(stack: Endpoints, topic: str, values: Iterable[bytes]) -> None:
    producer = Producer({"bootstrap.servers": stack.bootstrap_servers})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0
    del producer  # close its connections now, not when the broker is already gone


def avro_roundtrip(kind: str, record: dict[str, Any]) -> dict[str, Any]:
    """The record as the consumer sees it after decoding (datetime, Decimal, date types)."""
    schema = fastavro.parse_schema(json.loads(SCHEMAS[kind].read_text()))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    buf.seek(0)
    decoded = fastavro.schemaless_reader(buf, schema, None)
    assert isinstance(decoded, dict)
    return decoded


class ConsumerProcess:
    """`capi-consumer run` as a real child process."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumer", "run", "--config", str(config)],
            env={**os.environ, "CAPI_ACCESS_TOKEN": TOKEN, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def terminate(self, timeout_s: float = 60) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout_s)
        self._log.close()
        return code

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def emulator_events(base_url: str, pixel: str = PIXEL) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{base_url}/_emulator/events?pixel={pixel}", timeout=10) as resp:
        events: list[dict[str, Any]] = json.loads(resp.read())["events"]
        return events


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.5) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def committed_total(bootstrap: str, group_id: str, topic: str, partitions: int) -> int:
    """Sum of committed offsets of `group_id` on `topic`."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group_id, "enable.auto.commit": False})
    try:
        offsets = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    finally:
        consumer.close()
    return sum(max(tp.offset, 0) for tp in offsets)


def _admin(base_url: str, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"{base_url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        raw = resp.read()
        return json.loads(raw) if raw else None


def add_fault(base_url: str, spec: dict[str, Any]) -> Any:
    return _admin(base_url, "POST", "/_emulator/faults", spec)


def clear_faults(base_url: str) -> Any:
    return _admin(base_url, "DELETE", "/_emulator/faults")


# -- the consumer's operator endpoint (/metrics, /healthz, /readyz)
MetricSamples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_port(consumer: ConsumerProcess, timeout_s: float = 60) -> int:
    """The port the consumer's metrics endpoint bound (configs use port 0), read from its JSON log."""
    found: list[int] = []

    def listening() -> bool:
        for line in consumer.log().splitlines():
            if '"metrics endpoint listening"' in line:
                found.append(int(json.loads(line)["port"]))
                return True
        if consumer.proc.poll() is not None:
            raise AssertionError(f"consumer exited with {consumer.proc.returncode}: {consumer.log()[-3000:]}")
        return False

    wait_for(listening, timeout_s, "the metrics endpoint", interval_s=0.2)
    return found[0]


def http_get(url: str, timeout_s: float = 10) -> tuple[int, bytes]:
    """(status, body), also for 4xx/5xx answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def scrape(port: int, host: str = "127.0.0.1") -> MetricSamples:
    """Every sample of GET /metrics: (sample name, labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = http_get(f"http://{host}:{port}/metrics")
    assert status == 200, body[:500]
    samples: MetricSamples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric_sum(samples: MetricSamples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(value for (n, lbls), value in samples.items() if n == name and want <= lbls)


def metric_by(samples: MetricSamples, name: str, label: str, **labels: str) -> dict[str, float]:
    """`name` summed per value of `label` (among samples whose labels include `labels`)."""
    want = set(labels.items())
    result: dict[str, float] = {}
    for (n, lbls), value in samples.items():
        if n == name and want <= lbls:
            key = dict(lbls).get(label, "")
            result[key] = result.get(key, 0.0) + value
    return result
