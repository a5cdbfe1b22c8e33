"""The benchmark's workload: canonical order events (three line items, varied PII) and their encodings.

Shared by the harness (`bench.run`), the SDK baseline, the decode ceiling and the in-process hot-path
benchmark (`bench.hotpath`), so every scenario reads exactly the same records.
"""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fastavro

from capi_devstack import samples

REPO = Path(__file__).resolve().parents[1]
ORDER_SCHEMA_PATH = REPO / "schemas" / "order_event.avsc"
PIXEL = "1234567890"
TOKEN = "test-token"


def order_schema() -> Any:
    return fastavro.parse_schema(json.loads(ORDER_SCHEMA_PATH.read_text()))


def orders(
    n: int, *, now_ms: int, start: int = 0, seed: int = 2026, shops: Sequence[str] | None = None
) -> Iterator[dict[str, Any]]:
    """`n` canonical `placed` orders with three line items and the varied PII of `capi_devstack.samples`.

    Customers repeat (5,000 distinct e-mails), phones are random per order, a third of the orders have
    no birthday, a quarter no web context: the normalization cache sees a realistic mix of hits and misses.
    `shops` (platform mode): the `shop_id` (tenant) of each order in turn; everything else is the same
    as without it.
    """
    rng = random.Random(seed + start)
    for k, i in enumerate(range(start, start + n)):
        record = samples.order(i, now_ms=now_ms, rng=rng, event_type="placed", items=3)
        if shops is not None:
            record["shop_id"] = shops[k]
        yield record


# --- platform mode: many tenants ------------------------------------------------------------------------

TENANT_ZIPF_EXPONENT = 1.1
"""Popularity of the tenant of rank k is proportional to 1 / k**1.1 (a few big shops, a long tail)."""


def tenant_id(rank: int) -> str:
    """The `shop_id` of the tenant of popularity rank `rank` (1 = the biggest)."""
    return f"shop-{rank:05d}"


def tenant_pixel(rank: int) -> str:
    return str(7_000_000_000_000 + rank)


def tenant_token(rank: int) -> str:
    return f"bench-tenant-{rank:05d}-token"


def draw_tenants(count: int, n: int, *, seed: int, exponent: float = TENANT_ZIPF_EXPONENT) -> list[str]:
    """`n` tenant ids drawn from `count` tenants with Zipf-like popularity (weight 1/rank**exponent),
    reproducible for a seed."""
    ranks = range(1, count + 1)
    cumulative = list(itertools.accumulate(1 / r**exponent for r in ranks))
    ids = [tenant_id(r) for r in ranks]
    return random.Random(seed).choices(ids, cum_weights=cumulative, k=n)


def avro_bytes(schema: Any, record: dict[str, Any]) -> bytes:
    """Plain Avro binary (no Confluent header)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def wire_format(schema_id: int, payload: bytes) -> bytes:
    """Confluent wire format: magic byte 0, 4-byte big-endian schema ID, Avro binary."""
    return b"\x00" + schema_id.to_bytes(4, "big") + payload
