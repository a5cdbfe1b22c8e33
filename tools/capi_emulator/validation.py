"""Meta's acceptance rules for `data`, as the emulator enforces them (capi-reference.md §2-§5, §10).

Deliberately independent of the forwarder's own normalization/validation code: the emulator plays
Meta, so a bug shared with the forwarder would hide exactly the mistakes the emulator should catch.
Validation is all-or-nothing: the first invalid event (in index order) decides the single error.
"""

from __future__ import annotations

import re
from typing import Any

from capi_emulator import errors
from capi_emulator.config import DAY_S, EmulatorConfig
from capi_emulator.errors import ApiError, json_path

ACTION_SOURCES = frozenset(
    {
        "email",
        "website",
        "app",
        "phone_call",
        "chat",
        "physical_store",
        "system_generated",
        "business_messaging",
        "other",
    }
)

# Keys Meta requires to be SHA-256 hashed by the sender [DOC-4].
HASHED_KEYS = ("em", "ph", "fn", "ln", "db", "ge", "ct", "st", "zp", "country")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")

# Since v13 an event whose customer-information keys are one of these sets, or a subset of one,
# carries too little to match and is rejected with 2804050 [DOC-7].
_BASELINE_COMBOS = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)

_OPTIONAL_STR = ("event_id", "event_source_url", "referrer_url", "messaging_channel")
_OPTIONAL_OBJ = ("custom_data", "app_data", "original_event_data", "attribution_data")
_EXTINFO_LEN = 16


def _is_int(value: object) -> bool:
    # bool is an int subclass in Python, but `true` is not a valid JSON integer for Graph.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if _is_int(value) or isinstance(value, float):
        return True
    # The docs' own samples quote monetary values ("value": "142.52"), so numeric strings pass.
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


def validate_data(data: list[Any], now: float, config: EmulatorConfig) -> ApiError | None:
    """Return the error Meta would answer for this `data` array, or None if every event is accepted."""
    if not data:
        return errors.invalid_parameter("The parameter data is required")
    if len(data) > config.max_events_per_request:
        return errors.invalid_parameter(
            f"The number of events in data ({len(data)}) exceeds the limit of "
            f"{config.max_events_per_request} events per request"
        )
    for index, event in enumerate(data):
        err = validate_event(index, event, now, config)
        if err is not None:
            return err
    return None


