"""Built-in mappings of the canonical order and subscription events (records decoded by fastavro)."""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest

from consumer.config import AppConfig, ConfigError
from consumer.mapping import (
    EVENT_TYPE_NOT_SENT,
    MISSING_EVENT_ID,
    Filtered,
    Mapped,
    Mapper,
    Rejected,
    currency_minor_units,
)
from consumer.normalize import Normalizer, Omission, sha256_hex

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
ORDER = json.loads((SCHEMAS / "order_event.avsc").read_text())
SUBSCRIPTION = json.loads((SCHEMAS / "subscription_event.avsc").read_text())
NOW = 1_800_000_000.0  # the injected clock, Unix seconds
OCCURRED = dt.datetime.fromtimestamp(NOW - 3600.7, tz=dt.UTC)  # an hour ago, with a fraction


def make_config(**topic_overrides: Any) -> AppConfig:
    topics: dict[str, Any] = {
        "orders": {
            "kind": "order",
            "reader_schema": str(SCHEMAS / "order_event.avsc"),
            "destination": "shop",
        },
        "subs": {
            "kind": "subscription",
            "reader_schema": str(SCHEMAS / "subscription_event.avsc"),
            "destination": "shop",
        },
    }
    for name, overrides in topic_overrides.items():
        topics[name] = {**topics[name], **overrides}
    return AppConfig.model_validate(
        {
            "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
            "schema_registry": {"url": "http://127.0.0.1:8081"},
            "topics": topics,
            "destinations": {"shop": {"pixel_id": "42", "access_token_env": "T"}},
        }
    )


def make_mapper(config: AppConfig | None = None, schemas: dict[str, Any] | None = None) -> Mapper:
    config = config or make_config()
    return Mapper(config, schemas or {"orders": ORDER, "subs": SUBSCRIPTION}, Normalizer(), clock=lambda: NOW)


def decode(schema: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    """What the consumer's decoder hands the mapper: the record written and read by fastavro."""
    parsed = fastavro.parse_schema(copy.deepcopy(schema))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed, record)
    buf.seek(0)
    result = fastavro.schemaless_reader(buf, parsed, None)
    assert isinstance(result, dict)
    return result


CUSTOMER = {
    "customer_id": "cust-7",
    "email": "  John.Smith@Example.COM ",
    "phone": "(650) 555-1212",
    "first_name": "John",
    "last_name": "Smith",
    "date_of_birth": dt.date(1997, 2, 16),
    "gender": "Male",
    "city": "Menlo Park",
    "state": "California",
    "postal_code": "94025-1234",
    "country": "US",
}


def order(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "order_id": "ord-1001",
        "event_type": "placed",
        "occurred_at": OCCURRED,
        "shop_id": "shop-1",
        "total": Decimal("59.905"),
        "currency": "usd",
        "line_items": [
            {"sku": "SKU-1", "quantity": 2, "unit_price": Decimal("19.95")},
            {"sku": "SKU-2", "quantity": 1, "unit_price": Decimal("20.005")},
        ],
        "customer": CUSTOMER,
        "web_context": {
            "client_ip_address": "203.0.113.9",
            "client_user_agent": "Mozilla/5.0",
            "fbp": "fb.1.1700000000000.123",
            "fbc": "fb.1.1700000000000.AbC",
            "page_url": "https://shop.example.com/thanks",
        },
    }
    record.update(overrides)
    return decode(ORDER, record)


def subscription(**overrides: Any) -> dict[str, Any]:
    record: dict[str, Any] = {
        "subscription_id": "sub-9",
        "event_type": "started",
        "occurred_at": OCCURRED,
        "shop_id": "shop-1",
        "order_id": "ord-2001",
        "plan_id": "plan-gold",
        "amount": Decimal("9.99"),
        "currency": "EUR",
        "customer": {"customer_id": "cust-7", "email": "jane@example.com"},
    }
    record.update(overrides)
    return decode(SUBSCRIPTION, record)


def mapped(result: object) -> dict[str, Any]:
    assert isinstance(result, Mapped), result
    return result.event


# --- orders ---------------------------------------------------------------------------------------


def test_placed_order_becomes_a_purchase() -> None:
    result = make_mapper().map("orders", order())
    assert isinstance(result, Mapped) and result.destination == "shop"
    event = result.event
    assert event["event_name"] == "Purchase"
    assert event["event_id"] == "ord-1001"
    assert event["action_source"] == "system_generated"
    assert event["event_time"] == int(NOW - 3600.7)  # whole seconds, floored
    assert isinstance(event["event_time"], int)
    assert event["event_source_url"] == "https://shop.example.com/thanks"
    assert event["custom_data"] == {
        "value": 59.91,  # decimal(18,3) rounded half-up to USD's 2 places
        "currency": "USD",
        "order_id": "ord-1001",
        "contents": [
            {"id": "SKU-1", "quantity": 2, "item_price": 19.95},
            {"id": "SKU-2", "quantity": 1, "item_price": 20.01},
        ],
        "num_items": 3,
        "content_type": "product",
    }
    assert "opt_out" not in event and "data_processing_options" not in event
    json.dumps(event)  # JSON-ready: no Decimal, datetime or date left


