"""The generated mapping functions (`Mapper.map`) against the plan's direct reading (`Mapper.interpret`),
for records decoded with their logical types converted and for lean-decoded ones (left raw)."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
import math
import random
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from fastavro.read import LOGICAL_READERS
from hypothesis import given, settings
from hypothesis import strategies as st

from capi_devstack import samples
from consumer.config import AppConfig
from consumer.decode import Decoder, parse_schema
from consumer.mapping import Mapped, Mapper, MapResult, Rejected, _money, _money_from_raw
from consumer.normalize import Normalizer
from tests.unit import test_mapping_custom as custom

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
ORDER = json.loads((SCHEMAS / "order_event.avsc").read_text())
SUBSCRIPTION = json.loads((SCHEMAS / "subscription_event.avsc").read_text())
NOW_MS = 1_800_000_000_000
TOPIC_OF = {"order": "orders", "subscription": "subs"}


def canonical_config(**extra: Any) -> AppConfig:
    return AppConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
            "schema_registry": {"url": "http://127.0.0.1:8081"},
            "topics": {
                "orders": {
                    "kind": "order",
                    "reader_schema": str(SCHEMAS / "order_event.avsc"),
                    "destination": "shop",
                    # Every type sent, so that every record type reaches the generated bodies.
                    "send_event_types": ["placed", "completed", "refunded"],
                    **extra,
                },
                "subs": {
                    "kind": "subscription",
                    "reader_schema": str(SCHEMAS / "subscription_event.avsc"),
                    "destination": "shop",
                    "send_event_types": ["started", "trial_started", "renewed", "cancelled"],
                },
            },
            "destinations": {"shop": {"pixel_id": "42", "access_token_env": "T"}},
        }
    )


def canonical_mapper(normalizer: Normalizer) -> Mapper:
    return Mapper(
        canonical_config(),
        {"orders": ORDER, "subs": SUBSCRIPTION},
        normalizer,
        clock=lambda: NOW_MS / 1000,
    )


def canonical_decoder() -> Decoder:
    readers = {"orders": parse_schema(ORDER), "subs": parse_schema(SUBSCRIPTION)}
    return Decoder(readers, writer_schemas=readers)


def encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(schema)), record)
    return buf.getvalue()


def assert_same(generated: MapResult, interpreted: MapResult) -> None:
    """Equal results, and for events the same JSON bytes (key order included)."""
    assert generated == interpreted
    if isinstance(generated, Mapped):
        assert isinstance(interpreted, Mapped)
        assert orjson.dumps(generated.event) == orjson.dumps(interpreted.event)


def varied_canonical(n: int) -> Iterator[samples.Sample]:
    """The demo's varied events, plus damaged copies: identifiers that fail their rules, a page URL
    that is not http(s), records too old or without an ID, a web context of wrong types."""
    rng = random.Random(5)
    for i, sample in enumerate(samples.mixed(n, now_ms=NOW_MS, seed=11)):
        yield sample
        record = copy.deepcopy(sample.record)
        customer = record["customer"]
        match i % 6:
            case 0:
                customer.update(email="not an email", phone="12", gender="?", country="Atlantis")
            case 1:
                customer.update(
                    first_name="  ", postal_code="--", state="!!", date_of_birth=dt.date(2990, 1, 1)
                )
                record["occurred_at"] = NOW_MS - 30 * 86_400_000  # too old
            case 2:
                if record.get("web_context"):
                    record["web_context"]["page_url"] = "shop.example.com/no-scheme"
                    record["web_context"]["client_ip_address"] = "999.1.1.1"
            case 3:
                record["consent"] = {
                    "opt_out": True,
                    "limited_data_use": True,
                    "ldu_country": None,
                    "ldu_state": 7,
                }
            case 4:
                customer.update(email=None, phone=None, first_name=None, last_name=None, customer_id=None)
                customer.update(date_of_birth=None, city=None, state=None, postal_code=None, country=None)
            case _:
                customer.update(
                    email=f"  X{rng.randrange(50)}@Example.org", country="GB", phone="020 7946 0000"
                )
                record["occurred_at"] = NOW_MS - 3_600_001  # a second's last millisecond
        yield samples.Sample(sample.kind, record)


@pytest.mark.parametrize(
    "normalizer",
    [
        Normalizer(default_phone_region="US"),
        Normalizer(default_phone_region="US", memo_size=1),  # every other customer evicts the last
        Normalizer(cache_size=0),  # no caches, no memo: the generic user_data path
    ],
    ids=["memo", "memo-of-one", "uncached"],
)
def test_generated_canonical_mappings_equal_the_interpreter(normalizer: Normalizer) -> None:
    mapper = canonical_mapper(normalizer)
    reference = canonical_mapper(Normalizer(default_phone_region="US", cache_size=0))
    decoder = canonical_decoder()
    seen: set[object] = set()
    for sample in varied_canonical(400):
        topic = TOPIC_OF[sample.kind]
        value = encode(ORDER if sample.kind == "order" else SUBSCRIPTION, sample.record)
        converted = decoder.decode(topic, value)
        lean, raw_logical = decoder.decode_lean(topic, value)
        assert raw_logical
        expected = reference.interpret(topic, converted)
        assert_same(mapper.map(topic, converted), expected)
        assert_same(mapper.map(topic, lean, raw_logical=True), expected)
        seen.add(type(expected))
        if isinstance(expected, Mapped):
            seen.add(bool(expected.omitted))
    assert len(seen) >= 4  # events with and without omissions, rejections (and the filtered, below)


def _placed(**changes: Any) -> dict[str, Any]:
    """A canonical `placed` order (a Purchase) with `changes` made to it (customer fields by name)."""
    orders = (s.record for s in samples.mixed(20, now_ms=NOW_MS, seed=3) if s.kind == "order")
    record = copy.deepcopy(next(orders))
    record["event_type"] = "placed"
    for key, value in changes.items():
        if key in record["customer"]:
            record["customer"][key] = value
        else:
            record[key] = value
    return record


_ONLY_BROAD = {f: None for f in ("customer_id", "email", "phone", "first_name", "last_name")}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"occurred_at": NOW_MS + 60_000}, None),  # the last second the future limit allows
        ({"occurred_at": NOW_MS + 61_000}, "event_in_future"),
        ({"occurred_at": NOW_MS - 7 * 86_400_000}, None),  # exactly the oldest accepted
        ({"occurred_at": NOW_MS - 7 * 86_400_000 - 1_000}, "event_too_old"),
        ({"currency": "usd"}, None),
        ({"currency": "ZZZ"}, "invalid_currency"),
        ({"currency": " "}, "purchase_missing_currency"),
        # Only keys of the broad combinations, but not all within one of them: accepted by the call.
        ({**_ONLY_BROAD, "web_context": None}, None),
        ({**_ONLY_BROAD, "web_context": None, "date_of_birth": None}, "insufficient_user_data"),
    ],
)
def test_generated_validation_rejects_like_the_interpreter(
    changes: dict[str, Any], reason: str | None
) -> None:
    """The generated code accepts plainly valid events without calling `validate_mapped_event`: at
    each edge of what it accepts, the result is the interpreter's (which validates every event)."""
    mapper = canonical_mapper(Normalizer(default_phone_region="US"))
    decoder = canonical_decoder()
    value = encode(ORDER, _placed(**changes))
    expected = mapper.interpret("orders", decoder.decode("orders", value))
    assert (expected.reason if isinstance(expected, Rejected) else None) == reason
    lean, _ = decoder.decode_lean("orders", value)
    assert_same(mapper.map("orders", lean, raw_logical=True), expected)
    assert_same(mapper.map("orders", decoder.decode("orders", value)), expected)


