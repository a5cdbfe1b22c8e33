"""The canonical Avro schemas: documented, evolvable, and typed as the mapping expects."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
FILES = ["order_event.avsc", "subscription_event.avsc"]


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((SCHEMAS / name).read_text())
    return schema


def roundtrip(writer: dict[str, Any], reader: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(writer)), record)
    buf.seek(0)
    result = fastavro.schemaless_reader(
        buf, fastavro.parse_schema(copy.deepcopy(writer)), fastavro.parse_schema(copy.deepcopy(reader))
    )
    assert isinstance(result, dict)
    return result


def all_fields(schema: Any, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(dotted path, field) for every field of every record defined inline in `schema`."""
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(schema, list):
        for branch in schema:
            out += all_fields(branch, prefix)
    elif isinstance(schema, dict):
        if schema.get("type") == "record":
            for field in schema["fields"]:
                path = f"{prefix}{field['name']}"
                out.append((path, field))
                out += all_fields(field["type"], path + ".")
        elif schema.get("type") == "array":
            out += all_fields(schema["items"], prefix)
    return out


def order_record(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "order_id": "o-1",
        "event_type": "placed",
        "occurred_at": dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC),
        "shop_id": "shop-1",
        "total": Decimal("12.5"),
        "currency": "EUR",
        "line_items": [{"sku": "A", "quantity": 2, "unit_price": Decimal("6.25")}],
        "customer": {"email": "a@example.com", "date_of_birth": dt.date(1990, 2, 16)},
    }
    record.update(overrides)
    return record


@pytest.mark.parametrize("name", FILES)
def test_schema_parses_and_lives_in_the_company_namespace(name: str) -> None:
    schema = load(name)
    fastavro.parse_schema(copy.deepcopy(schema))
    assert schema["namespace"] == "com.example.commerce"
    assert schema["doc"]


@pytest.mark.parametrize("name", FILES)
def test_every_field_is_documented(name: str) -> None:
    undocumented = [path for path, field in all_fields(load(name)) if not field.get("doc", "").strip()]
    assert undocumented == []


@pytest.mark.parametrize("name", FILES)
def test_optional_fields_are_null_first_with_null_default(name: str) -> None:
    for path, field in all_fields(load(name)):
        if isinstance(field["type"], list) and "null" in field["type"]:
            assert field["type"][0] == "null", path
            assert "default" in field and field["default"] is None, path


@pytest.mark.parametrize("name", FILES)
def test_logical_types_used_for_times_money_and_dates(name: str) -> None:
    fields = dict(all_fields(load(name)))
    assert fields["occurred_at"]["type"] == {"type": "long", "logicalType": "timestamp-millis"}
    assert fields["customer.date_of_birth"]["type"] == ["null", {"type": "int", "logicalType": "date"}]
    money = "total" if name.startswith("order") else "amount"
    decimal = fields[money]["type"]
    decimal = decimal[1] if isinstance(decimal, list) else decimal
    assert decimal == {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 3}


def test_event_type_enums_have_the_documented_symbols() -> None:
    order = dict(all_fields(load("order_event.avsc")))["event_type"]["type"]
    sub = dict(all_fields(load("subscription_event.avsc")))["event_type"]["type"]
    assert order["symbols"] == ["unknown", "placed", "completed", "refunded"]
    assert sub["symbols"] == ["unknown", "started", "trial_started", "renewed", "cancelled"]
    assert order["default"] == sub["default"] == "unknown"


def test_order_roundtrip_gives_the_python_types_the_mapper_reads() -> None:
    schema = load("order_event.avsc")
    decoded = roundtrip(schema, schema, order_record())
    assert decoded["occurred_at"] == dt.datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=dt.UTC)
    assert decoded["total"] == Decimal("12.500")
    assert decoded["customer"]["date_of_birth"] == dt.date(1990, 2, 16)
    assert decoded["web_context"] is None and decoded["consent"] is None
    assert decoded["line_items"][0]["title"] is None


def test_adding_an_optional_field_is_compatible_both_ways() -> None:
    v1 = load("order_event.avsc")
    v2 = copy.deepcopy(v1)
    v2["fields"].append(
        {"name": "coupon", "type": ["null", "string"], "default": None, "doc": "Coupon code."}
    )
    # Old reader, new writer (forward compatible): the new field is ignored.
    old_view = roundtrip(v2, v1, order_record(coupon="SPRING"))
    assert "coupon" not in old_view and old_view["order_id"] == "o-1"
    # New reader, old writer (backward compatible): the new field takes its default.
    new_view = roundtrip(v1, v2, order_record())
    assert new_view["coupon"] is None


def test_a_new_event_type_from_a_newer_writer_reads_as_unknown() -> None:
    v1 = load("subscription_event.avsc")
    v2 = copy.deepcopy(v1)
    v2["fields"][1]["type"]["symbols"].append("paused")
    record = {
        "subscription_id": "s-1",
        "event_type": "paused",
        "occurred_at": dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
        "shop_id": "shop-1",
        "customer": {},
    }
    assert roundtrip(v2, v1, record)["event_type"] == "unknown"


@pytest.mark.parametrize("name", FILES)
def test_readme_documents_every_field(name: str) -> None:
    readme = (SCHEMAS / "README.md").read_text()
    # Fields appear as `name` or inside a path such as `line_items[].sku`.
    missing = [
        path
        for path, _ in all_fields(load(name))
        if not re.search(rf"[`.\]]{path.rsplit('.', 1)[-1]}[`,]", readme)
    ]
    assert missing == []