def test_purchase_user_data_is_normalized_and_hashed_per_the_contract() -> None:
    user_data = mapped(make_mapper().map("orders", order()))["user_data"]
    assert user_data["em"] == sha256_hex("john.smith@example.com")
    assert user_data["ph"] == sha256_hex("16505551212")  # national number parsed in the customer's country
    assert user_data["fn"] == sha256_hex("john") and user_data["ln"] == sha256_hex("smith")
    assert user_data["db"] == sha256_hex("19970216")
    assert user_data["ge"] == sha256_hex("m")
    assert user_data["ct"] == sha256_hex("menlopark")
    assert user_data["st"] == sha256_hex("ca")
    assert user_data["zp"] == sha256_hex("94025")
    assert user_data["country"] == sha256_hex("us")
    assert user_data["external_id"] == sha256_hex("cust-7")
    assert user_data["client_ip_address"] == "203.0.113.9"
    assert user_data["client_user_agent"] == "Mozilla/5.0"
    assert user_data["fbp"] == "fb.1.1700000000000.123" and user_data["fbc"] == "fb.1.1700000000000.AbC"


def test_subscription_charge_order_carries_the_unhashed_subscription_id() -> None:
    event = mapped(make_mapper().map("orders", order(subscription_id="sub-9")))
    assert event["user_data"]["subscription_id"] == "sub-9"


def test_order_without_web_context_or_items() -> None:
    event = mapped(make_mapper().map("orders", order(web_context=None, line_items=[])))
    assert "event_source_url" not in event
    assert "client_ip_address" not in event["user_data"]
    assert set(event["custom_data"]) == {"value", "currency", "order_id"}


@pytest.mark.parametrize("event_type", ["completed", "refunded", "unknown"])
def test_order_event_types_not_sent_by_default_are_filtered(event_type: str) -> None:
    result = make_mapper().map("orders", order(event_type=event_type))
    assert result == Filtered(EVENT_TYPE_NOT_SENT, f"event_type={event_type}")


def test_sent_event_types_and_names_are_configurable() -> None:
    config = make_config(
        orders={"send_event_types": ["completed", "refunded"], "event_names": {"refunded": "Refund"}}
    )
    mapper = make_mapper(config)
    assert mapper.map("orders", order()) == Filtered(EVENT_TYPE_NOT_SENT, "event_type=placed")
    assert mapped(mapper.map("orders", order(event_type="completed")))["event_name"] == "Purchase"
    refund = mapped(mapper.map("orders", order(event_type="refunded")))
    assert refund["event_name"] == "Refund" and refund["event_id"] == "ord-1001"


@pytest.mark.parametrize(
    ("currency", "total", "value"),
    [("JPY", "1234.5", 1235.0), ("KWD", "1.235", 1.235), ("eur", "10", 10.0), ("ZZZ", "1.005", 1.01)],
)
def test_value_is_rounded_to_the_currency_minor_units(currency: str, total: str, value: float) -> None:
    schema_scale_total = Decimal(total).quantize(Decimal("0.001"))
    custom = make_mapper().map("orders", order(currency=currency, total=schema_scale_total))
    if currency == "ZZZ":  # a made-up currency is rounded like most (2 places) and rejected by validation
        assert isinstance(custom, Rejected) and custom.stage == "validate"
        return
    assert mapped(custom)["custom_data"]["value"] == value


def test_currency_minor_units() -> None:
    assert [currency_minor_units(c) for c in ("JPY", "usd", "BHD", "CLF", None)] == [0, 2, 3, 4, 2]


def test_opt_out_and_limited_data_use() -> None:
    mapper = make_mapper()
    opted = mapped(mapper.map("orders", order(consent={"opt_out": True})))
    assert opted["opt_out"] is True and "data_processing_options" not in opted
    ldu = mapped(mapper.map("orders", order(consent={"limited_data_use": True})))
    assert ldu["data_processing_options"] == ["LDU"]
    assert ldu["data_processing_options_country"] == 0 and ldu["data_processing_options_state"] == 0
    assert "opt_out" not in ldu
    ca = mapped(
        mapper.map("orders", order(consent={"limited_data_use": True, "ldu_country": 1, "ldu_state": 1000}))
    )
    assert (ca["data_processing_options_country"], ca["data_processing_options_state"]) == (1, 1000)


def test_stale_event_is_rejected_by_validation_without_pii_in_detail() -> None:
    old = dt.datetime.fromtimestamp(NOW - 8 * 86400, tz=dt.UTC)
    result = make_mapper().map("orders", order(occurred_at=old))
    assert isinstance(result, Rejected)
    assert (result.stage, result.reason) == ("validate", "event_too_old")
    assert "john" not in result.detail.lower()


