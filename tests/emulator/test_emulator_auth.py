"""Behaviour 1: routing, versions, the four token locations, token states, appsecret_proof, pixels."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable

import pytest

from capi_emulator import EmulatorConfig, TokenConfig
from tests.emulator.emulator_helpers import OTHER_PIXEL, PIXEL, TOKEN, Client, error_of, make_event


@pytest.mark.parametrize("version", ["v23.0", "v24.0", "v25.0", "v26.0"])
def test_accepted_versions_answer_success_envelope(client: Client, version: str) -> None:
    resp = client.send([make_event()], version=version)
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"events_received", "messages", "fbtrace_id"}
    assert body["events_received"] == 1
    assert body["messages"] == []
    assert resp.headers["Content-Type"].startswith("application/json")


@pytest.mark.parametrize("version", ["v22.0", "v13.0", "v99.0"])
def test_versions_not_served_answer_2635(client: Client, version: str) -> None:
    resp = client.send([make_event()], version=version)
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["code"] == 2635
    assert "v26.0" in err["message"]
    assert client.get("stats")["events_received"] == 0


def test_unknown_path_is_a_graph_error(client: Client) -> None:
    resp = client.http.post(f"{client.base}/v26.0/{PIXEL}/nonsense", params={"access_token": TOKEN})
    assert resp.status_code == 400
    assert error_of(resp)["code"] == 2500


def test_token_in_query_string(client: Client) -> None:
    resp = client.http.post(
        client.events_url(), params={"access_token": TOKEN}, json={"data": [make_event()]}
    )
    assert resp.json()["events_received"] == 1


def test_token_in_form_field(client: Client) -> None:
    resp = client.http.post(
        client.events_url(), data={"access_token": TOKEN, "data": json.dumps([make_event()])}
    )
    assert resp.json()["events_received"] == 1


def test_token_in_json_field(client: Client) -> None:
    resp = client.http.post(client.events_url(), json={"access_token": TOKEN, "data": [make_event()]})
    assert resp.json()["events_received"] == 1


def test_token_as_bearer_header(client: Client) -> None:
    resp = client.http.post(
        client.events_url(), headers={"Authorization": f"Bearer {TOKEN}"}, json={"data": [make_event()]}
    )
    assert resp.json()["events_received"] == 1


def test_missing_token_is_104(client: Client) -> None:
    resp = client.send([make_event()], token=None)
    assert resp.status_code == 400
    err = error_of(resp)
    assert err["code"] == 104
    assert err["type"] == "OAuthException"
    assert "error_subcode" not in err


def test_unknown_token_is_190_http_401(client: Client) -> None:
    resp = client.send([make_event()], token="nope")
    assert resp.status_code == 401
    err = error_of(resp)
    assert (err["code"], err["type"], err["is_transient"]) == (190, "OAuthException", False)
    assert "error_subcode" not in err
    assert resp.headers["WWW-Authenticate"].startswith("OAuth")


def test_configured_expired_token_is_190_463(make_client: Callable[..., Client]) -> None:
    cfg = EmulatorConfig(tokens={"old": TokenConfig(pixels=[PIXEL], expired=True)})
    resp = make_client(cfg).send([make_event()], token="old")
    assert resp.status_code == 401
    err = error_of(resp)
    assert (err["code"], err["error_subcode"]) == (190, 463)


def test_token_expires_and_is_restored_at_run_time(client: Client) -> None:
    assert client.post_admin("tokens", {"token": TOKEN, "expired": True}).status_code == 200
    err = error_of(client.send([make_event()]))
    assert (err["code"], err["error_subcode"]) == (190, 463)
    assert client.get("tokens")["tokens"][TOKEN]["expired"] is True

    client.post_admin("tokens", {"token": TOKEN, "expired": False})
    assert client.send([make_event()]).status_code == 200


def test_token_created_and_deleted_at_run_time(client: Client) -> None:
    assert client.post_admin("tokens", {"token": "fresh"}).status_code == 400  # unknown needs pixels
    client.post_admin("tokens", {"token": "fresh", "pixels": ["555"]})
    assert client.send([make_event()], token="fresh", pixel="555").status_code == 200
    client.post_admin("tokens", {"token": "fresh", "delete": True})
    assert error_of(client.send([make_event()], token="fresh", pixel="555"))["code"] == 190


def _proof(secret: str, token: str) -> str:
    return hmac.new(secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def test_appsecret_proof_checked_when_configured(make_client: Callable[..., Client]) -> None:
    cfg = EmulatorConfig(
        tokens={
            "strict": TokenConfig(pixels=[PIXEL], app_secret="s3cret", require_appsecret_proof=True),
            "lenient": TokenConfig(pixels=[PIXEL], app_secret="s3cret"),
        }
    )
    c = make_client(cfg)
    url = c.events_url()
    ok = c.http.post(
        url,
        params={"access_token": "strict", "appsecret_proof": _proof("s3cret", "strict")},
        json={"data": [make_event()]},
    )
    assert ok.status_code == 200

    wrong = c.http.post(
        url,
        params={"access_token": "strict", "appsecret_proof": _proof("other", "strict")},
        json={"data": [make_event()]},
    )
    err = error_of(wrong)
    assert (wrong.status_code, err["code"], err["type"]) == (400, 100, "GraphMethodException")
    assert "appsecret_proof" in err["message"]

    missing = c.send([make_event()], token="strict")
    assert error_of(missing)["code"] == 100
    assert "appsecret_proof" in error_of(missing)["message"]

    # Without "Require App Secret" a missing proof is fine, but a wrong one still fails.
    assert c.send([make_event()], token="lenient").status_code == 200
    bad = c.http.post(
        url, params={"access_token": "lenient", "appsecret_proof": "0" * 64}, json={"data": [make_event()]}
    )
    assert error_of(bad)["code"] == 100


def test_pixel_not_allowed_for_token_is_100_33(client: Client) -> None:
    resp = client.send([make_event()], pixel="999")
    assert resp.status_code == 400
    err = error_of(resp)
    assert (err["code"], err["error_subcode"], err["type"]) == (100, 33, "GraphMethodException")
    assert "'999'" in err["message"]
    assert client.send([make_event()], pixel=OTHER_PIXEL).status_code == 200


def test_wildcard_token_writes_any_pixel(make_client: Callable[..., Client]) -> None:
    c = make_client(EmulatorConfig(tokens={"any": TokenConfig(pixels=["*"])}))
    for pixel in ("1", "42", "987654321"):
        assert c.send([make_event()], token="any", pixel=pixel).json()["events_received"] == 1


def test_fbtrace_id_differs_per_response(client: Client) -> None:
    ids = {client.send([make_event()]).json()["fbtrace_id"] for _ in range(5)}
    ids |= {error_of(client.send([make_event()], token=None))["fbtrace_id"] for _ in range(5)}
    assert len(ids) == 10
