"""The error taxonomy: where a record failed (stage), why (reason code), and what to do (error class).

Every failure that reaches the dead-letter topic, the logs or the metrics is described by a `Failure`.
Graph API errors are classified by `code`, `error_subcode` and `is_transient` only: Meta localizes
`message`/`error_user_title`/`error_user_msg` to the token owner's locale, so text is never parsed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError


class Stage(enum.StrEnum):
    DECODE = "decode"
    MAP = "map"
    VALIDATE = "validate"
    ROUTE = "route"
    """Platform mode: the event's tenant cannot be sent to (unknown to the registry)."""
    DELIVER = "deliver"


class ErrorClass(enum.StrEnum):
    TRANSIENT = "transient"
    """Retry with capped exponential backoff (network, 5xx, throttling, is_transient)."""
    PERMANENT = "permanent"
    """This record can never succeed as it is: dead-letter it."""
    DESTINATION = "destination"
    """The destination (pixel + token) is unusable: park it, never drain its events into the DLQ."""


# Reason codes of the decode stage. Mapping and validation codes are declared next to the code that
# decides them (consumer.mapping, consumer.validate); `reason_codes()` below lists every stage's set.
NOT_CONFLUENT_WIRE_FORMAT = "not_confluent_wire_format"
UNKNOWN_SCHEMA_ID = "unknown_schema_id"
REGISTRY_UNAVAILABLE = "registry_unavailable"
AVRO_DECODE_ERROR = "avro_decode_error"
SCHEMA_RESOLUTION_ERROR = "schema_resolution_error"
EMPTY_VALUE = "empty_value"

# Reason codes of the deliver stage.
GRAPH_REJECTED_EVENT = "graph_rejected_event"
EVENT_EXPIRED = "event_expired"
DESTINATION_UNAVAILABLE = "destination_unavailable"


DECODE_REASONS = frozenset(
    {
        NOT_CONFLUENT_WIRE_FORMAT,
        UNKNOWN_SCHEMA_ID,
        REGISTRY_UNAVAILABLE,
        AVRO_DECODE_ERROR,
        SCHEMA_RESOLUTION_ERROR,
        EMPTY_VALUE,
    }
)
TENANT_PARKED = "tenant_parked"
"""Not a dead-letter reason: Meta refused a tenant, its events wait in the parked topic (consumer.park)."""
DELIVER_REASONS = frozenset({GRAPH_REJECTED_EVENT, EVENT_EXPIRED, DESTINATION_UNAVAILABLE})

# Reason codes of the route stage (platform mode). An unknown tenant is dead-lettered (or, by
# `platform.unknown_tenant: filter`, filtered) under UNKNOWN_TENANT; a disabled tenant's events are
# filtered under TENANT_DISABLED.
UNKNOWN_TENANT = "unknown_tenant"
TENANT_DISABLED = "tenant_disabled"
ROUTE_REASONS = frozenset({UNKNOWN_TENANT})


def reason_codes() -> dict[Stage, frozenset[str]]:
    """Every reason code a dead-letter record, a log line or a metric label can carry, by stage."""
    from consumer import mapping, validate

    map_reasons = frozenset(
        {
            mapping.MISSING_EVENT_NAME,
            mapping.MISSING_EVENT_ID,
            mapping.MISSING_TENANT_ID,
            mapping.MISSING_EVENT_TIME,
            mapping.INVALID_EVENT_TIME,
        }
    )
    return {
        Stage.DECODE: DECODE_REASONS,
        Stage.MAP: map_reasons,
        Stage.VALIDATE: validate.REJECTION_REASONS,
        Stage.ROUTE: ROUTE_REASONS,
        Stage.DELIVER: DELIVER_REASONS,
    }


def kafka_error_class(error: KafkaError) -> ErrorClass | None:
    """Kafka client errors: None = fatal (stop: ../shared/docs/consumer-semantics.md, rule 9);
    TRANSIENT = librdkafka retries by itself."""
    if error.fatal():
        return None
    return ErrorClass.TRANSIENT


@dataclass(frozen=True, slots=True)
class Failure:
    """Why one record could not be delivered. `message` never contains raw PII or tokens."""

    stage: Stage
    reason: str
    error_class: ErrorClass
    message: str
    graph_code: int | None = None
    graph_subcode: int | None = None
    fbtrace_id: str | None = None


