"""Behaviour 2: the three encodings of `data` and the top-level request fields in either body type."""

from __future__ import annotations

import json

from tests.emulator.emulator_helpers import PIXEL, TOKEN, Client, error_of, make_event

TOP_LEVEL = {
    "test_event_code": "TEST123",
    "partner_agent": "capi-consumer-0.1.0",
    "namespace_id": "ns-1",
    "upload_id": "up-1",
    "upload_tag": "nightly",
    "upload_source": "kafka",
}


def _stored(client: Client) -> list[dict[str, object]]:
    events: list[dict[str, object]] = client.get("events", pixel=PIXEL)["events"]
    return events


def test_json_body_array_of_objects(client: Client) -> None:
    events = [make_event(event_id="a"), make_event(event_id="b")]
    resp = client.http.post(
        client.events_url(), params={"access_token": TOKEN}, json={"data": events, **TOP_LEVEL}
    )
    assert resp.json()["events_received"] == 2
    stored = _stored(client)
    assert [e["event"] for e in stored] == events
    for e in stored:
        for key, value in TOP_LEVEL.items():
            assert e[key] == value


def test_form_field_with_json_array_of_objects(client: Client) -> None:
    events = [make_event(event_id="a"), make_event(event_id="b")]
    resp = client.http.post(
        client.events_url(), data={"access_token": TOKEN, "data": json.dumps(events), **TOP_LEVEL}
    )
    assert resp.status_code == 200
    assert resp.json()["events_received"] == 2
    stored = _stored(client)
    assert [e["event"] for e in stored] == events
    assert all(e["partner_agent"] == TOP_LEVEL["partner_agent"] for e in stored)
    assert all(e["upload_tag"] == "nightly" for e in stored)


def test_form_field_with_json_array_of_json_strings_as_the_sdk_sends(client: Client) -> None:
    events = [make_event(event_id="a"), make_event(event_id="b")]
    encoded = json.dumps([json.dumps(e) for e in events], sort_keys=True, separators=(",", ":"))
    resp = client.http.post(
        client.events_url(),
        params={"access_token": TOKEN},
        data={"data": encoded, "test_event_code": "T1"},
    )
    assert resp.json()["events_received"] == 2
    stored = _stored(client)
    assert [e["event"] for e in stored] == events
    assert {e["test_event_code"] for e in stored} == {"T1"}


def test_multipart_form_as_in_metas_curl_example(client: Client) -> None:
    resp = client.http.post(
        client.events_url(),
        files={
            "data": (None, json.dumps([make_event()])),
            "access_token": (None, TOKEN),
            "test_event_code": (None, "TM"),
        },
    )
    assert resp.json()["events_received"] == 1
    assert _stored(client)[0]["test_event_code"] == "TM"


def test_missing_data_is_a_parameter_error(client: Client) -> None:
    resp = client.http.post(client.events_url(), json={"access_token": TOKEN, "test_event_code": "x"})
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["code"] == 100
    assert "data" in err["message"]


def test_data_that_is_not_an_array_is_rejected(client: Client) -> None:
    for bad in ("not json", json.dumps({"event_name": "x"})):
        resp = client.http.post(client.events_url(), data={"access_token": TOKEN, "data": bad})
        assert error_of(resp)["code"] == 100
    resp = client.http.post(client.events_url(), data={"access_token": TOKEN, "data": '["{broken"]'})
    err = error_of(resp)
    assert (err["code"], err["error_subcode"]) == (100, 2804019)
    assert "$['data'][0]" in err["error_user_msg"]


def test_invalid_json_body(client: Client) -> None:
    resp = client.http.post(
        client.events_url(),
        params={"access_token": TOKEN},
        data=b"{not json",
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 400
    assert error_of(resp)["code"] == 100


def test_top_level_field_of_wrong_type(client: Client) -> None:
    resp = client.send([make_event()], test_event_code={"nested": True})
    assert error_of(resp)["code"] == 100
    assert client.get("stats")["events_received"] == 0