def test_generated_mapping_filters_like_the_interpreter() -> None:
    config = canonical_config()
    mapper = Mapper(
        config, {"orders": ORDER, "subs": SUBSCRIPTION}, Normalizer(), clock=lambda: NOW_MS / 1000
    )
    record = samples.order(1, now_ms=NOW_MS, rng=random.Random(1), event_type="placed")
    record["event_type"] = "unknown"
    decoded = canonical_decoder().decode("orders", encode(ORDER, record))
    assert_same(mapper.map("orders", decoded), mapper.interpret("orders", decoded))


def custom_records() -> Iterator[dict[str, Any]]:
    yield custom.record()
    yield custom.record(kind="PAID")
    yield custom.record(kind="PAID", payment_id=None)
    yield custom.record(kind="VOID")
    yield custom.record(tenant="test-shop")
    yield custom.record(buyer=None)
    yield custom.record(buyer={"emails": [], "phone": None, "ref": None, "address": None})
    yield custom.record(items=[{"code": " ", "n": 1, "price": 1.0}, {"code": "A", "n": 2, "price": 2.345}])
    yield custom.record(cur="JPY", amount=1234.5)
    yield custom.record(ts=None)


@pytest.mark.parametrize("normalizer", [Normalizer(), Normalizer(cache_size=0)], ids=["cached", "uncached"])
def test_generated_custom_mapping_equals_the_interpreter(normalizer: Normalizer) -> None:
    mapper = custom.make_mapper(normalizer=normalizer)
    for rec in custom_records():
        assert_same(mapper.map("checkout", rec), mapper.interpret("checkout", rec))