def test_too_little_customer_information_is_rejected() -> None:
    customer = {"gender": "f", "first_name": "Ann"}
    result = make_mapper().map("orders", order(customer=customer, web_context=None))
    assert isinstance(result, Rejected)
    assert (result.stage, result.reason) == ("validate", "insufficient_user_data")


def test_omitted_identifiers_are_reported_not_sent() -> None:
    customer = {**CUSTOMER, "email": "not-an-email", "country": "Atlantis"}
    result = make_mapper().map("orders", order(customer=customer))
    assert isinstance(result, Mapped)
    assert "em" not in result.event["user_data"] and "country" not in result.event["user_data"]
    assert Omission("em", "invalid_email") in result.omitted
    assert Omission("country", "unknown_country") in result.omitted


def test_malformed_page_url_is_left_out_instead_of_failing_the_event() -> None:
    web = {"page_url": "not a url", "client_ip_address": "203.0.113.9"}
    result = make_mapper().map("orders", order(web_context=web))
    assert isinstance(result, Mapped)
    assert "event_source_url" not in result.event
    assert Omission("event_source_url", "invalid_url") in result.omitted


def test_an_evolved_reader_schema_with_an_extra_optional_field_still_maps() -> None:
    v2 = copy.deepcopy(ORDER)
    v2["fields"].append({"name": "coupon", "type": ["null", "string"], "default": None, "doc": "Coupon."})
    mapper = make_mapper(schemas={"orders": v2, "subs": SUBSCRIPTION})
    assert mapped(mapper.map("orders", {**order(), "coupon": None}))["event_id"] == "ord-1001"


def test_canonical_kind_with_a_schema_that_lacks_its_fields_fails_at_start_up() -> None:
    with pytest.raises(ConfigError) as info:
        make_mapper(schemas={"orders": SUBSCRIPTION, "subs": SUBSCRIPTION})
    text = str(info.value)
    assert (
        "topics.orders.reader_schema: built-in mapping (contents.field): field 'line_items' does not "
        "exist in schema com.example.commerce.SubscriptionEvent (topic 'orders')"
    ) in text
    assert "'placed' is not a symbol of enum field 'event_type'" in text


def test_mapper_needs_a_reader_schema_for_every_topic() -> None:
    with pytest.raises(ConfigError, match=r"topics\.subs\.reader_schema: no reader schema"):
        make_mapper(schemas={"orders": ORDER})


# --- subscriptions ----------------------------------------------------------------------------------


def test_started_subscription_becomes_subscribe_keyed_by_subscription() -> None:
    event = mapped(make_mapper().map("subs", subscription()))
    assert event["event_name"] == "Subscribe"
    assert event["event_id"] == "sub-9"
    assert event["user_data"]["subscription_id"] == "sub-9"
    assert event["custom_data"] == {
        "value": 9.99,
        "currency": "EUR",
        "order_id": "ord-2001",
        "content_ids": ["plan-gold"],
    }


def test_trial_becomes_start_trial() -> None:
    trial = subscription(event_type="trial_started", order_id=None, amount=Decimal("0"))
    event = mapped(make_mapper().map("subs", trial))
    assert (event["event_name"], event["event_id"]) == ("StartTrial", "sub-9")
    assert event["custom_data"]["value"] == 0.0 and "order_id" not in event["custom_data"]


def test_renewal_is_a_purchase_keyed_by_the_renewal_charge() -> None:
    event = mapped(make_mapper().map("subs", subscription(event_type="renewed", order_id="ord-3001")))
    assert (event["event_name"], event["event_id"]) == ("Purchase", "ord-3001")
    assert event["custom_data"]["order_id"] == "ord-3001"
    assert event["user_data"]["subscription_id"] == "sub-9"


def test_renewal_without_its_charge_order_id_is_rejected_at_mapping() -> None:
    result = make_mapper().map("subs", subscription(event_type="renewed", order_id=None))
    assert result == Rejected("map", MISSING_EVENT_ID, "order_id is null or empty")


def test_cancellation_is_filtered_unless_configured() -> None:
    assert make_mapper().map("subs", subscription(event_type="cancelled")) == Filtered(
        EVENT_TYPE_NOT_SENT, "event_type=cancelled"
    )
    config = make_config(subs={"send_event_types": ["cancelled"]})
    event = mapped(
        make_mapper(config).map("subs", subscription(event_type="cancelled", amount=None, currency=None))
    )
    assert (event["event_name"], event["event_id"]) == ("SubscriptionCancelled", "sub-9")


def test_mapping_is_deterministic_for_replays() -> None:
    mapper = make_mapper()
    record = order()
    assert mapper.map("orders", record) == mapper.map("orders", copy.deepcopy(record))
