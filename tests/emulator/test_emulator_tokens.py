"""Platforms with many clients: per-client tokens, the permission error, the token admin API at scale."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from capi_emulator import EmulatorConfig, TokenConfig, create_app, load_config
from tests.emulator.emulator_helpers import OTHER_PIXEL, PIXEL, TOKEN, Client, error_of, make_event

PLATFORM = {
    "ok-token": TokenConfig(pixels=["111"]),
    "expired-token": TokenConfig(pixels=["222"], expired=True),
    "no-perm-token": TokenConfig(pixels=["333"], missing_permission=True),
    "other-token": TokenConfig(pixels=["555"]),
}


def _outcome(resp: Any) -> tuple[int, int | None, int | None]:
    """(HTTP status, code, subcode): what a `check` command tells clients apart by."""
    if resp.status_code == 200:
        return 200, None, None
    err = error_of(resp)
    return resp.status_code, err["code"], err.get("error_subcode")


def test_missing_permission_is_200_permissions_error_http_403(make_client: Callable[..., Client]) -> None:
    c = make_client(EmulatorConfig(tokens=PLATFORM))
    resp = c.send([make_event()], token="no-perm-token", pixel="333")
    assert resp.status_code == 403
    assert resp.headers["Content-Type"].startswith("application/json")
    err = error_of(resp)
    assert set(err) == {"message", "type", "code", "is_transient", "fbtrace_id"}  # no subcode
    assert (err["code"], err["type"], err["is_transient"]) == (200, "OAuthException", False)
    assert err["message"] == "(#200) Permissions error"
    assert resp.headers["x-fb-trace-id"] == err["fbtrace_id"]
    assert c.get("events")["count"] == 0
    stats = c.get("stats")
    assert (stats["by_status"], stats["by_error"], stats["requests_rejected"]) == ({"403": 1}, {"200": 1}, 1)


def test_check_tells_ok_expired_permission_and_unknown_pixel_apart(
    make_client: Callable[..., Client],
) -> None:
    c = make_client(EmulatorConfig(tokens=PLATFORM))
    fields = {"test_event_code": "TEST123", "partner_agent": "capi-consumer-check"}
    answers = [
        _outcome(c.send([make_event()], token=token, pixel=pixel, **fields))
        for token, pixel in [
            ("ok-token", "111"),
            ("expired-token", "222"),
            ("no-perm-token", "333"),
            ("ok-token", "999"),  # a pixel no token knows
            ("ok-token", "555"),  # a pixel another client's token may write
            ("no-perm-token", "999"),  # no object to lack permission on: 100/33 comes first
            ("gone-token", "111"),
        ]
    ]
    assert answers == [
        (200, None, None),
        (401, 190, 463),
        (403, 200, None),
        (400, 100, 33),
        (400, 100, 33),
        (400, 100, 33),
        (401, 190, None),
    ]
    unknown = error_of(c.send([make_event()], token="no-perm-token", pixel="999"))
    assert unknown["type"] == "GraphMethodException"

    # Every request, accepted or not, is logged with its test_event_code and partner_agent.
    log = c.get("requests")["requests"]
    assert len(log) == 8
    assert {(r["test_event_code"], r["partner_agent"]) for r in log[:7]} == {
        ("TEST123", "capi-consumer-check")
    }
    assert [(r["pixel_id"], r["status"], r["error_code"]) for r in log[:3]] == [
        ("111", 200, None),
        ("222", 401, 190),
        ("333", 403, 200),
    ]
    stored = c.get("events")["events"]
    assert [(e["pixel_id"], e["test_event_code"], e["partner_agent"]) for e in stored] == [
        ("111", "TEST123", "capi-consumer-check")
    ]


def test_request_log_has_test_event_code_and_partner_agent_per_request(client: Client) -> None:
    client.send([make_event(event_id="a")], test_event_code="T1", partner_agent="agent-a")
    client.send([make_event(event_id="b")], pixel=OTHER_PIXEL, partner_agent="agent-b")
    client.send([make_event(event_id="c")], test_event_code="T3")
    client.send([make_event(event_id="d")], token="nope", test_event_code="T4", partner_agent="agent-d")
    log = client.get("requests")["requests"]
    assert [(r["status"], r["test_event_code"], r["partner_agent"]) for r in log] == [
        (200, "T1", "agent-a"),
        (200, None, "agent-b"),
        (200, "T3", None),
        (401, "T4", "agent-d"),
    ]


def test_permission_revoked_and_granted_again_at_run_time(client: Client) -> None:
    resp = client.post_admin("tokens", {"token": TOKEN, "missing_permission": True})
    assert resp.status_code == 200
    body = resp.json()
    assert body["count"] == 1
    assert body["tokens"][TOKEN]["missing_permission"] is True
    assert body["tokens"][TOKEN]["pixels"] == [PIXEL, OTHER_PIXEL]  # fields not sent are kept
    assert _outcome(client.send([make_event()])) == (403, 200, None)
    assert _outcome(client.send([make_event()], pixel="999")) == (400, 100, 33)
    assert client.get(f"tokens/{TOKEN}")["tokens"][TOKEN]["missing_permission"] is True

    client.post_admin("tokens", {"token": TOKEN, "missing_permission": False})
    assert client.send([make_event()]).status_code == 200


def test_bulk_add_creates_every_token(client: Client) -> None:
    entries: list[dict[str, Any]] = [{"token": f"client-{i}", "pixels": [f"10{i}"]} for i in range(3)]
    entries.append({"token": "client-x", "pixels": ["109"], "missing_permission": True})
    resp = client.post_admin("tokens", entries)
    assert resp.status_code == 200
    body = resp.json()
    assert body["count"] == 5  # test-token + 4
    assert body["deleted"] == []
    assert sorted(body["tokens"]) == ["client-0", "client-1", "client-2", "client-x"]
    assert body["tokens"]["client-1"] == {
        "pixels": ["101"],
        "expired": False,
        "missing_permission": False,
        "has_app_secret": False,
        "require_appsecret_proof": False,
    }
    for i in range(3):
        assert client.send([make_event()], token=f"client-{i}", pixel=f"10{i}").status_code == 200
    assert _outcome(client.send([make_event()], token="client-0", pixel="101")) == (400, 100, 33)
    assert _outcome(client.send([make_event()], token="client-x", pixel="109")) == (403, 200, None)
    listing = client.get("tokens")
    assert listing["count"] == 5 and len(listing["tokens"]) == 5


def test_bulk_is_all_or_nothing(client: Client) -> None:
    resp = client.post_admin(
        "tokens",
        [
            {"token": "fine", "pixels": ["101"]},
            {"token": "no-pixels"},  # unknown tokens need pixels
            {"token": TOKEN, "expired": True},
        ],
    )
    assert resp.status_code == 400
    body = resp.json()
    assert body["index"] == 1
    assert "no-pixels" in body["error"]
    assert _outcome(client.send([make_event()], token="fine", pixel="101")) == (401, 190, None)
    assert client.send([make_event()]).status_code == 200

    missing = client.post_admin(
        "tokens", [{"token": "fine", "pixels": ["1"]}, {"token": "x", "delete": True}]
    )
    assert (missing.status_code, missing.json()["index"]) == (404, 1)
    bad = client.post_admin("tokens", [{"pixels": ["1"]}])
    assert (bad.status_code, bad.json()["index"]) == (400, 0)
    assert client.get("tokens")["count"] == 1


def test_bulk_entries_apply_in_order(client: Client) -> None:
    resp = client.post_admin(
        "tokens",
        [
            {"token": "new", "pixels": ["101"]},
            {"token": "new", "expired": True},  # sees the entry above
            {"token": TOKEN, "delete": True},
            {"token": "temp", "pixels": ["102"]},
            {"token": "temp", "delete": True},
        ],
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["count"] == 1
    assert body["tokens"] == {"new": body["tokens"]["new"]}
    assert (body["tokens"]["new"]["pixels"], body["tokens"]["new"]["expired"]) == (["101"], True)
    assert sorted(body["deleted"]) == ["temp", TOKEN]
    assert _outcome(client.send([make_event()], token="new", pixel="101")) == (401, 190, 463)
    assert _outcome(client.send([make_event()])) == (401, 190, None)


def test_expired_token_restored_and_replaced(make_client: Callable[..., Client]) -> None:
    c = make_client(EmulatorConfig(tokens=PLATFORM))
    assert _outcome(c.send([make_event()], token="expired-token", pixel="222")) == (401, 190, 463)

    # The client pastes a new token for the same pixel: the new one works, the old one stays expired.
    assert c.post_admin("tokens", {"token": "replacement", "pixels": ["222"]}).status_code == 200
    assert c.send([make_event()], token="replacement", pixel="222").status_code == 200
    assert _outcome(c.send([make_event()], token="expired-token", pixel="222")) == (401, 190, 463)

    # Or the old token is refreshed in place: un-expired, its pixels kept.
    resp = c.post_admin("tokens", {"token": "expired-token", "expired": False})
    assert resp.json()["tokens"]["expired-token"]["pixels"] == ["222"]
    assert c.send([make_event()], token="expired-token", pixel="222").status_code == 200

    # A reset goes back to the configuration.
    c.post_admin("reset", {})
    assert _outcome(c.send([make_event()], token="expired-token", pixel="222")) == (401, 190, 463)
    assert _outcome(c.send([make_event()], token="replacement", pixel="222")) == (401, 190, None)


def test_delete_token_then_190(client: Client) -> None:
    assert client.send([make_event()]).status_code == 200
    resp = client.delete_admin(f"tokens/{TOKEN}")
    assert resp.status_code == 200
    assert resp.json() == {"count": 0, "tokens": {}, "deleted": [TOKEN]}
    after = client.send([make_event()])
    assert _outcome(after) == (401, 190, None)
    assert after.headers["WWW-Authenticate"].startswith("OAuth")

    again = client.delete_admin(f"tokens/{TOKEN}")
    assert again.status_code == 404
    assert "error" in again.json()
    assert client.http.get(f"{client.base}/_emulator/tokens/{TOKEN}", timeout=10).status_code == 404
    assert client.get("tokens") == {"count": 0, "tokens": {}}

    client.post_admin("reset", {})
    assert client.send([make_event()]).status_code == 200


def test_token_with_special_characters_in_path(client: Client) -> None:
    token = "123456|app-token"  # app access tokens are "app_id|secret"
    client.post_admin("tokens", {"token": token, "pixels": [PIXEL]})
    assert client.get("tokens/123456%7Capp-token")["tokens"][token]["pixels"] == [PIXEL]
    assert client.delete_admin("tokens/123456%7Capp-token").json()["deleted"] == [token]


N_TOKENS = 10_000


def _pixel(i: int) -> str:
    return str(1_000_000_000_000 + i)


def _write_10k_yaml(path: Path) -> None:
    lines = ["tokens:"]
    for i in range(N_TOKENS):
        lines += [f"  client-{i:05d}:", f'    pixels: ["{_pixel(i)}"]']
        if i % 1000 == 999:
            lines.append("    expired: true")
    # A platform-wide system user that was granted every client's pixel.
    lines += ["  platform-token:", "    pixels:"] + [f'      - "{_pixel(i)}"' for i in range(N_TOKENS)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_10k_token_config_loads_and_serves(tmp_path: Path, make_client: Callable[..., Client]) -> None:
    # Load time is measured by hand (docs/emulator.md), not asserted: timed unit tests flake.
    path = tmp_path / "platform.yaml"
    _write_10k_yaml(path)
    cfg = load_config(path)
    create_app(cfg)

    c = make_client(cfg)
    assert c.get("tokens")["count"] == N_TOKENS + 1
    for i in (0, 4_321, N_TOKENS - 2):
        assert c.send([make_event()], token=f"client-{i:05d}", pixel=_pixel(i)).status_code == 200
    last = f"client-{N_TOKENS - 1:05d}"  # every 1000th client's token is expired
    assert _outcome(c.send([make_event()], token=last, pixel=_pixel(N_TOKENS - 1))) == (401, 190, 463)
    assert _outcome(c.send([make_event()], token="client-00000", pixel=_pixel(1))) == (400, 100, 33)
    assert c.send([make_event()], token="platform-token", pixel=_pixel(N_TOKENS - 1)).status_code == 200
    assert _outcome(c.send([make_event()], token="platform-token", pixel="42")) == (400, 100, 33)
    assert c.get(f"tokens/{last}")["tokens"][last]["expired"] is True

    assert c.post_admin("reset", {}).status_code == 200
    assert c.get("tokens")["count"] == N_TOKENS + 1


def test_10k_token_json_config_and_bulk_post(tmp_path: Path, make_client: Callable[..., Client]) -> None:
    path = tmp_path / "platform.json"
    tokens = {f"client-{i:05d}": {"pixels": [int(_pixel(i))]} for i in range(N_TOKENS)}
    path.write_bytes(orjson.dumps({"tokens": tokens}))
    cfg = load_config(path)
    c = make_client(cfg)
    assert c.send([make_event()], token="client-09999", pixel=_pixel(N_TOKENS - 1)).status_code == 200

    # The same 10,000 clients again through the admin API, half of them now lacking the permission.
    entries = [{"token": f"client-{i:05d}", "missing_permission": i % 2 == 1} for i in range(N_TOKENS)]
    resp = c.post_admin("tokens", entries)
    assert resp.status_code == 200
    assert (resp.json()["count"], len(resp.json()["tokens"])) == (N_TOKENS, N_TOKENS)
    assert c.send([make_event()], token="client-09998", pixel=_pixel(N_TOKENS - 2)).status_code == 200
    assert _outcome(c.send([make_event()], token="client-09999", pixel=_pixel(N_TOKENS - 1))) == (
        403,
        200,
        None,
    )


def test_yaml_flow_mapping_starting_with_brace_still_loads(
    tmp_path: Path, make_client: Callable[..., Client]
) -> None:
    path = tmp_path / "flow.yaml"
    path.write_text("{tokens: {tok: {pixels: [42], missing_permission: true}}}\n")  # YAML, not JSON
    c = make_client(load_config(path))
    assert _outcome(c.send([make_event()], token="tok", pixel="42")) == (403, 200, None)