# A custom schema full of logical types, to hold the lean (raw) reading to the converted one.
LOGICAL: dict[str, Any] = {
    "type": "record",
    "name": "Sale",
    "namespace": "com.acme",
    "fields": [
        {"name": "id", "type": "string"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["SALE", "RETURN"]}},
        {"name": "at_us", "type": {"type": "long", "logicalType": "timestamp-micros"}},
        {"name": "day", "type": {"type": "int", "logicalType": "date"}},
        {"name": "seen", "type": ["null", {"type": "long", "logicalType": "timestamp-millis"}]},
        {
            "name": "amount",
            "type": {
                "type": "fixed",
                "name": "Money",
                "size": 8,
                "logicalType": "decimal",
                "precision": 12,
                "scale": 4,
            },
        },
        {"name": "tax", "type": ["null", "Money"], "default": None},
        {"name": "cur", "type": "string"},
        {"name": "born", "type": ["null", "string", {"type": "int", "logicalType": "date"}], "default": None},
        {"name": "visits", "type": {"type": "array", "items": {"type": "int", "logicalType": "date"}}},
        {"name": "ref", "type": ["null", {"type": "string", "logicalType": "uuid"}], "default": None},
        {"name": "email", "type": "string"},
        {
            "name": "lines",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Line",
                    "fields": [
                        {"name": "sku", "type": "string"},
                        {
                            "name": "price",
                            "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
                        },
                    ],
                },
            },
        },
    ],
}
LOGICAL_MAPPING: dict[str, Any] = {
    "event_name": {"field": "kind", "values": {"SALE": "Purchase", "RETURN": "Return"}},
    "event_id": "id",
    "event_time": {"field": "at_us", "unit": "auto"},
    "user_data": {"em": "email", "db": "born", "external_id": "ref"},
    "custom_data": {"value": "amount", "currency": "cur", "day": "day", "seen": "seen", "visits": "visits"},
    "custom_data_constants": {"predicted_ltv": 10.5},
    "contents": {"field": "lines", "id": "sku", "item_price": "price"},
    "filters": [{"field": "day", "not_equals": None}],
    "record_types": {"RETURN": {"custom_data": {"value": "tax", "predicted_ltv": "tax"}}},
}


def logical_mapper(normalizer: Normalizer | None = None) -> Mapper:
    now = NOW_MS / 1000
    return custom.make_mapper(LOGICAL_MAPPING, LOGICAL, topic="sales", normalizer=normalizer, now=now)


