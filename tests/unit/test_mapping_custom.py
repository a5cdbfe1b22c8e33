"""Config-driven mappings of other company schemas: behaviour and start-up checks."""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from consumer.config import AppConfig, ConfigError, load_config
from consumer.mapping import (
    EVENT_TYPE_NOT_SENT,
    FILTERED_BY_CONFIG,
    INVALID_EVENT_TIME,
    MISSING_EVENT_ID,
    MISSING_EVENT_NAME,
    MISSING_TENANT_ID,
    Filtered,
    Mapped,
    Mapper,
    Rejected,
)
from consumer.normalize import Normalizer, sha256_hex

NOW = 1_800_000_000  # the injected clock, Unix seconds
TS_MS = (NOW - 120) * 1000 + 999

PERSON = {
    "type": "record",
    "name": "Person",
    "fields": [
        {"name": "emails", "type": {"type": "array", "items": "string"}},
        {"name": "phone", "type": ["null", "string"], "default": None},
        {"name": "ref", "type": ["null", "long"], "default": None},
        {
            "name": "address",
            "type": [
                "null",
                {
                    "type": "record",
                    "name": "Address",
                    "fields": [{"name": "country", "type": ["null", "string"]}],
                },
            ],
            "default": None,
        },
    ],
}
CHECKOUT: dict[str, Any] = {
    "type": "record",
    "name": "Checkout",
    "namespace": "com.acme.shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "kind", "type": {"type": "enum", "name": "Kind", "symbols": ["CART", "PAID", "VOID"]}},
        {"name": "ts", "type": "long"},
        {"name": "ts_s", "type": "int"},
        {"name": "ts_us", "type": "long"},
        {"name": "created", "type": "string"},
        {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "tenant", "type": "string"},
        {"name": "amount", "type": "double"},
        {"name": "cur", "type": "string"},
        {"name": "buyer", "type": ["null", PERSON], "default": None},
        {"name": "seller", "type": ["null", "Person"], "default": None},  # a reference to the named type
        {
            "name": "items",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Item",
                    "fields": [
                        {"name": "code", "type": "string"},
                        {"name": "n", "type": "long"},
                        {"name": "price", "type": "double"},
                    ],
                },
            },
        },
        {"name": "marketing_ok", "type": "boolean"},
        {"name": "payment_id", "type": ["null", "string"], "default": None},
    ],
}

MAPPING: dict[str, Any] = {
    "event_name": {"field": "kind", "values": {"CART": "AddToCart", "PAID": "Purchase"}},
    "event_id": "id",
    "event_time": {"field": "ts", "unit": "millis"},
    "user_data": {
        "em": "buyer.emails",
        "ph": "buyer.phone",
        "external_id": ["buyer.ref"],
        "country": "buyer.address.country",
    },
    "custom_data": {"value": "amount", "currency": "cur"},
    "custom_data_constants": {"delivery_category": "home_delivery"},
    "contents": {"field": "items", "id": "code", "quantity": "n", "item_price": "price"},
    "filters": [{"field": "tenant", "not_in": ["test-shop"]}],
    "record_types": {"PAID": {"event_id": "payment_id", "custom_data": {"order_id": "id"}}},
}


def make_mapper(
    mapping: dict[str, Any] | None = None,
    schema: dict[str, Any] | None = None,
    *,
    topic: str = "checkout",
    tenant_field: str | None = None,
    normalizer: Normalizer | None = None,
    now: float = NOW,
) -> Mapper:
    """A mapper of one custom topic, to destination `acme` or (with `tenant_field`) in platform mode."""
    spec: dict[str, Any] = {
        "kind": "custom",
        "reader_schema": f"{topic}.avsc",
        "mapping": MAPPING if mapping is None else mapping,
    }
    routing: dict[str, Any]
    if tenant_field is None:
        spec["destination"] = "acme"
        routing = {"destinations": {"acme": {"pixel_id": "7", "access_token_env": "T"}}}
    else:
        spec["tenant_field"] = tenant_field
        routing = {"platform": {"tenants": {"file": "tenants.yaml"}}}
    config = AppConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
            "schema_registry": {"url": "http://127.0.0.1:8081"},
            "topics": {topic: spec},
            **routing,
        }
    )
    return Mapper(config, {topic: schema or CHECKOUT}, normalizer or Normalizer(), clock=lambda: float(now))


