"""Behaviour 10 and the inspection API: stored events with the dedup flag, request log, stats, reset."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from capi_emulator import EmulatorConfig
from tests.emulator.emulator_helpers import OTHER_PIXEL, PIXEL, Client, FakeClock, make_event

HOUR = 3600


def test_events_filtered_by_pixel_and_test_event_code(client: Client) -> None:
    client.send([make_event(event_id="a")], test_event_code="T1", partner_agent="agent-a")
    client.send([make_event(event_id="b")], pixel=OTHER_PIXEL, partner_agent="agent-b")
    client.send([make_event(event_id="c")], test_event_code="T2")

    mine = client.get("events", pixel=PIXEL)
    assert [e["event"]["event_id"] for e in mine["events"]] == ["a", "c"]
    assert mine["events"][0]["test_event_code"] == "T1"
    assert mine["events"][0]["partner_agent"] == "agent-a"
    assert mine["events"][1]["partner_agent"] is None
    other = client.get("events", pixel=OTHER_PIXEL)["events"]
    assert [(e["event"]["event_id"], e["partner_agent"]) for e in other] == [("b", "agent-b")]
    assert [e["event"]["event_id"] for e in client.get("events", test_event_code="T2")["events"]] == ["c"]
    assert client.get("events")["count"] == 3
    assert [e["event"]["event_id"] for e in client.get("events", limit=1)["events"]] == ["c"]


def test_duplicates_within_48h_are_flagged_but_counted(make_client: Callable[..., Client]) -> None:
    clock = FakeClock()
    c = make_client(clock=clock)
    base_time = int(clock.now)
    assert c.send([make_event(event_id="o1", event_time=base_time)]).json()["events_received"] == 1
    clock.now += 47 * HOUR
    # Same event again (and once more in the same batch); a different name or pixel is not a duplicate.
    again = [
        make_event(event_id="o1", event_time=int(clock.now)),
        make_event(event_id="o1", event_time=int(clock.now)),
        make_event(event_id="o1", event_name="AddToCart", event_time=int(clock.now)),
        make_event(event_id=None, event_time=int(clock.now)),
    ]
    assert c.send(again).json()["events_received"] == 4
    assert (
        c.send([make_event(event_id="o1", event_time=int(clock.now))], pixel=OTHER_PIXEL).status_code == 200
    )

    flags = [
        (e["event"].get("event_id"), e["event"]["event_name"], e["duplicate"])
        for e in c.get("events", pixel=PIXEL)["events"]
    ]
    assert flags == [
        ("o1", "Purchase", False),
        ("o1", "Purchase", True),
        ("o1", "Purchase", True),
        ("o1", "AddToCart", False),
        (None, "Purchase", False),
    ]
    assert c.get("events", pixel=OTHER_PIXEL)["events"][0]["duplicate"] is False
    stats = c.get("stats")
    assert (stats["events_received"], stats["duplicates"]) == (6, 2)


def test_repeat_after_48h_is_not_a_duplicate(make_client: Callable[..., Client]) -> None:
    clock = FakeClock()
    c = make_client(clock=clock)
    c.send([make_event(event_id="o1", event_time=int(clock.now))])
    clock.now += 49 * HOUR
    c.send([make_event(event_id="o1", event_time=int(clock.now))])
    clock.now += 1 * HOUR
    c.send([make_event(event_id="o1", event_time=int(clock.now))])
    assert [e["duplicate"] for e in c.get("events")["events"]] == [False, False, True]


def test_request_log_records_every_request(client: Client) -> None:
    client.send([make_event(), make_event(event_id="o2")], test_event_code="T")
    client.send([make_event()], token="bad")
    client.send([make_event(event_time=1)])
    client.fault(kind="transient", code=2, count=1)
    client.send([make_event()], pixel=OTHER_PIXEL)

    log = client.get("requests")["requests"]
    assert [(r["pixel_id"], r["outcome"], r["status"], r["error_code"], r["error_subcode"]) for r in log] == [
        (PIXEL, "accepted", 200, None, None),
        (PIXEL, "rejected", 401, 190, None),
        (PIXEL, "rejected", 400, 100, 2804003),
        (OTHER_PIXEL, "fault", 500, 2, None),
    ]
    first = log[0]
    assert first["events"] == 2 and first["events_received"] == 2
    assert first["bytes"] > 100
    assert first["latency_ms"] >= 0
    assert first["test_event_code"] == "T"
    assert first["version"] == "v26.0"
    assert len({r["fbtrace_id"] for r in log}) == 4
    assert [r["pixel_id"] for r in client.get("requests", pixel=OTHER_PIXEL)["requests"]] == [OTHER_PIXEL]


def test_stats(client: Client) -> None:
    client.send([make_event(event_id=f"e{i}") for i in range(3)])
    client.send([make_event(event_id="e0")])
    client.send([make_event()], token=None)
    stats = client.get("stats")
    expected: dict[str, Any] = {
        "requests": 3,
        "requests_accepted": 2,
        "requests_rejected": 1,
        "requests_faulted": 0,
        "events_received": 4,
        "duplicates": 1,
        "stored_events": 4,
        "by_status": {"200": 2, "400": 1},
        "by_error": {"104": 1},
        "events_by_pixel": {PIXEL: 4},
    }
    assert {k: stats[k] for k in expected} == expected


def test_reset_clears_events_requests_stats_and_runtime_changes(client: Client) -> None:
    client.send([make_event()])
    client.fault(kind="transient", code=1)
    client.post_admin("tokens", {"token": "test-token", "expired": True})
    assert client.post_admin("reset", {}).json() == {"reset": True}
    assert client.get("events")["count"] == 0
    assert client.get("requests")["count"] == 0
    assert client.get("stats")["requests"] == 0
    assert client.get("faults")["faults"] == []
    assert client.send([make_event()]).status_code == 200


def test_store_events_off_keeps_counting(make_client: Callable[..., Client]) -> None:
    c = make_client(EmulatorConfig(store_events=False))
    assert c.send([make_event(event_id=f"e{i}") for i in range(10)]).json()["events_received"] == 10
    assert c.get("events")["count"] == 0
    assert c.get("stats")["events_received"] == 10


def test_stored_events_are_capped(make_client: Callable[..., Client]) -> None:
    c = make_client(EmulatorConfig(max_stored_events=5, max_logged_requests=2))
    for batch in range(3):
        c.send([make_event(event_id=f"b{batch}-{i}") for i in range(3)])
    ids = [e["event"]["event_id"] for e in c.get("events")["events"]]
    assert ids == ["b1-1", "b1-2", "b2-0", "b2-1", "b2-2"]
    assert c.get("requests")["count"] == 2
    assert c.get("stats")["events_received"] == 9


def test_health_and_config_endpoints(client: Client) -> None:
    assert client.get("health")["ok"] is True
    cfg = client.get("config")
    assert cfg["accepted_versions"] == ["v23.0", "v24.0", "v25.0", "v26.0"]
    assert cfg["tokens"]["test-token"]["pixels"] == [PIXEL, OTHER_PIXEL]


def test_bad_limit_is_a_client_error(client: Client) -> None:
    resp = client.http.get(f"{client.base}/_emulator/events", params={"limit": "x"})
    assert resp.status_code == 400
