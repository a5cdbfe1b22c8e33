"""The connection test's verdicts: Meta's answer in an operator's words, and a test event that is no
conversion."""

from __future__ import annotations

import orjson
import pytest

from consumer.check import CHECK_EVENT_NAME, CheckResult, check_body, verdict
from consumer.deliver import Accepted
from consumer.errors import classify_graph_error, transport_error
from consumer.validate import validate_event


@pytest.mark.parametrize(
    ("code", "subcode", "expected"),
    [
        (190, 463, "expired_token"),
        (190, 460, "invalid_token"),
        (190, None, "invalid_token"),
        (104, None, "invalid_token"),
        (100, 33, "unknown_pixel"),
        (10, None, "missing_permission"),
        (200, None, "missing_permission"),
        (299, None, "missing_permission"),
        (2635, None, "retired_api_version"),
        (80004, None, "throttled"),
        (100, 2804019, "rejected"),
    ],
)
def test_graph_errors_become_verdicts(code: int, subcode: int | None, expected: str) -> None:
    error = classify_graph_error(
        {"code": code, "error_subcode": subcode, "fbtrace_id": "Tr"}, http_status=400, headers={}
    )
    result = verdict("shop-1", "42", error, now=1.0)
    assert result.verdict == expected and not result.ok
    assert (result.code, result.subcode, result.fbtrace_id) == (code, subcode, "Tr")
    assert f"code {code}" in result.line() and "fbtrace_id Tr" in result.line()


def test_accepted_and_unreachable() -> None:
    ok = verdict("shop-1", "42", Accepted(1, "Tr"), now=1.0)
    assert ok.ok and ok.line().startswith("shop-1  pixel 42  ok")
    down = verdict("shop-1", "42", transport_error("request timed out"), now=1.0)
    assert down.verdict == "unavailable" and "timed out" in down.message
    assert CheckResult("x", None, "unknown_tenant", "not in the registry").to_json()["ok"] is False


def test_the_test_event_is_a_valid_custom_event_and_no_conversion() -> None:
    body = orjson.loads(check_body("TEST1", "plshop-1.0-1.0", now=1_800_000_000.0))
    assert body["test_event_code"] == "TEST1" and body["partner_agent"] == "plshop-1.0-1.0"
    [event] = body["data"]
    assert event["event_name"] == CHECK_EVENT_NAME and event["action_source"] == "system_generated"
    assert "value" not in event.get("custom_data", {})
    assert validate_event(event, now=1_800_000_000.0) is None
    assert orjson.loads(check_body(None, None, now=1.0)).keys() == {"data"}
    assert check_body(None, None, now=1.0) != check_body(None, None, now=1.0)  # a fresh event_id each time