def record(**overrides: Any) -> dict[str, Any]:
    """A record as fastavro decodes it (plain types: this schema has no logical types but `at`)."""
    value: dict[str, Any] = {
        "id": 123,
        "kind": "CART",
        "ts": TS_MS,
        "ts_s": NOW - 120,
        "ts_us": TS_MS * 1000,
        "created": "2027-01-15T08:00:00+00:00",
        "at": dt.datetime.fromtimestamp(TS_MS / 1000, tz=dt.UTC),
        "tenant": "acme-eu",
        "amount": 42.499,
        "cur": "gbp",
        "buyer": {
            "emails": ["a@example.com", "b@example.com"],
            "phone": "+44 20 7946 0958",
            "ref": 991,
            "address": {"country": "GB"},
        },
        "seller": None,
        "items": [{"code": "X1", "n": 3, "price": 14.1666}],
        "marketing_ok": True,
        "payment_id": "pay-77",
    }
    value.update(overrides)
    return value


def event_of(result: object) -> dict[str, Any]:
    assert isinstance(result, Mapped), result
    return result.event


def with_mapping(**changes: Any) -> dict[str, Any]:
    mapping = copy.deepcopy(MAPPING)
    mapping.update(changes)
    return mapping


# --- behaviour ---------------------------------------------------------------------------------------


def test_custom_mapping_builds_the_event() -> None:
    result = make_mapper().map("checkout", record())
    assert isinstance(result, Mapped) and result.destination == "acme"
    event = result.event
    assert event["event_name"] == "AddToCart"
    assert event["event_id"] == "123"
    assert event["event_time"] == NOW - 120  # millis floored to seconds
    assert event["action_source"] == "system_generated"
    assert event["user_data"]["em"] == [sha256_hex("a@example.com"), sha256_hex("b@example.com")]
    assert event["user_data"]["ph"] == sha256_hex("442079460958")
    assert event["user_data"]["external_id"] == sha256_hex("991")
    assert event["user_data"]["country"] == sha256_hex("gb")
    assert event["custom_data"] == {
        "value": 42.5,
        "currency": "GBP",
        "delivery_category": "home_delivery",
        "contents": [{"id": "X1", "quantity": 3, "item_price": 14.17}],
        "num_items": 3,
        "content_type": "product",
    }


def test_record_type_override_replaces_event_id_and_merges_custom_data() -> None:
    event = event_of(make_mapper().map("checkout", record(kind="PAID")))
    assert event["event_name"] == "Purchase"
    assert event["event_id"] == "pay-77"
    assert event["custom_data"]["order_id"] == "123"  # a long order number is sent as text
    assert event["custom_data"]["value"] == 42.5


def test_unlisted_record_type_and_filters_are_filtered() -> None:
    mapper = make_mapper()
    assert mapper.map("checkout", record(kind="VOID")) == Filtered(EVENT_TYPE_NOT_SENT, "kind=VOID")
    assert mapper.map("checkout", record(tenant="test-shop")) == Filtered(
        FILTERED_BY_CONFIG, "filters[0]: tenant not_in"
    )


@pytest.mark.parametrize(
    ("rule", "keeps"),
    [
        ({"field": "tenant", "equals": "acme-eu"}, True),
        ({"field": "tenant", "equals": "acme-us"}, False),
        ({"field": "tenant", "not_equals": "acme-eu"}, False),
        ({"field": "tenant", "in": ["acme-us", "acme-eu"]}, True),
        ({"field": "marketing_ok", "equals": False}, False),
        ({"field": "buyer.ref", "in": [991, 992]}, True),
        ({"field": "payment_id", "equals": None}, False),
        ({"field": "kind", "not_in": ["CART"]}, False),
    ],
)
def test_filter_operators(rule: dict[str, Any], keeps: bool) -> None:
    result = make_mapper(with_mapping(filters=[rule])).map("checkout", record())
    assert isinstance(result, Mapped) is keeps, result


