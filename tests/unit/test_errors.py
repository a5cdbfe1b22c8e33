import orjson
import pytest

from consumer.errors import ErrorClass, classify_graph_error, retry_after_seconds


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ({"code": 1, "is_transient": True}, ErrorClass.TRANSIENT),
        ({"code": 2}, ErrorClass.TRANSIENT),
        ({"code": 613, "error_subcode": 1487742}, ErrorClass.TRANSIENT),
        ({"code": 17, "error_subcode": 2446079}, ErrorClass.TRANSIENT),
        ({"code": 80004}, ErrorClass.TRANSIENT),
        ({"code": 100, "error_subcode": 2804003, "is_transient": False}, ErrorClass.PERMANENT),
        ({"code": 100, "error_subcode": 2804019}, ErrorClass.PERMANENT),
        ({"code": 100, "error_subcode": 2804050}, ErrorClass.PERMANENT),
        ({"code": 100, "error_subcode": 33}, ErrorClass.DESTINATION),
        ({"code": 190, "error_subcode": 463}, ErrorClass.DESTINATION),
        ({"code": 190}, ErrorClass.DESTINATION),
        ({"code": 10}, ErrorClass.DESTINATION),
        ({"code": 200}, ErrorClass.DESTINATION),
        ({"code": 2635}, ErrorClass.DESTINATION),
        ({"code": 104}, ErrorClass.DESTINATION),
    ],
)
def test_graph_errors_classified_by_code_not_message(error: dict[str, object], expected: ErrorClass) -> None:
    # A localized message must not matter.
    error = {**error, "message": "Paramètre non valide", "fbtrace_id": "Xy"}
    assert classify_graph_error(error, http_status=400, headers={}).error_class is expected


def test_throttle_wait_comes_from_usage_header_minutes() -> None:
    header = orjson.dumps(
        {"123": [{"type": "ads_management", "estimated_time_to_regain_access": 2}]}
    ).decode()
    err = classify_graph_error({"code": 613}, http_status=400, headers={"X-Business-Use-Case-Usage": header})
    assert err.retry_after_s == 120.0
    assert retry_after_seconds({"Retry-After": "7"}) == 7.0
    assert retry_after_seconds({"X-Business-Use-Case-Usage": "not json"}) is None


def test_every_stage_reason_is_in_the_taxonomy() -> None:
    from consumer import mapping, validate
    from consumer.errors import Stage, reason_codes

    codes = reason_codes()
    assert set(codes) == set(Stage)
    assert codes[Stage.VALIDATE] >= validate.REJECTION_REASONS
    assert mapping.MISSING_EVENT_ID in codes[Stage.MAP]
    all_codes = [c for stage in codes.values() for c in stage]
    assert all(c == c.lower() and " " not in c for c in all_codes)
