"""Behaviour 9: injected faults, by config and through the admin API, global or per pixel."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
import requests

from capi_emulator import EmulatorConfig, FaultSpec
from capi_emulator.faults import FaultRegistry, fault_error
from tests.emulator.emulator_helpers import OTHER_PIXEL, Client, error_of, make_event


@pytest.mark.parametrize(
    ("code", "message_part"), [(1, "unknown error"), (2, "Please retry your request later")]
)
def test_transient_errors_are_http_500_with_is_transient(
    client: Client, code: int, message_part: str
) -> None:
    client.fault(kind="transient", code=code, count=2)
    for _ in range(2):
        resp = client.send([make_event()])
        assert resp.status_code == 500
        err = error_of(resp)
        assert (err["code"], err["is_transient"]) == (code, True)
        assert message_part in err["message"]
        assert err["fbtrace_id"]
    assert client.send([make_event()]).status_code == 200
    assert client.get("stats")["events_received"] == 1


@pytest.mark.parametrize(("code", "subcode"), [(4, None), (17, 2446079), (613, 1487742), (80004, None)])
def test_throttling_carries_business_use_case_usage(client: Client, code: int, subcode: int | None) -> None:
    client.fault(kind="throttle", code=code, estimated_time_to_regain_access=7, count=1)
    resp = client.send([make_event()])
    err = error_of(resp)
    assert err["code"] == code
    assert err.get("error_subcode") == subcode
    assert err["is_transient"] is True
    usage = json.loads(resp.headers["X-Business-Use-Case-Usage"])
    (entries,) = usage.values()
    assert entries[0]["estimated_time_to_regain_access"] == 7
    assert entries[0]["call_count"] == 100
    assert json.loads(resp.headers["X-App-Usage"])["call_count"] == 100
    assert client.send([make_event()]).status_code == 200


def test_rate_limit_refuses_what_exceeds_the_rate_of_each_pixel(client: Client) -> None:
    client.fault(kind="rate_limit", rate_per_s=1, burst=2, code=613, estimated_time_to_regain_access=0)
    answers = [client.send([make_event()]).status_code for _ in range(4)]
    assert answers == [200, 200, 400, 400]  # the burst, then over the rate
    refused = client.send([make_event()])
    err = error_of(refused)
    assert (err["code"], err["error_subcode"], err["is_transient"]) == (613, 1487742, True)
    (entries,) = json.loads(refused.headers["X-Business-Use-Case-Usage"]).values()
    assert entries[0]["estimated_time_to_regain_access"] == 0
    assert client.send([make_event()], pixel=OTHER_PIXEL).status_code == 200  # a bucket per pixel
    time.sleep(1.1)  # one request's worth refilled
    assert [client.send([make_event()]).status_code for _ in range(2)] == [200, 400]
    assert client.get("stats")["by_error"] == {"613/1487742": 4}


def test_rate_limit_refuses_more_the_more_a_client_sends_at_once() -> None:
    """A token bucket: what gets through is the rate, however many requests are tried."""
    now = [0.0]
    registry = FaultRegistry(monotonic=lambda: now[0])
    refused: dict[int, int] = {}
    for per_tick in (1, 2, 4):  # requests every 50 ms: 20, 40 and 80 a second
        registry.clear()
        registry.add(FaultSpec(kind="rate_limit", rate_per_s=10, burst=10))
        refused[per_tick] = 0
        for _ in range(200):
            now[0] += 0.05
            for _ in range(per_tick):
                spec = registry.response_fault("1")
                refused[per_tick] += spec is not None
                assert spec is None or fault_error(spec, "1").code == 80004
    # 10 a second (plus the burst) get through over the 10 s, whatever was tried: of 20/s, 40/s
    # and 80/s, 45 %, 73 % and 86 % are refused.
    assert all(abs(200 * k - refused[k] - 110) <= 1 for k in (1, 2, 4)), refused
    assert refused[1] < refused[2] < refused[4]


def test_custom_error_fault(client: Client) -> None:
    client.fault(kind="error", code=368, http_status=403, message="(#368) Temporarily blocked", count=1)
    resp = client.send([make_event()])
    assert resp.status_code == 403
    assert error_of(resp)["code"] == 368


def test_token_expired_fault(client: Client) -> None:
    client.fault(kind="token_expired", count=1)
    err = error_of(client.send([make_event()]))
    assert (err["code"], err["error_subcode"]) == (190, 463)
    assert client.send([make_event()]).status_code == 200


def test_html_502_body(client: Client) -> None:
    client.fault(kind="html_502", count=1)
    resp = client.send([make_event()])
    assert resp.status_code == 502
    assert resp.headers["Content-Type"].startswith("text/html")
    assert resp.text.lstrip().startswith("<!DOCTYPE html>")
    with pytest.raises(ValueError):
        resp.json()
    assert client.get("requests")["requests"][-1]["status"] == 502


def test_fixed_latency(client: Client) -> None:
    client.fault(kind="latency", latency_ms=300, count=1)
    started = time.perf_counter()
    assert client.send([make_event()]).status_code == 200
    assert time.perf_counter() - started >= 0.3
    started = time.perf_counter()
    client.send([make_event()])
    assert time.perf_counter() - started < 0.3
    assert client.get("requests")["requests"][0]["latency_ms"] >= 300


def test_random_latency_within_bounds(client: Client) -> None:
    client.fault(kind="latency", latency_ms=50, latency_ms_max=150, count=3)
    for _ in range(3):
        started = time.perf_counter()
        client.send([make_event()])
        assert 0.05 <= time.perf_counter() - started < 1.0
    latencies = [r["latency_ms"] for r in client.get("requests")["requests"]]
    assert all(50 <= ms < 400 for ms in latencies)


def test_latency_beyond_client_timeout(client: Client) -> None:
    client.fault(kind="latency", latency_ms=1600, count=1)
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.http.post(
            client.events_url(), params={"access_token": "test-token"}, json={"data": []}, timeout=0.3
        )


def test_dropped_connection(client: Client) -> None:
    client.fault(kind="drop_connection", count=1)
    with pytest.raises(requests.exceptions.ConnectionError):
        client.send([make_event()])
    assert client.send([make_event()]).status_code == 200
    assert client.get("stats")["requests_faulted"] == 1


def test_no_response_makes_the_client_time_out(client: Client) -> None:
    client.fault(kind="no_response", hold_s=5, count=1)
    started = time.perf_counter()
    with pytest.raises(requests.exceptions.ReadTimeout):
        client.http.post(
            client.events_url(),
            params={"access_token": "test-token"},
            json={"data": [make_event()]},
            timeout=0.4,
        )
    assert time.perf_counter() - started < 2
    assert client.send([make_event()]).status_code == 200


def test_reject_event_ids_isolates_one_event(client: Client) -> None:
    client.fault(kind="reject_event_ids", event_ids=["bad-7"], count=2)
    batch = [make_event(event_id=f"ok-{i}") for i in range(5)]
    batch.insert(2, make_event(event_id="bad-7"))
    resp = client.send(batch)
    err = error_of(resp)
    assert (resp.status_code, err["code"], err["error_subcode"]) == (400, 100, 2804019)
    assert "$['data'][2]['event_id']" in err["error_user_msg"]
    assert client.get("events")["count"] == 0

    # A batch without the offender passes and does not use up the fault.
    assert client.send([e for e in batch if e["event_id"] != "bad-7"]).json()["events_received"] == 5
    assert client.get("faults")["faults"][0]["remaining"] == 1
    assert error_of(client.send([make_event(event_id="bad-7")]))["error_subcode"] == 2804019
    assert client.send([make_event(event_id="bad-7")]).status_code == 200


def test_fault_scoped_to_one_pixel(client: Client) -> None:
    client.fault(kind="transient", code=2, pixel=OTHER_PIXEL)
    assert client.send([make_event()]).status_code == 200
    assert client.send([make_event()], pixel=OTHER_PIXEL).status_code == 500


def test_fault_with_duration_expires(client: Client) -> None:
    client.fault(kind="transient", code=1, duration_s=0.3)
    assert client.send([make_event()]).status_code == 500
    time.sleep(0.35)
    assert client.send([make_event()]).status_code == 200
    assert client.get("faults")["faults"] == []


def test_list_and_clear_faults(client: Client) -> None:
    first = client.fault(kind="transient", code=1)
    client.fault(kind="latency", latency_ms=10)
    listed = client.get("faults")["faults"]
    assert [f["kind"] for f in listed] == ["transient", "latency"]

    assert client.http.delete(f"{client.base}/_emulator/faults/{first['id']}").json() == {"cleared": 1}
    assert [f["kind"] for f in client.get("faults")["faults"]] == ["latency"]
    assert client.http.delete(f"{client.base}/_emulator/faults/999").status_code == 404
    assert client.http.delete(f"{client.base}/_emulator/faults").json() == {"cleared": 1}
    assert client.send([make_event()]).status_code == 200


def test_several_faults_in_one_post(client: Client) -> None:
    resp = client.post_admin(
        "faults", [{"kind": "transient", "code": 2, "count": 1}, {"kind": "html_502", "count": 1}]
    )
    assert resp.status_code == 201
    statuses = [client.send([make_event()]).status_code for _ in range(3)]
    assert statuses == [500, 502, 200]


@pytest.mark.parametrize(
    "spec",
    [
        {"kind": "explode"},
        {"kind": "transient", "code": 17},
        {"kind": "throttle", "code": 1},
        {"kind": "rate_limit"},
        {"kind": "rate_limit", "rate_per_s": 5, "code": 2},
        {"kind": "reject_event_ids"},
        {"kind": "latency", "latency_ms": 100, "latency_ms_max": 10},
        {"kind": "transient", "count": 0},
    ],
)
def test_invalid_fault_specs_are_refused(client: Client, spec: dict[str, object]) -> None:
    resp = client.post_admin("faults", spec)
    assert resp.status_code == 400
    assert "error" in resp.json()


def test_faults_from_config_and_reset_rearms_them(make_client: Callable[..., Client]) -> None:
    c = make_client(EmulatorConfig(faults=[FaultSpec(kind="transient", code=2, count=1)]))
    assert c.send([make_event()]).status_code == 500
    assert c.send([make_event()]).status_code == 200
    c.post_admin("reset", {})
    assert c.send([make_event()]).status_code == 500


def test_probability_fault_hits_some_requests(client: Client) -> None:
    client.fault(kind="transient", code=1, probability=0.5)
    statuses = {client.send([make_event()]).status_code for _ in range(40)}
    assert statuses == {200, 500}
