"""Pre-send validation of whole server events, against an injected clock."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consumer.validate import (
    ACTION_SOURCES,
    BROAD_USER_DATA_COMBINATIONS,
    MAX_EVENT_AGE_S,
    MAX_FUTURE_S,
    MAX_PHYSICAL_STORE_AGE_S,
    REJECTION_REASONS,
    Rejection,
    _check_keys,
    is_http_url,
    validate_event,
    validate_mapped_event,
)

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z
EM = hashlib.sha256(b"joe@example.com").hexdigest()


def event(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(NOW) - 3600,
        "action_source": "system_generated",
        "event_id": "order-1",
        "user_data": {"em": EM},
        "custom_data": {"value": 12.5, "currency": "EUR"},
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def reason_of(ev: dict[str, Any], now: float = NOW) -> str | None:
    rejection = validate_event(ev, now=now)
    if rejection is not None:
        assert rejection.reason in REJECTION_REASONS
    return None if rejection is None else rejection.reason


def test_a_good_purchase_passes() -> None:
    assert validate_event(event(), now=NOW) is None


def test_action_sources_are_metas_enum() -> None:
    assert "system_generated" in ACTION_SOURCES
    assert len(ACTION_SOURCES) == 9


@pytest.mark.parametrize("name", ["event_name", "event_time", "action_source", "user_data"])
def test_required_fields(name: str) -> None:
    ev = event()
    del ev[name]
    assert validate_event(ev, now=NOW) == Rejection("missing_field", name)


@pytest.mark.parametrize(
    ("overrides", "path"),
    [
        ({"event_time": float(NOW)}, "event_time"),
        ({"event_time": True}, "event_time"),
        ({"event_name": 3}, "event_name"),
        ({"user_data": [EM]}, "user_data"),
        ({"custom_data": "12.5 EUR"}, "custom_data"),
        ({"custom_data": {"value": "12.5", "currency": "EUR"}}, "custom_data.value"),
        ({"custom_data": {"value": float("nan"), "currency": "EUR"}}, "custom_data.value"),
        ({"custom_data": {"value": True, "currency": "EUR"}}, "custom_data.value"),
    ],
)
def test_wrong_types(overrides: dict[str, Any], path: str) -> None:
    assert validate_event(event(**overrides), now=NOW) == Rejection("invalid_field_type", path)


@pytest.mark.parametrize("source", ["Website", "web", "offline", 3])
def test_action_source_outside_the_enum(source: object) -> None:
    assert reason_of(event(action_source=source)) == "invalid_action_source"


def test_event_time_window_boundaries() -> None:
    now = int(NOW)
    assert reason_of(event(event_time=now - MAX_EVENT_AGE_S)) is None
    assert reason_of(event(event_time=now - MAX_EVENT_AGE_S - 1)) == "event_too_old"
    assert reason_of(event(event_time=now + MAX_FUTURE_S)) is None
    assert reason_of(event(event_time=now + MAX_FUTURE_S + 1)) == "event_in_future"


def test_physical_store_events_may_be_62_days_old() -> None:
    now = int(NOW)
    assert reason_of(event(action_source="physical_store", event_time=now - 30 * 86_400)) is None
    assert reason_of(event(action_source="physical_store", event_time=now - MAX_PHYSICAL_STORE_AGE_S)) is None
    old = now - MAX_PHYSICAL_STORE_AGE_S - 1
    assert reason_of(event(action_source="physical_store", event_time=old)) == "event_too_old"


def test_the_clock_is_injected_not_read() -> None:
    ev = event(event_time=1_000_000)
    assert reason_of(ev, now=1_000_000 + 10) is None
    assert reason_of(ev, now=1_000_000 + MAX_EVENT_AGE_S + 1) == "event_too_old"


def test_age_detail_names_the_field_and_seconds() -> None:
    rejection = validate_event(event(event_time=int(NOW) - 8 * 86_400), now=NOW)
    assert rejection == Rejection("event_too_old", "event_time (691200 s old, limit 604800 s)")


def test_website_events_need_url_and_user_agent() -> None:
    web = {"action_source": "website", "event_source_url": "https://shop.example/checkout"}
    ua = {"em": EM, "client_user_agent": "Mozilla/5.0"}
    assert reason_of(event(**web, user_data=ua)) is None
    assert validate_event(event(action_source="website", user_data=ua), now=NOW) == Rejection(
        "website_missing_event_source_url", "event_source_url"
    )
    assert validate_event(event(**web), now=NOW) == Rejection(
        "website_missing_user_agent", "user_data.client_user_agent"
    )


@pytest.mark.parametrize("url", ["ftp://shop.example/", "shop.example/checkout", "https://", "javascript:x"])
def test_event_source_url_must_be_http(url: str) -> None:
    ev = event(action_source="website", event_source_url=url, user_data={"em": EM, "client_user_agent": "UA"})
    assert reason_of(ev) == "invalid_event_source_url"


def _urlsplit_says_http(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


@settings(max_examples=3000, deadline=None)
@given(
    st.sampled_from(["http://", "https://", "HTTP://", "http:/", "https:", " http://", ""]),
    st.text(alphabet="ab.:@/?#[]\t\r\n %é1", max_size=12),
)
def test_the_http_url_fast_path_decides_what_urlsplit_decides(prefix: str, rest: str) -> None:
    assert is_http_url(prefix + rest) == _urlsplit_says_http(prefix + rest), prefix + rest


def test_app_events_need_app_data() -> None:
    good_app_data = {"advertiser_tracking_enabled": 1, "extinfo": ["a2"] + [""] * 15}
    assert reason_of(event(action_source="app", app_data=good_app_data)) is None
    assert reason_of(event(action_source="app")) == "app_missing_app_data"
    short = {"advertiser_tracking_enabled": 1, "extinfo": ["a2"]}
    assert validate_event(event(action_source="app", app_data=short), now=NOW) == Rejection(
        "app_missing_app_data", "app_data.extinfo"
    )


def test_business_messaging_needs_a_channel() -> None:
    assert reason_of(event(action_source="business_messaging")) == "messaging_missing_channel"
    assert reason_of(event(action_source="business_messaging", messaging_channel="whatsapp")) is None


@pytest.mark.parametrize(
    "keys",
    [
        set(),
        {"ct", "country", "st", "zp", "ge", "client_user_agent"},
        {"ge", "st", "country"},
        {"db", "client_user_agent"},
        {"fn", "ge"},
        {"ln"},
    ],
)
def test_matching_baseline_rejects_broad_combinations(keys: set[str]) -> None:
    user_data = {k: ("UA" if k == "client_user_agent" else EM) for k in keys}
    rejection = validate_event(event(user_data=user_data), now=NOW)
    assert rejection == Rejection("insufficient_user_data", "user_data keys: " + ",".join(sorted(keys)))


@pytest.mark.parametrize(
    "user_data",
    [
        {"fn": EM, "ln": EM},
        {"db": EM, "ge": EM},
        {"fbp": "fb.1.1.1"},
        {"client_ip_address": "203.0.113.7"},
        {"external_id": "cust-1"},
        {"ct": EM, "fn": EM},
    ],
)
def test_matching_baseline_accepts_useful_combinations(user_data: dict[str, Any]) -> None:
    assert reason_of(event(user_data=user_data)) is None


def test_empty_values_do_not_count_as_keys() -> None:
    assert reason_of(event(user_data={"em": [], "ph": None, "fbp": "", "ge": EM})) == "insufficient_user_data"


@pytest.mark.parametrize("value", ["joe@example.com", EM.upper(), [EM, "joe@example.com"], 5])
def test_raw_pii_in_a_hashed_key_is_refused(value: object) -> None:
    rejection = validate_event(event(user_data={"em": value}), now=NOW)
    assert rejection == Rejection("unhashed_user_data", "user_data.em")


def test_purchase_needs_value_and_currency() -> None:
    assert validate_event(event(custom_data={"currency": "EUR"}), now=NOW) == Rejection(
        "purchase_missing_value", "custom_data.value"
    )
    assert validate_event(event(custom_data={"value": 0}), now=NOW) == Rejection(
        "purchase_missing_currency", "custom_data.currency"
    )
    assert reason_of(event(custom_data=None)) == "purchase_missing_value"
    assert reason_of(event(custom_data={"value": 1, "currency": ""})) == "purchase_missing_currency"


@pytest.mark.parametrize("currency", ["usd", "EUR", "jpy"])
def test_currency_is_case_insensitive(currency: str) -> None:
    assert reason_of(event(custom_data={"value": 1, "currency": currency})) is None


@pytest.mark.parametrize("currency", ["EURO", "XYZ", "$", " EUR", 978])
def test_currency_must_be_iso_4217(currency: object) -> None:
    assert reason_of(event(custom_data={"value": 1, "currency": currency})) == "invalid_currency"
    assert reason_of(event(event_name="AddToCart", custom_data={"currency": currency})) == "invalid_currency"


def test_non_purchase_events_need_no_value() -> None:
    assert reason_of(event(event_name="Subscribe", custom_data=None)) is None


def test_details_never_contain_user_values() -> None:
    raw_email = "joe@example.com"
    for ev in (event(user_data={"em": raw_email}), event(user_data={"ge": raw_email})):
        rejection = validate_event(ev, now=NOW)
        assert rejection is not None
        assert raw_email not in rejection.detail


def test_the_matching_baseline_shortcut_decides_as_the_combinations_do() -> None:
    # _check_keys first passes key sets with a key outside every broad combination; every subset of
    # their union (with and without such a key) must still be judged as the combinations judge it.
    union = sorted(frozenset().union(*BROAD_USER_DATA_COMBINATIONS))
    for mask in range(2 ** len(union)):
        subset = {key for i, key in enumerate(union) if mask >> i & 1}
        for keys in (subset, subset | {"em"}, subset | {"fbp"}):
            broad = not keys or any(keys <= combination for combination in BROAD_USER_DATA_COMBINATIONS)
            rejection = _check_keys(keys)
            assert (rejection is not None) == broad, keys


def test_validating_a_mapped_event_skips_only_what_the_mapping_guarantees() -> None:
    now = NOW
    cases = [
        event(),
        event(event_time=int(NOW) - 8 * 86_400),
        event(event_time=int(NOW) + 120),
        event(user_data={"ge": EM}),
        event(custom_data={"currency": "EUR"}),
        event(custom_data={"value": 1.0, "currency": "XXY"}),
        event(action_source="physical_store", event_time=int(NOW) - 8 * 86_400),
        event(action_source="website", event_source_url="https://x.example/"),
        event(
            action_source="website",
            event_source_url="ftp://x",
            user_data={"em": EM, "client_user_agent": "UA"},
        ),
        event(action_source="app"),
        event(action_source="business_messaging"),
    ]
    for ev in cases:
        assert validate_mapped_event(ev, now=now) == validate_event(ev, now=now, normalized=True)