def validate_event(index: int, event: Any, now: float, config: EmulatorConfig) -> ApiError | None:
    if not isinstance(event, dict):
        return errors.parameter_error(json_path("data", index), "must be an object.")

    for key in ("event_name", "event_time", "user_data", "action_source"):
        if key not in event or event[key] is None:
            return errors.parameter_error(json_path("data", index, key), "is required.")

    event_name = event["event_name"]
    if not isinstance(event_name, str) or not event_name:
        return errors.parameter_error(json_path("data", index, "event_name"), "must be a non-empty string.")

    event_time = event["event_time"]
    if not _is_int(event_time):
        return errors.parameter_error(
            json_path("data", index, "event_time"), "must be an integer Unix timestamp in seconds."
        )

    action_source = event["action_source"]
    if not isinstance(action_source, str) or action_source not in ACTION_SOURCES:
        return errors.parameter_error(
            json_path("data", index, "action_source"),
            f"has an invalid value: {action_source!r}. Valid values: {', '.join(sorted(ACTION_SOURCES))}.",
        )

    max_age = (
        config.physical_store_max_event_age_s if action_source == "physical_store" else config.max_event_age_s
    )
    if event_time < now - max_age:
        return errors.timestamp_too_old(max_age // DAY_S)
    if config.max_future_skew_s is not None and event_time > now + config.max_future_skew_s:
        # Meta's reaction to future timestamps is undocumented [INF]; reported as a parameter error.
        return errors.parameter_error(json_path("data", index, "event_time"), "is too far in the future.")

    for key in _OPTIONAL_STR:
        value = event.get(key)
        if value is not None and not isinstance(value, str):
            return errors.parameter_error(json_path("data", index, key), "must be a string.")
    for key in _OPTIONAL_OBJ:
        value = event.get(key)
        if value is not None and not isinstance(value, dict):
            return errors.parameter_error(json_path("data", index, key), "must be an object.")
    opt_out = event.get("opt_out")
    if opt_out is not None and not isinstance(opt_out, bool):
        return errors.parameter_error(json_path("data", index, "opt_out"), "must be a boolean.")
    dpo = event.get("data_processing_options")
    if dpo is not None and not (isinstance(dpo, list) and all(isinstance(x, str) for x in dpo)):
        return errors.parameter_error(
            json_path("data", index, "data_processing_options"), "must be an array of strings."
        )

    user_data = event["user_data"]
    if not isinstance(user_data, dict):
        return errors.parameter_error(json_path("data", index, "user_data"), "must be an object.")
    err = _check_user_data(index, user_data, config)
    if err is not None:
        return err

    custom_data = event.get("custom_data")
    if custom_data is not None:
        err = _check_custom_data(index, custom_data)
        if err is not None:
            return err

    return _check_action_source_requirements(index, event, action_source, user_data, config)


def _check_user_data(index: int, user_data: dict[str, Any], config: EmulatorConfig) -> ApiError | None:
    present: set[str] = set()
    for key, value in user_data.items():
        if value is None or value == "" or value == []:
            continue
        present.add(key)
        if key in HASHED_KEYS:
            is_list = isinstance(value, list)
            for pos, item in enumerate(value if is_list else (value,)):
                if isinstance(item, str) and (not config.strict_hashing or _SHA256_HEX.fullmatch(item)):
                    continue
                # The path is only spelled out for an error: this loop runs for every hashed value.
                path = (
                    json_path("data", index, "user_data", key, pos)
                    if is_list
                    else json_path("data", index, "user_data", key)
                )
                if not isinstance(item, str):
                    return errors.parameter_error(path, "must be a string or an array of strings.")
                return errors.parameter_error(
                    path, "must be a SHA-256 hash (64 lowercase hexadecimal characters)."
                )
        elif key in ("client_ip_address", "client_user_agent", "fbc", "fbp") and not isinstance(value, str):
            return errors.parameter_error(json_path("data", index, "user_data", key), "must be a string.")
    if any(present <= combo for combo in _BASELINE_COMBOS):
        return errors.insufficient_customer_information()
    return None


def _check_custom_data(index: int, custom_data: dict[str, Any]) -> ApiError | None:
    value = custom_data.get("value")
    if value is not None and not _is_number(value):
        return errors.parameter_error(json_path("data", index, "custom_data", "value"), "must be a number.")
    currency = custom_data.get("currency")
    if currency is not None and not (isinstance(currency, str) and len(currency) == 3 and currency.isalpha()):
        return errors.parameter_error(
            json_path("data", index, "custom_data", "currency"), "must be an ISO 4217 currency code."
        )
    contents = custom_data.get("contents")
    if contents is not None and not (
        isinstance(contents, list) and all(isinstance(c, dict) for c in contents)
    ):
        return errors.parameter_error(
            json_path("data", index, "custom_data", "contents"), "must be an array of objects."
        )
    content_ids = custom_data.get("content_ids")
    if content_ids is not None and not isinstance(content_ids, list):
        return errors.parameter_error(
            json_path("data", index, "custom_data", "content_ids"), "must be an array."
        )
    return None


def _check_action_source_requirements(
    index: int, event: dict[str, Any], action_source: str, user_data: dict[str, Any], config: EmulatorConfig
) -> ApiError | None:
    if action_source == "website" and config.require_website_fields:
        if not event.get("event_source_url"):
            return errors.parameter_error(json_path("data", index, "event_source_url"), "is required.")
        if not user_data.get("client_user_agent"):
            return errors.parameter_error(
                json_path("data", index, "user_data", "client_user_agent"), "is required."
            )
    elif action_source == "app":
        app_data = event.get("app_data")
        if app_data is None:
            return errors.parameter_error(json_path("data", index, "app_data"), "is required.")
        if app_data.get("advertiser_tracking_enabled") is None:
            return errors.parameter_error(
                json_path("data", index, "app_data", "advertiser_tracking_enabled"), "is required."
            )
        extinfo = app_data.get("extinfo")
        if not isinstance(extinfo, list) or len(extinfo) != _EXTINFO_LEN:
            return errors.parameter_error(
                json_path("data", index, "app_data", "extinfo"), "must be an array of 16 elements."
            )
    elif action_source == "business_messaging" and not event.get("messaging_channel"):
        return errors.parameter_error(json_path("data", index, "messaging_channel"), "is required.")
    return None
