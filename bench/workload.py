"""The benchmark's workload: canonical order events (three line items, varied PII) and their encodings.

Shared by the harness (`bench.run`), the SDK baseline, the decode ceiling and the in-process hot-path
benchmark (`bench.hotpath`), so every scenario reads exactly the same records.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
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


def orders(n: int, *, now_ms: int, start: int = 0, seed: int = 2026) -> Iterator[dict[str, Any]]:
    """`n` canonical `placed` orders with three line items and the varied PII of `capi_devstack.samples`.

    Customers repeat (5,000 distinct e-mails), phones are random per order, a third of the orders have
    no birthday, a quarter no web context: the normalization cache sees a realistic mix of hits and misses.
    """
    rng = random.Random(seed + start)
    for i in range(start, start + n):
        yield samples.order(i, now_ms=now_ms, rng=rng, event_type="placed", items=3)


def avro_bytes(schema: Any, record: dict[str, Any]) -> bytes:
    """Plain Avro binary (no Confluent header)."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def wire_format(schema_id: int, payload: bytes) -> bytes:
    """Confluent wire format: magic byte 0, 4-byte big-endian schema ID, Avro binary."""
    return b"\x00" + schema_id.to_bytes(4, "big") + payload
