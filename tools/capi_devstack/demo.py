"""`make demo`: the whole product in one command on this machine.

Starts the dev stack (Kafka, Schema Registry, CAPI emulator), produces a few hundred varied order and
subscription events (some deliberately bad), runs the consumer until every record is settled, prints a
summary and shuts everything down (`--keep-running` keeps it up for a look around until Ctrl-C).

`make demo ARGS=--platform` shows platform mode instead: orders of four shops (tenants) on one topic,
routed by `shop_id` to each shop's pixel with its own token from a secrets directory; one shop's
token has expired (its events wait in the parked topic while the others flow), one shop is disabled,
one shop id is unknown; then the expired token is replaced in its secret file and the waiting events
arrive, without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from capi_devstack import DevStack, StackOptions, samples
from consumer import logs
from consumer.app import Service
from consumer.config import load_config

# The service's reader schemas, in the checkout the demo runs from (tools/capi_devstack/ -> ../../schemas).
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
TOKEN = "test-token"
PIXEL = "1234567890"


def _produce(bootstrap: str, registry_url: str, n: int) -> tuple[int, Counter[str]]:
    """Produce `n` good events plus a handful of bad ones; returns (records produced, bad kinds)."""
    registry = SchemaRegistryClient({"url": registry_url})
    topics = {"order": "orders", "subscription": "subscriptions"}
    serializers = {
        kind: AvroSerializer(registry, (SCHEMAS / f"{kind}_event.avsc").read_text()) for kind in topics
    }
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    now_ms = int(time.time() * 1000)
    count = 0

    def send(kind: str, record: dict[str, Any]) -> None:
        nonlocal count
        topic = topics[kind]
        value = serializers[kind](record, SerializationContext(topic, MessageField.VALUE))
        producer.produce(
            topic, key=str(record.get("order_id") or record["subscription_id"]).encode(), value=value
        )
        count += 1

    for sample in samples.mixed(n, now_ms=now_ms, seed=2026):
        send(sample.kind, sample.record)
    bad: Counter[str] = Counter()
    rng = __import__("random").Random(1)
    # Deliberately bad records: each must end in orders.dlq with its reason, none may stop the consumer.
    for i in range(3):
        producer.produce("orders", value=b"this is not avro " + str(i).encode())
        count += 1
        bad["not Avro"] += 1
    old = samples.order(900_001, now_ms=now_ms - 8 * 86_400_000, rng=rng)
    send("order", old)
    bad["8 days old"] += 1
    lonely = samples.order(900_002, now_ms=now_ms, rng=rng)
    lonely["customer"] = {k: None for k in lonely["customer"]} | {"email": "not-an-email"}
    lonely["web_context"] = None
    send("order", lonely)
    bad["only identifier is an invalid email"] += 1
    assert producer.flush(30) == 0
    return count, bad


def _write_config(directory: Path, bootstrap: str, registry_url: str, capi_url: str) -> Path:
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": "capi-demo"},
        "schema_registry": {"url": registry_url},
        "topics": {
            "orders": {
                "kind": "order",
                "reader_schema": str(SCHEMAS / "order_event.avsc"),
                "destination": "shop",
            },
            "subscriptions": {
                "kind": "subscription",
                "reader_schema": str(SCHEMAS / "subscription_event.avsc"),
                "destination": "shop",
            },
        },
        "destinations": {
            "shop": {
                "pixel_id": PIXEL,
                "access_token_env": "CAPI_DEMO_TOKEN",
                "partner_agent": "capi-consumer-demo",
            }
        },
        "capi": {"base_url": capi_url},
        "normalization": {"default_phone_region": "US"},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "shutdown": {"drain_deadline_s": 10},
    }
    path = directory / "demo-config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


SHOPS = {"shop-1": "9001", "shop-2": "9002", "shop-3": "9003", "shop-4": "9004"}
EXPIRED_SHOP, DISABLED_SHOP = "shop-3", "shop-4"


def _post(url: str, body: Any) -> Any:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _platform_setup(directory: Path, bootstrap: str, registry_url: str, capi_url: str) -> tuple[Path, Path]:
    """Tenants file, secrets directory and config of the platform demo; tokens known to the emulator."""
    secrets = directory / "secrets"
    secrets.mkdir()
    tokens = []
    for shop, pixel in SHOPS.items():
        (secrets / shop).write_text(f"tok-{shop}\n")
        tokens.append({"token": f"tok-{shop}", "pixels": [pixel], "expired": shop == EXPIRED_SHOP})
    _post(f"{capi_url}/_emulator/tokens", tokens)
    tenants: dict[str, dict[str, Any]] = {shop: {"pixel_id": pixel} for shop, pixel in SHOPS.items()}
    tenants["shop-2"]["test_event_code"] = "TEST2026"
    tenants[DISABLED_SHOP]["enabled"] = False
    (directory / "tenants.yaml").write_text(yaml.safe_dump(tenants))
    config = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": "capi-demo-platform"},
        "schema_registry": {"url": registry_url},
        "topics": {
            "shop-orders": {
                "kind": "order",
                "reader_schema": str(SCHEMAS / "order_event.avsc"),
                "tenant_field": "shop_id",
            }
        },
        "platform": {
            "partner_agent": "pldemo-1.0-1.0",
            "tenants": {"file": str(directory / "tenants.yaml")},
            "secrets_dir": str(secrets),
            "reload_interval_s": 1,
            "probe_initial_backoff_s": 5,
        },
        "capi": {"base_url": capi_url},
        "normalization": {"default_phone_region": "US"},
        "metrics": {"host": "127.0.0.1", "port": 0},
        "shutdown": {"drain_deadline_s": 10},
    }
    path = directory / "demo-platform.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path, secrets


def _produce_shops(bootstrap: str, registry_url: str, n: int) -> Counter[str]:
    registry = SchemaRegistryClient({"url": registry_url})
    serialize = AvroSerializer(registry, (SCHEMAS / "order_event.avsc").read_text())
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10})
    rng = __import__("random").Random(7)
    now_ms = int(time.time() * 1000)
    shops = [*SHOPS, "shop-unknown"]
    per_shop: Counter[str] = Counter()
    for i in range(n):
        record = samples.order(i, now_ms=now_ms, rng=rng)
        record["shop_id"] = rng.choices(shops, weights=[8, 4, 3, 1, 1])[0]
        per_shop[record["shop_id"]] += 1
        value = serialize(record, SerializationContext("shop-orders", MessageField.VALUE))
        producer.produce("shop-orders", key=record["order_id"].encode(), value=value)
    assert producer.flush(30) == 0
    return per_shop


def _print_tenants(service: Service) -> None:
    for row in service.pipeline.tenant_status()["tenants"]:
        extra = ", ".join(
            f"{k} {row[k]}"
            for k in ("events_waiting", "connection", "last_error", "problem")
            if row.get(k) is not None
        )
        print(f"  {row['tenant']:<13} {row['state']:<9} {extra}")


async def _run_platform(
    config_path: Path, secrets: Path, capi_url: str, per_shop: Counter[str]
) -> tuple[Service, int]:
    service = Service(load_config(config_path))
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    produced = sum(per_shop.values())
    deadline = time.monotonic() + 120
    while service.pipeline.stats.settled < produced and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.2)
    print(f"\nevery record settled; {EXPIRED_SHOP}'s token has expired, so its events wait:")
    _print_tenants(service)
    print(f"\nreplacing {EXPIRED_SHOP}'s token in its secret file (no restart) ...")
    _post(
        f"{capi_url}/_emulator/tokens", {"token": f"tok-{EXPIRED_SHOP}-new", "pixels": [SHOPS[EXPIRED_SHOP]]}
    )
    (secrets / EXPIRED_SHOP).write_text(f"tok-{EXPIRED_SHOP}-new\n")
    started = time.monotonic()
    want = per_shop[EXPIRED_SHOP]
    while time.monotonic() - started < 60 and not task.done():
        got = len(_get(f"{capi_url}/_emulator/events?pixel={SHOPS[EXPIRED_SHOP]}")["events"])
        if got >= want:
            break
        await asyncio.sleep(0.5)
    took = time.monotonic() - started
    print(f"{EXPIRED_SHOP}'s {want} waiting events arrived {took:.1f}s after the new token:")
    _print_tenants(service)
    stop.set()
    return service, await task


def _platform_demo(tmp: Path, ep: Any, events: int) -> int:
    admin = AdminClient({"bootstrap.servers": ep.bootstrap_servers})
    new = [NewTopic("shop-orders", num_partitions=4, replication_factor=1)]
    new += [NewTopic("shop-orders.dlq", num_partitions=1, replication_factor=1)]
    for future in admin.create_topics(new).values():
        future.result(30)
    del admin
    config_path, secrets = _platform_setup(
        tmp, ep.bootstrap_servers, ep.schema_registry_url, ep.capi_base_url
    )
    per_shop = _produce_shops(ep.bootstrap_servers, ep.schema_registry_url, events)
    print(f"produced {sum(per_shop.values())} orders: {dict(sorted(per_shop.items()))}")
    service, code = asyncio.run(_run_platform(config_path, secrets, ep.capi_base_url, per_shop))
    received = {
        shop: len(_get(f"{ep.capi_base_url}/_emulator/events?pixel={px}")["events"])
        for shop, px in SHOPS.items()
    }
    stats = service.pipeline.stats
    print("\n== summary ==")
    print(f"events received by each shop's pixel: {received}")
    print(f"filtered: {dict(stats.filtered)}; dead-lettered (shop-orders.dlq): {dict(stats.dead_lettered)}")
    print(
        f"parked copies written while {EXPIRED_SHOP} was refused: {stats.parked}; consumer exit code {code}"
    )
    sendable = {shop: n for shop, n in per_shop.items() if shop in SHOPS and shop != DISABLED_SHOP}
    ok = code == 0 and all(received[shop] >= n for shop, n in sendable.items())
    return 0 if ok else 1


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


async def _run(config_path: Path, produced: int, keep_running: bool, capi_url: str) -> tuple[Service, int]:
    config = load_config(config_path)
    service = Service(config)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    deadline = time.monotonic() + 120
    while service.pipeline.stats.settled < produced and time.monotonic() < deadline and not task.done():
        await asyncio.sleep(0.2)
    if keep_running:
        print(f"\nmetrics:   http://127.0.0.1:{service.metrics_port}/metrics")
        print(f"emulator:  {capi_url}/_emulator/events?pixel={PIXEL}   (Ctrl-C to stop)")
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
    stop.set()
    return service, await task


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__)
    parser.add_argument("--events", type=int, default=400, help="good events to produce")
    parser.add_argument("--keep-running", action="store_true", help="stay up until Ctrl-C after settling")
    parser.add_argument("--platform", action="store_true", help="platform mode: four shops, one parked")
    args = parser.parse_args(argv)
    logs.setup(os.environ.get("CAPI_LOG_LEVEL", "WARNING"))
    os.environ["CAPI_DEMO_TOKEN"] = TOKEN
    started = time.monotonic()
    with (
        tempfile.TemporaryDirectory(prefix="capi-demo-") as tmp,
        DevStack(StackOptions(with_emulator=True)) as stack,
    ):
        ep = stack.endpoints
        assert ep is not None and ep.schema_registry_url is not None and ep.capi_base_url is not None
        print(f"dev stack up in {time.monotonic() - started:.1f}s: {ep.as_json()}")
        if args.platform:
            code = _platform_demo(Path(tmp), ep, args.events)
            print(f"finished in {time.monotonic() - started:.1f}s")
            return code
        admin = AdminClient({"bootstrap.servers": ep.bootstrap_servers})
        new = [NewTopic(t, num_partitions=4, replication_factor=1) for t in ("orders", "subscriptions")]
        new += [
            NewTopic(t + ".dlq", num_partitions=1, replication_factor=1) for t in ("orders", "subscriptions")
        ]
        for future in admin.create_topics(new).values():
            future.result(30)
        del admin  # close its connections now, not after the dev stack is gone
        produced, bad = _produce(ep.bootstrap_servers, ep.schema_registry_url, args.events)
        print(f"produced {produced} records ({sum(bad.values())} deliberately bad: {dict(bad)})")
        config_path = _write_config(Path(tmp), ep.bootstrap_servers, ep.schema_registry_url, ep.capi_base_url)
        try:
            service, code = asyncio.run(_run(config_path, produced, args.keep_running, ep.capi_base_url))
        except KeyboardInterrupt:
            return 130
        stats = service.pipeline.stats
        emulator_stats = _get(f"{ep.capi_base_url}/_emulator/stats")
        print("\n== summary ==")
        print(f"consumed {stats.consumed}, settled {stats.settled}, consumer exit code {code}")
        print("sent to Meta (accepted), per event name:")
        for name, count in sorted(stats.accepted.items()):
            print(f"  {name:<12} {count}")
        print("not sent on purpose (filtered), per reason:")
        for reason, count in sorted(stats.filtered.items()):
            print(f"  {reason:<28} {count}")
        print("dead-lettered (orders.dlq / subscriptions.dlq), per reason:")
        for reason, count in sorted(stats.dead_lettered.items()):
            print(f"  {reason:<28} {count}")
        received, requests = emulator_stats.get("events_received"), emulator_stats.get("requests")
        print(f"emulator: {received} events received in {requests} requests")
        print(
            f"where to look: {ep.capi_base_url}/_emulator/events?pixel={PIXEL}, "
            f"{ep.capi_base_url}/_emulator/requests, metrics on /metrics of the consumer "
            "(run `make demo ARGS=--keep-running` to keep them up)"
        )
        print(f"finished in {time.monotonic() - started:.1f}s at {dt.datetime.now(dt.UTC):%H:%M:%S} UTC")
        ok = code == 0 and stats.settled == produced
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
