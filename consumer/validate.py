"""Pre-send validation of one server event (pure; the clock is a parameter).

Meta rejects a whole request when one event in it is invalid, so an event that fails here never joins
a batch: it goes to the dead-letter topic with a :class:`Rejection`. The first failing check wins, in
the order below. `detail` names the field (a JSON path) and, for time checks, the age in seconds;
it never contains a value that could be PII.

Rejection reasons (module constants, lower_snake):

==================================  ==========================================================
``missing_field``                   event_name, event_time, action_source or user_data absent
                                    (or an empty string)
``invalid_field_type``              a field of the wrong JSON type (event_time not an integer,
                                    user_data not an object, custom_data.value not a finite
                                    number ...)
``invalid_action_source``           action_source not in ACTION_SOURCES
``event_in_future``                 event_time more than 60 s after now
``event_too_old``                   event_time older than 7 days (62 for physical_store)
``website_missing_event_source_url`` website event without event_source_url
``invalid_event_source_url``        event_source_url not an absolute http(s) URL
``website_missing_user_agent``      website event without user_data.client_user_agent
``app_missing_app_data``            app event without app_data.advertiser_tracking_enabled and
                                    a 16-element app_data.extinfo
``messaging_missing_channel``       business_messaging event without messaging_channel
``unhashed_user_data``              a hashed user_data key (em ph fn ln ge db ct st zp country)
                                    whose value is not 64 lowercase hex: raw PII must never leave
``insufficient_user_data``          user_data keys empty or within one of Meta's too-broad
                                    combinations (Graph >= v13 matching baseline)
``purchase_missing_value``          Purchase without custom_data.value
``purchase_missing_currency``       Purchase without custom_data.currency
``invalid_currency``                custom_data.currency (any event) not an ISO 4217 code
==================================  ==========================================================
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

import pycountry

from consumer.normalize import HASHED_FIELDS

ACTION_SOURCES: Final[frozenset[str]] = frozenset(
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

MAX_EVENT_AGE_S: Final = 7 * 86_400
"""Oldest event_time Meta accepts, in seconds before now."""
MAX_PHYSICAL_STORE_AGE_S: Final = 62 * 86_400
"""Oldest event_time for action_source physical_store, in seconds before now."""
MAX_FUTURE_S: Final = 60
"""How far event_time may lie after now, in seconds (undocumented by Meta; RudderStack's limit)."""


def max_event_age_s(action_source: object) -> int:
    """The oldest event_time Meta accepts for `action_source`, in seconds before now."""
    return MAX_PHYSICAL_STORE_AGE_S if action_source == "physical_store" else MAX_EVENT_AGE_S


APP_EXTINFO_LENGTH: Final = 16

MISSING_FIELD: Final = "missing_field"
INVALID_FIELD_TYPE: Final = "invalid_field_type"
INVALID_ACTION_SOURCE: Final = "invalid_action_source"
EVENT_IN_FUTURE: Final = "event_in_future"
EVENT_TOO_OLD: Final = "event_too_old"
WEBSITE_MISSING_EVENT_SOURCE_URL: Final = "website_missing_event_source_url"
INVALID_EVENT_SOURCE_URL: Final = "invalid_event_source_url"
WEBSITE_MISSING_USER_AGENT: Final = "website_missing_user_agent"
APP_MISSING_APP_DATA: Final = "app_missing_app_data"
MESSAGING_MISSING_CHANNEL: Final = "messaging_missing_channel"
UNHASHED_USER_DATA: Final = "unhashed_user_data"
INSUFFICIENT_USER_DATA: Final = "insufficient_user_data"
PURCHASE_MISSING_VALUE: Final = "purchase_missing_value"
PURCHASE_MISSING_CURRENCY: Final = "purchase_missing_currency"
INVALID_CURRENCY: Final = "invalid_currency"

REJECTION_REASONS: Final[frozenset[str]] = frozenset(
    {
        MISSING_FIELD,
        INVALID_FIELD_TYPE,
        INVALID_ACTION_SOURCE,
        EVENT_IN_FUTURE,
        EVENT_TOO_OLD,
        WEBSITE_MISSING_EVENT_SOURCE_URL,
        INVALID_EVENT_SOURCE_URL,
        WEBSITE_MISSING_USER_AGENT,
        APP_MISSING_APP_DATA,
        MESSAGING_MISSING_CHANNEL,
        UNHASHED_USER_DATA,
        INSUFFICIENT_USER_DATA,
        PURCHASE_MISSING_VALUE,
        PURCHASE_MISSING_CURRENCY,
        INVALID_CURRENCY,
    }
)

REQUIRED_FIELDS: Final[tuple[str, ...]] = ("event_name", "event_time", "action_source", "user_data")

# Graph >= v13: an event whose customer information is one of these sets, or a subset of one, is
# rejected as too broad to match (../shared/docs/capi-reference.md §3.4).
BROAD_USER_DATA_COMBINATIONS: Final[tuple[frozenset[str], ...]] = (
    frozenset({"ct", "country", "st", "zp", "ge", "client_user_agent"}),
    frozenset({"db", "client_user_agent"}),
    frozenset({"fn", "ge"}),
    frozenset({"ln", "ge"}),
)

# external_id is left out: a deployment may send it unhashed on purpose (Normalizer hash_external_id).
_MUST_BE_HASHED: Final = tuple(f for f in HASHED_FIELDS if f != "external_id")
_SHA256_RE: Final = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an event cannot be sent: `reason` is one of REJECTION_REASONS, `detail` names the field."""

    reason: str
    detail: str


@functools.cache
def currency_codes() -> frozenset[str]:
    """The ISO 4217 alphabetic codes, uppercase."""
    return frozenset(str(c.alpha_3).upper() for c in pycountry.currencies)


@functools.lru_cache(maxsize=1024)
def is_iso4217(code: str) -> bool:
    """True when `code` (any case) is an ISO 4217 alphabetic currency code."""
    return code.upper() in currency_codes()


def _present(value: object) -> bool:
    """Whether a user_data value carries anything (None, "" and empty lists do not)."""
    if value is None or value == "":
        return False
    if isinstance(value, list | tuple):
        return any(_present(v) for v in value)
    return True


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def validate_event(event: Mapping[str, Any], *, now: float, normalized: bool = False) -> Rejection | None:
    """The first reason Meta would reject `event`, or None when it may be sent.

    `now` is the current time in Unix seconds; event_time is compared against it. `normalized=True`
    says user_data comes from `Normalizer.user_data`, which only emits non-empty values and SHA-256 hex
    for every hashed key, so those per-value checks are skipped (the key-combination check is not).
    """
    return (
        _check_shape(event)
        or _check_time(event, now)
        or _check_action_source_requirements(event)
        or (_check_normalized_user_data if normalized else _check_user_data)(event["user_data"])
        or _check_custom_data(event)
    )


CHECKED_BY_SOURCE: Final = frozenset({"website", "app", "business_messaging"})
"""Action sources with requirements of their own: `validate_mapped_event` checks their events fully."""


def validate_mapped_event(event: Mapping[str, Any], *, now: float) -> Rejection | None:
    """`validate_event(event, now=now, normalized=True)` for an event `consumer.mapping` built, minus
    the checks its construction passes by itself (same result, less work per event): the required
    fields are there with their types (event_name a non-empty string, event_time an int, user_data
    and custom_data dicts, action_source one of ACTION_SOURCES), and event_source_url is set only to
    an http(s) URL unless action_source is website. Events of the action sources with requirements
    of their own (website, app, business_messaging) get every check."""
    if event["action_source"] in CHECKED_BY_SOURCE:
        return validate_event(event, now=now, normalized=True)
    return _check_time(event, now) or _check_keys(event["user_data"].keys()) or _check_custom_data(event)


def _check_shape(event: Mapping[str, Any]) -> Rejection | None:
    for name in REQUIRED_FIELDS:
        value = event.get(name)
        if value is None or value == "":
            return Rejection(MISSING_FIELD, name)
    if not isinstance(event["event_name"], str):
        return Rejection(INVALID_FIELD_TYPE, "event_name")
    event_time = event["event_time"]
    if isinstance(event_time, bool) or not isinstance(event_time, int):
        return Rejection(INVALID_FIELD_TYPE, "event_time")
    if not _is_mapping(event["user_data"]):
        return Rejection(INVALID_FIELD_TYPE, "user_data")
    custom_data = event.get("custom_data")
    if custom_data is not None and not _is_mapping(custom_data):
        return Rejection(INVALID_FIELD_TYPE, "custom_data")
    action_source = event["action_source"]
    if not isinstance(action_source, str) or action_source not in ACTION_SOURCES:
        return Rejection(INVALID_ACTION_SOURCE, "action_source")
    return None


def _is_mapping(value: object) -> bool:
    # A dict (the common case) without the ABC check's cost.
    return type(value) is dict or isinstance(value, Mapping)


def _check_time(event: Mapping[str, Any], now: float) -> Rejection | None:
    event_time: int = event["event_time"]
    if event_time - now > MAX_FUTURE_S:
        return Rejection(
            EVENT_IN_FUTURE, f"event_time ({event_time - now:.0f} s ahead, limit {MAX_FUTURE_S} s)"
        )
    limit = max_event_age_s(event["action_source"])
    if now - event_time > limit:
        return Rejection(EVENT_TOO_OLD, f"event_time ({now - event_time:.0f} s old, limit {limit} s)")
    return None


def _check_action_source_requirements(event: Mapping[str, Any]) -> Rejection | None:
    action_source = event["action_source"]
    user_data: Mapping[str, Any] = event["user_data"]
    if action_source == "website":
        url = event.get("event_source_url")
        if url is None or url == "":
            return Rejection(WEBSITE_MISSING_EVENT_SOURCE_URL, "event_source_url")
        if not isinstance(url, str):
            return Rejection(INVALID_FIELD_TYPE, "event_source_url")
        if not _present(user_data.get("client_user_agent")):
            return Rejection(WEBSITE_MISSING_USER_AGENT, "user_data.client_user_agent")
    url = event.get("event_source_url")
    if url is not None and url != "" and not _is_http_url(url):
        return Rejection(INVALID_EVENT_SOURCE_URL, "event_source_url")
    if action_source == "app":
        app_data = event.get("app_data")
        if not isinstance(app_data, Mapping) or app_data.get("advertiser_tracking_enabled") is None:
            return Rejection(APP_MISSING_APP_DATA, "app_data.advertiser_tracking_enabled")
        extinfo = app_data.get("extinfo")
        if not isinstance(extinfo, list | tuple) or len(extinfo) != APP_EXTINFO_LENGTH:
            return Rejection(APP_MISSING_APP_DATA, "app_data.extinfo")
    if action_source == "business_messaging" and not event.get("messaging_channel"):
        return Rejection(MESSAGING_MISSING_CHANNEL, "messaging_channel")
    return None


def _is_http_url(url: object) -> bool:
    return isinstance(url, str) and is_http_url(url)


def is_http_url(url: str) -> bool:
    """An absolute http(s) URL with a host (what Meta requires of event_source_url)."""
    if (
        url.isascii()
        and url.startswith(("https://", "http://"))
        # Tabs and newlines (which urlsplit deletes) and brackets (IPv6 checks) go the long way.
        and "\t" not in url
        and "\n" not in url
        and "\r" not in url
        and "[" not in url
        and "]" not in url
    ):
        # What urlsplit decides for such a URL, without building its parts (a regular expression
        # costs twice these tests): the netloc runs to the first / ? or #, and must not be empty.
        start = 8 if url[4] == "s" else 7
        return len(url) > start and url[start] not in "/?#"
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.netloc)


def _check_user_data(user_data: Mapping[str, Any]) -> Rejection | None:
    for key in _MUST_BE_HASHED:
        value = user_data.get(key)
        if value is None:
            continue
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, str) and _SHA256_RE.fullmatch(v) for v in values):
            return Rejection(UNHASHED_USER_DATA, f"user_data.{key}")
    return _check_keys({str(key) for key, value in user_data.items() if _present(value)})


def _check_normalized_user_data(user_data: Mapping[str, Any]) -> Rejection | None:
    return _check_keys(user_data.keys())


BROAD_KEYS: Final = frozenset().union(*BROAD_USER_DATA_COMBINATIONS)
"""Every key of the broad combinations: user_data with a key outside them passes the key check."""


def _check_keys(keys: AbstractSet[str]) -> Rejection | None:
    if keys and not keys <= BROAD_KEYS:
        return None  # a key outside every broad combination (an e-mail, a phone...): enough to match
    if not keys or any(keys <= combination for combination in BROAD_USER_DATA_COMBINATIONS):
        return Rejection(INSUFFICIENT_USER_DATA, "user_data keys: " + ",".join(sorted(keys)))
    return None


def _check_custom_data(event: Mapping[str, Any]) -> Rejection | None:
    custom_data: Mapping[str, Any] = event.get("custom_data") or {}
    is_purchase = event["event_name"] == "Purchase"
    value = custom_data.get("value")
    if value is None and is_purchase:
        return Rejection(PURCHASE_MISSING_VALUE, "custom_data.value")
    if value is not None and not _is_number(value):
        return Rejection(INVALID_FIELD_TYPE, "custom_data.value")
    currency = custom_data.get("currency")
    if (currency is None or currency == "") and is_purchase:
        return Rejection(PURCHASE_MISSING_CURRENCY, "custom_data.currency")
    if currency is not None and not (isinstance(currency, str) and is_iso4217(currency)):
        return Rejection(INVALID_CURRENCY, "custom_data.currency")
    return None