class PipelineError(Exception):
    """A failure raised by a stage; carries its classification."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(f"{failure.stage}/{failure.reason}: {failure.message}")
        self.failure = failure


# --- Graph API errors (../shared/docs/capi-reference.md section 6)

# Throttling: retry after the time the usage headers announce.
THROTTLE_CODES = frozenset({4, 17, 32, 341, 613, 80001, 80004, 80005})
# HTTP statuses that say "too much at once" whatever the body (Too Many Requests, Service Unavailable).
OVERLOAD_HTTP_STATUSES = frozenset({429, 503})
# Graph says "retry later" for these without is_transient always being set.
TRANSIENT_CODES = frozenset({1, 2, 368}) | THROTTLE_CODES
# The token, its permissions, the pixel or the API version is wrong: nothing in the batch can succeed.
DESTINATION_CODES = frozenset({3, 10, 102, 104, 190, 2635}) | frozenset(range(200, 300))
PIXEL_NOT_FOUND = (100, 33)


@dataclass(frozen=True, slots=True)
class GraphError:
    """A Graph API error response (or a transport failure, with code None)."""

    error_class: ErrorClass
    code: int | None
    subcode: int | None
    is_transient: bool
    fbtrace_id: str | None
    http_status: int | None
    retry_after_s: float | None
    summary: str
    """Short, PII-free description for logs and DLQ headers (never Meta's localized message)."""
    timed_out: bool = False
    """No answer within `capi.timeout_s`."""

    @property
    def overload(self) -> bool:
        """Meta throttles, says it is overloaded, or did not answer in time: besides retrying later,
        send fewer requests at once (consumer.concurrency halves the destination's limit)."""
        return self.timed_out or self.code in THROTTLE_CODES or self.http_status in OVERLOAD_HTTP_STATUSES

    def failure(self, reason: str = GRAPH_REJECTED_EVENT) -> Failure:
        return Failure(
            Stage.DELIVER,
            reason,
            self.error_class,
            self.summary,
            graph_code=self.code,
            graph_subcode=self.subcode,
            fbtrace_id=self.fbtrace_id,
        )


def classify_graph_error(
    error: Mapping[str, Any], *, http_status: int | None, headers: Mapping[str, str]
) -> GraphError:
    """Classify the `error` object of a Graph response by code, subcode and is_transient."""
    code = _as_int(error.get("code"))
    subcode = _as_int(error.get("error_subcode"))
    transient_flag = error.get("is_transient") is True
    if code is not None and (code, subcode) == PIXEL_NOT_FOUND:
        cls = ErrorClass.DESTINATION
    elif transient_flag or code in TRANSIENT_CODES:
        cls = ErrorClass.TRANSIENT
    elif code in DESTINATION_CODES:
        cls = ErrorClass.DESTINATION
    else:
        cls = ErrorClass.PERMANENT
    fbtrace = error.get("fbtrace_id")
    return GraphError(
        error_class=cls,
        code=code,
        subcode=subcode,
        is_transient=transient_flag,
        fbtrace_id=str(fbtrace) if fbtrace is not None else None,
        http_status=http_status,
        retry_after_s=retry_after_seconds(headers) if cls is ErrorClass.TRANSIENT else None,
        summary=f"graph error code={code} subcode={subcode} http={http_status}",
    )


def transport_error(summary: str, *, http_status: int | None = None, timed_out: bool = False) -> GraphError:
    """HTML or empty bodies, timeouts and connection resets: always transient."""
    return GraphError(ErrorClass.TRANSIENT, None, None, True, None, http_status, None, summary, timed_out)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """The wait Meta asks for: `Retry-After` (seconds) or the largest
    `estimated_time_to_regain_access` (minutes) in `X-Business-Use-Case-Usage`."""
    waits: list[float] = []
    retry_after = headers.get("Retry-After")
    if retry_after:
        seconds = _as_float(retry_after)
        if seconds is not None:
            waits.append(seconds)
    buc = headers.get("X-Business-Use-Case-Usage")
    if buc:
        import orjson

        try:
            usage = orjson.loads(buc)
        except orjson.JSONDecodeError:
            usage = None
        if isinstance(usage, dict):
            for entries in usage.values():
                for entry in entries if isinstance(entries, list) else [entries]:
                    if isinstance(entry, dict):
                        minutes = _as_float(entry.get("estimated_time_to_regain_access"))
                        if minutes is not None:
                            waits.append(minutes * 60.0)
    return max(waits) if waits else None


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None


def _as_float(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None