def sale(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "id": "s-1",
        "kind": "SALE",
        "at_us": (NOW_MS - 5_000) * 1000 + 999,
        "day": dt.date(2026, 11, 30),
        "seen": dt.datetime(2026, 11, 30, 12, 0, 0, 123000, tzinfo=dt.UTC),
        "amount": Decimal("1234.5678"),
        "tax": Decimal("12.3456"),
        "cur": "kwd",
        "born": dt.date(1990, 5, 17),
        "visits": [dt.date(2026, 1, 1), dt.date(2026, 2, 1)],
        "ref": "6F1C0C1E-5A0B-4D35-9E44-4C1F5E2B7A10",
        "email": "A@Example.com",
        "lines": [{"sku": "L1", "price": Decimal("3.14")}, {"sku": "L2", "price": Decimal("-0.05")}],
    }
    value.update(overrides)
    return value


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"kind": "RETURN"},
        {"kind": "RETURN", "tax": None},
        {"born": "05/17/1990", "seen": None},
        {"born": None, "visits": []},
        {"born": dt.date(2999, 1, 1)},
        {"at_us": (NOW_MS - 30 * 86_400_000) * 1000},  # too old
        {"lines": [], "cur": "JPY"},
    ],
)
def test_lean_decoding_maps_like_converted_decoding(overrides: dict[str, Any]) -> None:
    readers = {"sales": parse_schema(LOGICAL)}
    decoder = Decoder(readers, writer_schemas=readers)
    value = encode(LOGICAL, sale(**overrides))
    lean, raw_logical = decoder.decode_lean("sales", value)
    assert raw_logical and type(lean["at_us"]) is int and type(lean["amount"]) is bytes
    converted = decoder.decode("sales", value)
    for mapper in (logical_mapper(), logical_mapper(Normalizer(cache_size=0))):
        expected = mapper.interpret("sales", converted)
        assert_same(mapper.map("sales", lean, raw_logical=True), expected)
        assert_same(mapper.map("sales", converted), expected)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999))
def test_event_time_from_raw_millis_equals_flooring_the_decoded_datetime(millis: int) -> None:
    decoded = LOGICAL_READERS["long-timestamp-millis"](millis, {}, {})
    assert millis // 1000 == math.floor(decoded.timestamp())


@settings(max_examples=300, deadline=None)
@given(
    unscaled=st.integers(min_value=-(10**20), max_value=10**20),
    scale=st.integers(min_value=0, max_value=6),
    places=st.integers(min_value=0, max_value=4),
)
def test_money_from_raw_bytes_equals_money_of_the_decoded_decimal(
    unscaled: int, scale: int, places: int
) -> None:
    raw = unscaled.to_bytes((unscaled.bit_length() + 8) // 8 or 1, "big", signed=True)
    node = {"precision": 18, "scale": scale}
    decimal = LOGICAL_READERS["bytes-decimal"](raw, node, node)
    assert _money_from_raw(raw, "bytes-decimal", 18, scale, places) == _money(decimal, places)


WEB_MAPPING: dict[str, Any] = {
    "event_name": {"field": "kind"},  # the value is the name: no filtering on it
    "event_id": "id",
    "event_time": {"field": "ts", "unit": "millis"},
    "action_source": "website",
    "event_source_url": "page",
    "user_data": {"em": "buyer.emails", "client_user_agent": "ua", "ph": ["buyer.phone", "tenant"]},
    "opt_out": "marketing_ok",
    "filters": [{"field": "cur", "in": ["gbp", "eur"]}],
    "record_types": {"PAID": {"action_source": "email", "event_source_url": "page"}},
}
WEB_SCHEMA: dict[str, Any] = {
    **custom.CHECKOUT,
    "fields": [
        *custom.CHECKOUT["fields"],
        {"name": "page", "type": ["null", "string"], "default": None},
        {"name": "ua", "type": ["null", "string"], "default": None},
    ],
}


@pytest.mark.parametrize("tenant_field", [None, "tenant"])
def test_generated_website_and_tenant_mappings_equal_the_interpreter(tenant_field: str | None) -> None:
    mapper = custom.make_mapper(WEB_MAPPING, WEB_SCHEMA, topic="web", tenant_field=tenant_field)
    pages = ["https://shop.example/thanks", " https://x.example ", "shop.example/no-scheme", "", None]
    for i, page in enumerate(pages):
        for ua in ("Mozilla/5.0", None, " "):
            for overrides in ({}, {"kind": "PAID"}, {"cur": "usd"}, {"tenant": " "}, {"marketing_ok": False}):
                rec = custom.record(page=page, ua=ua, id=i, **overrides)
                assert_same(mapper.map("web", rec), mapper.interpret("web", rec))
