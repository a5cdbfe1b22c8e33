"""JSON -> decoded-Avro coercion for dry runs: same values fastavro produces, clear errors."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from consumer.avro_json import AvroJsonError, record_from_json

ORDER = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "order_event.avsc").read_text())

ORDER_JSON: dict[str, Any] = {
    "order_id": "o-1",
    "event_type": "placed",
    "occurred_at": "2026-03-01T10:00:00.123456+01:00",
    "shop_id": "s-1",
    "total": "12.5",
    "currency": "EUR",
    "line_items": [{"sku": "A", "quantity": 1, "unit_price": 12.5}],
    "customer": {"email": "a@example.com", "date_of_birth": "1990-02-16"},
    "web_context": {"page_url": "https://shop.example.com/"},
}

LOGICAL: dict[str, Any] = {
    "type": "record",
    "name": "Logical",
    "namespace": "t",
    "fields": [
        {"name": "ts_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "local", "type": {"type": "long", "logicalType": "local-timestamp-millis"}},
        {"name": "tm", "type": {"type": "int", "logicalType": "time-millis"}},
        {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
        {
            "name": "money",
            "type": {
                "type": "fixed",
                "name": "Money",
                "size": 8,
                "logicalType": "decimal",
                "precision": 10,
                "scale": 2,
            },
        },
        {"name": "raw", "type": "bytes"},
        {"name": "tags", "type": {"type": "map", "values": "long"}},
        {"name": "choice", "type": ["null", "string", "long"], "default": None},
        {"name": "other_money", "type": ["null", "Money"], "default": None},
    ],
}


def fastavro_roundtrip(schema: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    buf.seek(0)
    result = fastavro.schemaless_reader(buf, parsed, None)
    assert isinstance(result, dict)
    return result


def test_coerced_order_equals_what_fastavro_decodes() -> None:
    coerced = record_from_json(copy.deepcopy(ORDER_JSON), ORDER)
    assert coerced == fastavro_roundtrip(ORDER, coerced)
    assert coerced["occurred_at"] == dt.datetime(2026, 3, 1, 9, 0, 0, 123000, tzinfo=dt.UTC)
    assert coerced["total"] == Decimal("12.500") and str(coerced["total"]) == "12.500"
    assert coerced["line_items"][0]["unit_price"] == Decimal("12.500")
    assert coerced["customer"]["date_of_birth"] == dt.date(1990, 2, 16)
    assert coerced["customer"]["phone"] is None  # defaults fill absent optional fields
    assert coerced["consent"] is None
    assert list(coerced) == [f["name"] for f in ORDER["fields"]]


def test_epoch_numbers_and_iso_strings_agree() -> None:
    iso = record_from_json({**ORDER_JSON, "occurred_at": "2026-03-01T09:00:00.123Z"}, ORDER)
    epoch = record_from_json({**ORDER_JSON, "occurred_at": 1772355600123}, ORDER)
    assert iso["occurred_at"] == epoch["occurred_at"]
    days = record_from_json({**ORDER_JSON, "customer": {"date_of_birth": 7351}}, ORDER)
    assert days["customer"]["date_of_birth"] == dt.date(1990, 2, 16)


def test_other_logical_types_match_fastavro() -> None:
    value = {
        "ts_us": 1_700_000_000_123_456,
        "local": "2026-03-01T10:00:00.5",
        "tm": 3_600_000,
        "id": "12345678-1234-5678-1234-567812345678",
        "money": "-3.5",
        "raw": "\u00ff\u0000",
        "tags": {"a": 1},
        "choice": 7,
        "other_money": {"t.Money": "1"},
    }
    coerced = record_from_json(value, LOGICAL)
    assert coerced == fastavro_roundtrip(LOGICAL, coerced)
    assert coerced["ts_us"] == dt.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=dt.UTC)
    assert coerced["local"] == dt.datetime(2026, 3, 1, 10, 0, 0, 500000)
    assert coerced["tm"] == dt.time(1, 0)
    assert coerced["id"] == uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert coerced["money"] == Decimal("-3.50") and coerced["other_money"] == Decimal("1.00")
    assert coerced["raw"] == b"\xff\x00"
    assert coerced["choice"] == 7


def test_union_branch_by_avro_json_wrapping() -> None:
    coerced = record_from_json({**ORDER_JSON, "subscription_id": {"string": "sub-1"}}, ORDER)
    assert coerced["subscription_id"] == "sub-1"


@pytest.mark.parametrize(
    ("change", "path", "fragment"),
    [
        ({"total": "12.3456"}, "$.total", "more than 3 decimal places"),
        ({"total": "ten"}, "$.total", "not a decimal"),
        ({"total": "1" * 17}, "$.total", "more than 18 digits"),
        ({"occurred_at": "2026-03-01T10:00:00"}, "$.occurred_at", "needs a UTC offset"),
        ({"occurred_at": "soon"}, "$.occurred_at", "ISO-8601"),
        ({"event_type": "shipped"}, "$.event_type", "one of the symbols"),
        ({"customer": {"date_of_birth": "16/02/1990"}}, "$.customer.date_of_birth", "expected an ISO date"),
        (
            {"line_items": [{"sku": "A", "quantity": "1", "unit_price": "1"}]},
            "$.line_items[0].quantity",
            "integer",
        ),
        ({"customer": {"emial": "x"}}, "$.customer", "unknown field(s) emial"),
        ({"order_id": None}, "$.order_id", "expected a string"),
        ({"subscription_id": 5}, "$.subscription_id", "expected a string"),
    ],
)
def test_invalid_input_names_the_field_not_the_value(
    change: dict[str, Any], path: str, fragment: str
) -> None:
    with pytest.raises(AvroJsonError) as info:
        record_from_json({**ORDER_JSON, **change}, ORDER)
    assert info.value.path == path
    assert fragment in info.value.message
    assert "16/02/1990" not in str(info.value) and "shipped" not in str(info.value)


def test_missing_required_field() -> None:
    value = {k: v for k, v in ORDER_JSON.items() if k != "shop_id"}
    with pytest.raises(AvroJsonError, match=r"^\$\.shop_id: missing"):
        record_from_json(value, ORDER)


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(AvroJsonError, match="expected a JSON object"):
        record_from_json([1], ORDER)  # type: ignore[arg-type]


def test_value_fitting_no_branch_of_a_wider_union() -> None:
    value = {"ts_us": 0, "local": 0, "tm": 0, "id": str(uuid.uuid4()), "money": "1", "raw": "", "tags": {}}
    with pytest.raises(
        AvroJsonError, match=r"^\$\.choice: matches no branch of the union \(null, string, long\)"
    ):
        record_from_json({**value, "choice": True}, LOGICAL)
