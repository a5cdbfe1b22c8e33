"""Decoding through the real registry: older and newer compatible writer schemas resolve to the reader."""

from __future__ import annotations

import io
import json
import random
import time
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema

from capi_devstack import Endpoints
from capi_devstack.samples import order
from consumer.decode import Decoder, parse_schema
from consumer.errors import PipelineError
from tests.integration.pipeline_helpers import registry_client

pytestmark = pytest.mark.integration
READER = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "order_event.avsc").read_text())


def _wire(schema_id: int, schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
    return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()


def test_older_and_newer_writer_schemas_decode_into_the_reader_schema(devstack: Endpoints) -> None:
    registry = registry_client(devstack.schema_registry_url)
    subject = f"orders-evolution-{time.monotonic_ns()}-value"
    # v1: before `subscription_id` existed. v3: a later field the reader does not know yet.
    older = {**READER, "fields": [f for f in READER["fields"] if f["name"] != "subscription_id"]}
    newer = {
        **READER,
        "fields": [*READER["fields"], {"name": "loyalty_tier", "type": ["null", "string"], "default": None}],
    }
    older_id = registry.register_schema(subject, Schema(json.dumps(older), "AVRO"))
    newer_id = registry.register_schema(subject, Schema(json.dumps(newer), "AVRO"))
    assert older_id != newer_id

    record = order(1, now_ms=int(time.time() * 1000), rng=random.Random(1))
    record["subscription_id"] = "sub-9"
    old_record = {k: v for k, v in record.items() if k != "subscription_id"}
    new_record = {**record, "loyalty_tier": "gold"}
    decoder = Decoder({"orders": parse_schema(READER)}, registry=registry)

    from_old = decoder.decode("orders", _wire(older_id, older, old_record))
    from_new = decoder.decode("orders", _wire(newer_id, newer, new_record))
    assert from_old["order_id"] == from_new["order_id"] == record["order_id"]
    assert from_old["subscription_id"] is None  # the reader's default fills the missing field
    assert from_new["subscription_id"] == "sub-9"
    assert "loyalty_tier" not in from_new  # unknown to the reader: dropped
    assert from_new["total"] == record["total"] and from_new["line_items"] == from_old["line_items"]

    with pytest.raises(PipelineError) as unknown:
        decoder.decode("orders", b"\x00" + (2**31 - 7).to_bytes(4, "big") + b"\x02")
    assert unknown.value.failure.reason == "unknown_schema_id"