def test_constant_event_name_and_action_source() -> None:
    mapping = with_mapping(event_name="Lead", action_source="physical_store", record_types={})
    event = event_of(make_mapper(mapping).map("checkout", record(kind="VOID")))
    assert (event["event_name"], event["action_source"]) == ("Lead", "physical_store")


def test_event_name_taken_from_the_field_without_a_value_map() -> None:
    mapping = with_mapping(event_name={"field": "kind"}, record_types={})
    assert event_of(make_mapper(mapping).map("checkout", record(kind="VOID")))["event_name"] == "VOID"


@pytest.mark.parametrize(
    "event_time",
    [
        {"field": "ts_s", "unit": "seconds"},
        {"field": "ts_us", "unit": "micros"},
        {"field": "at", "unit": "auto"},
        "at",
    ],
)
def test_event_time_units(event_time: Any) -> None:
    event = event_of(make_mapper(with_mapping(event_time=event_time)).map("checkout", record()))
    assert event["event_time"] == NOW - 120


def test_event_time_from_iso8601_strings() -> None:
    mapper = make_mapper(with_mapping(event_time={"field": "created", "unit": "iso8601"}))
    created = dt.datetime.fromtimestamp(NOW - 60, tz=dt.UTC).isoformat()
    assert event_of(mapper.map("checkout", record(created=created)))["event_time"] == NOW - 60
    assert mapper.map("checkout", record(created="yesterday")) == Rejected(
        "map", INVALID_EVENT_TIME, "created is not ISO-8601"
    )
    assert mapper.map("checkout", record(created="2027-01-15T08:00:00")) == Rejected(
        "map", INVALID_EVENT_TIME, "created has no UTC offset"
    )


def test_missing_values_are_rejected_at_mapping_without_values_in_detail() -> None:
    mapper = make_mapper(with_mapping(event_id="payment_id", record_types={}))
    assert mapper.map("checkout", record(payment_id=None)) == Rejected(
        "map", MISSING_EVENT_ID, "payment_id is null or empty"
    )
    mapper = make_mapper(with_mapping(event_name={"field": "buyer.phone"}, record_types={}))
    result = mapper.map("checkout", record(buyer={"emails": [], "phone": None}))
    assert result == Rejected("map", MISSING_EVENT_NAME, "buyer.phone is null or empty")


def test_null_nested_record_leaves_its_identifiers_out() -> None:
    result = make_mapper().map("checkout", record(buyer=None, kind="CART"))
    assert isinstance(result, Rejected)  # nothing left to match on
    assert (result.stage, result.reason) == ("validate", "insufficient_user_data")


def test_paths_through_a_named_type_reference_resolve() -> None:
    mapping = with_mapping(user_data={"em": ["buyer.emails", "seller.emails"]})
    seller = {"emails": ["s@example.com"], "phone": None, "ref": None, "address": None}
    event = event_of(make_mapper(mapping).map("checkout", record(seller=seller)))
    assert len(event["user_data"]["em"]) == 3


def test_custom_mapping_loads_from_yaml_with_shorthands(tmp_path: Path) -> None:
    (tmp_path / "checkout.avsc").write_text(json.dumps(CHECKOUT))
    config_file = tmp_path / "config.yaml"
    config_file.write_text(
        """
kafka: {bootstrap_servers: "127.0.0.1:9092"}
topics:
  checkout:
    kind: custom
    reader_schema: checkout.avsc
    writer_schema: checkout.avsc
    destination: acme
    mapping:
      event_name: Lead
      event_id: id
      event_time: at
      user_data: {em: buyer.emails}
      filters:
        - {field: kind, in: [CART, PAID]}
destinations:
  acme: {pixel_id: 7, access_token_env: T}
"""
    )
    config = load_config(config_file, {}, resolve_secrets=False)
    mapper = Mapper.from_config(config, clock=lambda: float(NOW))
    assert event_of(mapper.map("checkout", record()))["event_name"] == "Lead"
    assert isinstance(mapper.map("checkout", record(kind="VOID")), Filtered)
    assert mapper.mapping("checkout").event_time.unit == "auto"


