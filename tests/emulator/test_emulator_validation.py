"""Behaviours 3-7: all-or-nothing validation, event_time window, required fields, matching baseline,
hash shape. Every rejection must leave zero events stored."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from capi_emulator import EmulatorConfig
from tests.emulator.emulator_helpers import PIXEL, Client, error_of, make_event, sha

DAY = 86_400


def _assert_nothing_stored(client: Client) -> None:
    assert client.get("events")["count"] == 0
    assert client.get("stats")["events_received"] == 0


def _param_error(resp: Any) -> str:
    assert resp.status_code == 400
    err = error_of(resp)
    assert (err["code"], err["error_subcode"], err["is_transient"]) == (100, 2804019, False)
    msg: str = err["error_user_msg"]
    return msg


def test_thousand_events_accepted_thousand_and_one_rejected(client: Client) -> None:
    batch = [make_event(event_id=f"e{i}") for i in range(1000)]
    assert client.send(batch).json()["events_received"] == 1000
    client.post_admin("reset", {})

    resp = client.send([*batch, make_event(event_id="one-too-many")])
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["code"] == 100
    assert "1000" in err["message"]
    _assert_nothing_stored(client)


def test_one_bad_event_rejects_the_whole_batch(client: Client) -> None:
    batch = [make_event(event_id=f"e{i}") for i in range(5)]
    batch[3] = make_event(event_id="e3", event_time=None)
    msg = _param_error(client.send(batch))
    assert "$['data'][3]['event_time']" in msg
    _assert_nothing_stored(client)
    assert client.get("requests")["requests"][-1]["outcome"] == "rejected"


def test_event_older_than_seven_days_is_2804003(client: Client) -> None:
    old = make_event(event_time=int(time.time()) - 7 * DAY - 60)
    resp = client.send([make_event(event_id="fresh"), old])
    assert resp.status_code == 400
    err = error_of(resp)
    assert (err["code"], err["error_subcode"]) == (100, 2804003)
    assert err["error_user_title"] == "Event Timestamp Too Old"
    _assert_nothing_stored(client)


def test_event_just_inside_seven_days_is_accepted(make_client: Callable[..., Client], clock: Any) -> None:
    c = make_client(clock=clock)
    ev = make_event(event_time=int(clock.now) - 7 * DAY + 1)
    assert c.send([ev]).status_code == 200


def test_physical_store_events_have_62_days(client: Client) -> None:
    now = int(time.time())
    shop = make_event(action_source="physical_store", event_time=now - 30 * DAY)
    assert client.send([shop]).status_code == 200
    too_old = make_event(action_source="physical_store", event_time=now - 63 * DAY)
    assert error_of(client.send([too_old]))["error_subcode"] == 2804003


def test_event_age_limits_are_configurable(make_client: Callable[..., Client]) -> None:
    c = make_client(EmulatorConfig(max_event_age_s=3600))
    assert error_of(c.send([make_event(event_time=int(time.time()) - 7200)]))["error_subcode"] == 2804003


def test_future_skew_is_configurable(make_client: Callable[..., Client], clock: Any) -> None:
    default = make_client(clock=clock)
    assert default.send([make_event(event_time=int(clock.now) + 30)]).status_code == 200
    msg = _param_error(default.send([make_event(event_time=int(clock.now) + 600)]))
    assert "$['data'][0]['event_time']" in msg

    lenient = make_client(EmulatorConfig(max_future_skew_s=None), clock=clock)
    assert lenient.send([make_event(event_time=int(clock.now) + 30 * DAY)]).status_code == 200


@pytest.mark.parametrize("field", ["event_name", "event_time", "user_data", "action_source"])
def test_missing_required_field_names_its_json_path(client: Client, field: str) -> None:
    batch = [make_event(event_id=f"e{i}") for i in range(4)]
    batch[2] = make_event(**{field: None})
    msg = _param_error(client.send(batch))
    assert f"$['data'][2]['{field}']" in msg
    _assert_nothing_stored(client)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("event_time", "1700000000"),
        ("event_time", 1700000000.5),
        ("event_time", True),
        ("event_name", 42),
        ("user_data", ["em"]),
        ("event_id", 123),
        ("custom_data", "x"),
        ("opt_out", "yes"),
    ],
)
def test_mistyped_field_names_its_json_path(client: Client, field: str, value: Any) -> None:
    msg = _param_error(client.send([make_event(), make_event(**{field: value})]))
    assert f"$['data'][1]['{field}']" in msg


def test_mistyped_custom_data_value(client: Client) -> None:
    ev = make_event(custom_data={"value": "lots", "currency": "usd"})
    assert "$['data'][0]['custom_data']['value']" in _param_error(client.send([ev]))
    # The docs' own samples quote monetary values, so a numeric string passes.
    assert client.send([make_event(custom_data={"value": "12.50", "currency": "USD"})]).status_code == 200


def test_unknown_action_source(client: Client) -> None:
    msg = _param_error(client.send([make_event(action_source="web")]))
    assert "$['data'][0]['action_source']" in msg


@pytest.mark.parametrize(
    "source", ["email", "website", "phone_call", "chat", "physical_store", "system_generated", "other"]
)
def test_every_documented_action_source_is_accepted(client: Client, source: str) -> None:
    assert client.send([make_event(action_source=source)]).status_code == 200


def test_app_events_need_app_data(client: Client) -> None:
    msg = _param_error(client.send([make_event(action_source="app")]))
    assert "$['data'][0]['app_data']" in msg
    app_data = {"advertiser_tracking_enabled": 1, "extinfo": ["a2", *([""] * 15)]}
    assert client.send([make_event(action_source="app", app_data=app_data)]).status_code == 200


def test_website_fields_strictness_toggle(make_client: Callable[..., Client]) -> None:
    bare = make_event(action_source="website")
    assert make_client().send([bare]).status_code == 200  # as observed live on v26.0
    strict = make_client(EmulatorConfig(require_website_fields=True))
    assert "$['data'][0]['event_source_url']" in _param_error(strict.send([bare]))
    with_url = make_event(action_source="website", event_source_url="https://shop.example/checkout")
    assert "['client_user_agent']" in _param_error(strict.send([with_url]))
    full = make_event(
        action_source="website",
        event_source_url="https://shop.example/checkout",
        user_data={"em": sha("a@b.co"), "client_user_agent": "Mozilla/5.0"},
    )
    assert strict.send([full]).status_code == 200


@pytest.mark.parametrize(
    "user_data",
    [
        {},
        {"fn": sha("mary"), "ge": sha("f")},
        {"ln": sha("smith"), "ge": sha("f")},
        {"ge": sha("f")},
        {"db": sha("19900101"), "client_user_agent": "Mozilla/5.0"},
        {"ct": sha("paris"), "st": sha("idf"), "country": sha("fr"), "ge": sha("f")},
        {
            "ct": sha("paris"),
            "st": sha("idf"),
            "zp": sha("75001"),
            "country": sha("fr"),
            "ge": sha("f"),
            "client_user_agent": "Mozilla/5.0",
        },
        {"fn": sha("mary"), "em": []},
    ],
)
def test_matching_baseline_subsets_are_2804050(client: Client, user_data: dict[str, Any]) -> None:
    resp = client.send([make_event(), make_event(user_data=user_data)])
    assert resp.status_code == 400
    err = error_of(resp)
    assert (err["code"], err["error_subcode"]) == (100, 2804050)
    _assert_nothing_stored(client)


@pytest.mark.parametrize(
    "user_data",
    [
        {"em": sha("a@b.co")},
        {"external_id": "cust-1"},
        {"fbp": "fb.1.1700000000000.123"},
        {"client_ip_address": "203.0.113.9", "client_user_agent": "Mozilla/5.0"},
        {"fn": sha("mary"), "ln": sha("smith"), "ge": sha("f")},
        {"ph": [sha("16505551212"), sha("16505551213")]},
    ],
)
def test_enough_customer_information_is_accepted(client: Client, user_data: dict[str, Any]) -> None:
    assert client.send([make_event(user_data=user_data)]).status_code == 200


@pytest.mark.parametrize(
    ("user_data", "path"),
    [
        ({"em": "mary@example.com"}, "['user_data']['em']"),
        ({"em": [sha("a@b.co"), "mary@example.com"]}, "['user_data']['em'][1]"),
        ({"em": sha("a@b.co").upper()}, "['user_data']['em']"),
        ({"ph": ["16505551212"]}, "['user_data']['ph'][0]"),
        ({"external_id": "c1", "country": "us"}, "['user_data']['country']"),
        ({"em": [12345]}, "['user_data']['em'][0]"),
    ],
)
def test_unhashed_values_rejected_in_strict_mode(
    client: Client, user_data: dict[str, Any], path: str
) -> None:
    msg = _param_error(client.send([make_event(user_data=user_data)]))
    assert f"$['data'][0]{path}" in msg


def test_hash_check_can_be_switched_off(make_client: Callable[..., Client]) -> None:
    c = make_client(EmulatorConfig(strict_hashing=False))
    ev = make_event(user_data={"em": "mary@example.com", "ph": ["+1 650 555 1212"]})
    assert c.send([ev]).status_code == 200


def test_identifiers_that_must_not_be_hashed_are_accepted_raw(client: Client) -> None:
    user_data = {
        "external_id": ["cust-1", "cust-2"],
        "client_ip_address": "2001:db8::1",
        "client_user_agent": "Mozilla/5.0",
        "fbc": "fb.1.1700000000000.AbCdEf",
        "fbp": "fb.1.1700000000000.1234567890",
        "fb_login_id": 1234567890,
        "lead_id": 987654321,
        "madid": "38400000-8cf0-11bd-b23e-10b96e40000d",
    }
    resp = client.send([make_event(user_data=user_data)])
    assert resp.status_code == 200
    assert client.get("events", pixel=PIXEL)["events"][0]["event"]["user_data"] == user_data