# --- start-up checks -------------------------------------------------------------------------------


def startup_problems(mapping: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        make_mapper(mapping)
    return info.value.problems


P = "topics.checkout.mapping."
WHERE = "schema com.acme.shop.Checkout (topic 'checkout')"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            {"user_data": {"em": "buyer.emial"}},
            P + "user_data.em: field 'buyer.emial' does not exist in schema "
            "com.acme.shop.Checkout (topic 'checkout'): record com.acme.shop.Person has no field 'emial'",
        ),
        (
            {"event_id": "tenant.id"},
            P + "event_id: field 'tenant.id' does not exist in " + WHERE + ": 'tenant' is not a record",
        ),
        (
            {"event_time": "ts"},
            P + "event_time: field 'ts' in " + WHERE + " "
            "is long; expected timestamp-micros, timestamp-millis",
        ),
        (
            {"event_time": {"field": "created", "unit": "millis"}},
            P + "event_time: field 'created'",
        ),
        (
            {"event_name": {"field": "kind", "values": {"CARTS": "AddToCart"}}, "record_types": {}},
            P + "event_name.values: 'CARTS' is not a symbol of enum field 'kind' (CART, PAID, VOID)",
        ),
        (
            {"record_types": {"REFUND": {"event_id": "id"}}},
            P + "record_types: 'REFUND' is not a symbol of enum field 'kind'",
        ),
        (
            {"filters": [{"field": "tenant", "equals": 5}]},
            P + "filters.0: field 'tenant' is a string; compare it with strings",
        ),
        (
            {"contents": {"field": "buyer.emails", "id": "code"}},
            P + "contents.field: field 'buyer.emails' in " + WHERE + " is not an array of records",
        ),
        (
            {"contents": {"field": "items", "id": "sku"}},
            P
            + "contents.id: field 'sku' does not exist in "
            + WHERE
            + ": record com.acme.shop.Item has no field 'sku'",
        ),
        ({"custom_data": {"value": "cur"}}, P + "custom_data.value: field 'cur'"),
        ({"opt_out": "tenant"}, P + "opt_out: field 'tenant'"),
        ({"user_data": {"em": "items"}}, P + "user_data.em: field 'items'"),
    ],
)
def test_bad_paths_fail_at_start_up_naming_key_path_schema_and_topic(
    change: dict[str, Any], expected: str
) -> None:
    found = startup_problems(with_mapping(**change))
    assert any(p.startswith(expected) for p in found), found


def test_every_bad_path_is_reported_at_once() -> None:
    found = startup_problems(with_mapping(event_id="nope", user_data={"em": "buyer.nope", "ph": "also.nope"}))
    assert [p.split(":")[0] for p in found] == [
        "topics.checkout.mapping.user_data.em",
        "topics.checkout.mapping.user_data.ph",
        "topics.checkout.mapping.event_id",
    ]


# --- platform mode: the tenant from a field --------------------------------------------------------


def test_a_custom_mapping_routes_by_its_tenant_field() -> None:
    mapper = make_mapper(tenant_field="tenant")
    result = mapper.map("checkout", record())
    assert isinstance(result, Mapped) and result.destination == "tenant:acme-eu"
    assert mapper.map("checkout", record(tenant="  ")) == Rejected(
        "map", MISSING_TENANT_ID, "tenant is null or empty"
    )


def test_a_tenant_field_that_is_not_in_the_schema_stops_start_up() -> None:
    with pytest.raises(ConfigError) as err:
        make_mapper(tenant_field="buyer.shop")
    assert "topics.checkout.tenant_field" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_mapper(tenant_field="amount")  # a double is no tenant id
    assert "topics.checkout.tenant_field" in str(err.value)
