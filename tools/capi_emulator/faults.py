"""Injected faults: which ones are armed, which request they hit, and the error each one answers."""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import orjson

from capi_emulator import errors
from capi_emulator.config import FaultKind, FaultSpec
from capi_emulator.errors import ApiError, json_path

# Kinds that replace the normal answer; the others (latency, reject_event_ids) modify it.
RESPONSE_KINDS = frozenset(get_args(FaultKind)) - {"latency", "reject_event_ids"}

HTML_502_BODY = (
    '<!DOCTYPE html>\n<html lang="en" id="facebook"><head><title>Facebook | Error</title>'
    '<meta charset="utf-8"></head><body><h1>502 Bad Gateway</h1>'
    "<p>Sorry, something went wrong. We're working on it and we'll get it fixed as soon as we can.</p>"
    "</body></html>\n"
)


@dataclass(slots=True)
class ActiveFault:
    id: int
    spec: FaultSpec
    created_at: float
    remaining: int | None
    fired: int = 0
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    """rate_limit: pixel -> (requests it may still make now, when that was computed)."""

    def expired(self, mono_now: float) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return True
        return self.spec.duration_s is not None and mono_now - self.created_at >= self.spec.duration_s

    def applies_to(self, pixel_id: str | None) -> bool:
        return self.spec.pixel is None or self.spec.pixel == pixel_id

    def over_rate(self, pixel_id: str | None, mono_now: float) -> bool:
        """rate_limit: take one request from the pixel's bucket; True when it is empty (refuse it).
        Refused requests take nothing, so a client that slows down gets through again."""
        rate = self.spec.rate_per_s or 1.0
        burst = self.spec.burst or max(1.0, rate)
        key = pixel_id or ""
        tokens, since = self.buckets.get(key, (burst, mono_now))
        tokens = min(burst, tokens + (mono_now - since) * rate)
        if tokens >= 1.0:
            self.buckets[key] = (tokens - 1.0, mono_now)
            return False
        self.buckets[key] = (tokens, mono_now)
        return True

    def consume(self) -> None:
        self.fired += 1
        if self.remaining is not None:
            self.remaining -= 1

    def to_json(self, mono_now: float) -> dict[str, Any]:
        left = None
        if self.spec.duration_s is not None:
            left = max(0.0, self.spec.duration_s - (mono_now - self.created_at))
        return {
            "id": self.id,
            **self.spec.model_dump(exclude_defaults=True),
            "kind": self.spec.kind,
            "remaining": self.remaining,
            "seconds_left": left,
            "fired": self.fired,
        }


class FaultRegistry:
    """Armed faults in arming order; the first matching response fault wins for a request."""

    def __init__(self, monotonic: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self._faults: list[ActiveFault] = []
        self._ids = itertools.count(1)
        self._monotonic = monotonic
        self._rng = rng or random.Random()

    def add(self, spec: FaultSpec) -> ActiveFault:
        fault = ActiveFault(next(self._ids), spec, self._monotonic(), spec.count)
        self._faults.append(fault)
        return fault

    def clear(self, fault_id: int | None = None) -> int:
        before = len(self._faults)
        self._faults = [f for f in self._faults if fault_id is not None and f.id != fault_id]
        return before - len(self._faults)

    def active(self) -> list[ActiveFault]:
        now = self._monotonic()
        self._faults = [f for f in self._faults if not f.expired(now)]
        return list(self._faults)

    def listing(self) -> list[dict[str, Any]]:
        now = self._monotonic()
        return [f.to_json(now) for f in self.active()]

    def _hits(self, fault: ActiveFault, pixel_id: str | None, mono_now: float) -> bool:
        if fault.expired(mono_now) or not fault.applies_to(pixel_id):
            return False
        return fault.spec.probability >= 1.0 or self._rng.random() < fault.spec.probability

    def latency_s(self, pixel_id: str | None) -> float:
        """Total injected delay for this request (all matching latency faults add up)."""
        if not self._faults:
            return 0.0
        now = self._monotonic()
        total_ms = 0.0
        for fault in self._faults:
            if fault.spec.kind != "latency" or not self._hits(fault, pixel_id, now):
                continue
            fault.consume()
            low, high = fault.spec.latency_ms, fault.spec.latency_ms_max
            total_ms += low if high is None else self._rng.uniform(low, high)
        return total_ms / 1000.0

    def response_fault(self, pixel_id: str | None) -> FaultSpec | None:
        if not self._faults:
            return None
        now = self._monotonic()
        for fault in self._faults:
            if fault.spec.kind == "rate_limit":
                hit = not fault.expired(now) and fault.applies_to(pixel_id) and fault.over_rate(pixel_id, now)
            else:
                hit = fault.spec.kind in RESPONSE_KINDS and self._hits(fault, pixel_id, now)
            if hit:
                fault.consume()
                return fault.spec
        return None

    def rejected_event(self, pixel_id: str, data: Sequence[Any]) -> ApiError | None:
        """100/2804019 naming the first event whose event_id an armed reject_event_ids fault lists."""
        if not self._faults:
            return None
        now = self._monotonic()
        for fault in self._faults:
            if fault.spec.kind != "reject_event_ids" or not self._hits(fault, pixel_id, now):
                continue
            ids = set(fault.spec.event_ids)
            for index, event in enumerate(data):
                if isinstance(event, dict) and event.get("event_id") in ids:
                    # Only a request it actually rejects uses up the fault's count.
                    fault.consume()
                    return errors.parameter_error(
                        json_path("data", index, "event_id"), "was rejected by the server."
                    )
        return None


def fault_error(spec: FaultSpec, pixel_id: str | None) -> ApiError:
    """The Graph error an error-kind fault answers (transient, throttle, rate_limit, error,
    token_expired)."""
    if spec.kind == "transient":
        code = spec.code or 2
        return ApiError(
            code=code,
            message=spec.message or errors.TRANSIENT_CODES[code],
            http_status=spec.http_status or 500,
            subcode=spec.subcode,
            is_transient=True if spec.is_transient is None else spec.is_transient,
            type=spec.error_type or "OAuthException",
        )
    if spec.kind in ("throttle", "rate_limit"):
        code = spec.code or 80004
        default_sub, default_msg = errors.THROTTLE_CODES[code]
        return ApiError(
            code=code,
            message=spec.message or default_msg,
            http_status=spec.http_status or 400,
            subcode=spec.subcode if spec.subcode is not None else default_sub,
            is_transient=True if spec.is_transient is None else spec.is_transient,
            type=spec.error_type or "OAuthException",
            headers=usage_headers(pixel_id or "0", spec.estimated_time_to_regain_access),
        )
    if spec.kind == "token_expired":
        return errors.expired_token()
    if spec.kind == "error" and spec.code is not None:
        return ApiError(
            code=spec.code,
            message=spec.message or f"(#{spec.code}) Injected error",
            http_status=spec.http_status or 400,
            subcode=spec.subcode,
            is_transient=bool(spec.is_transient),
            type=spec.error_type or "OAuthException",
        )
    raise ValueError(f"fault kind {spec.kind!r} does not answer with a Graph error")


def usage_headers(business_id: str, regain_minutes: float) -> dict[str, str]:
    """Rate-limit headers of a throttled call: the quota is exhausted (100 %) for `regain_minutes`.
    Meta sends whole minutes; a fraction is a test knob for short waits."""
    buc = {
        business_id: [
            {
                "type": "ads_management",
                "call_count": 100,
                "total_cputime": 100,
                "total_time": 100,
                "estimated_time_to_regain_access": int(regain_minutes)
                if float(regain_minutes).is_integer()
                else regain_minutes,
            }
        ]
    }
    app = {"call_count": 100, "total_cputime": 100, "total_time": 100}
    return {
        "X-Business-Use-Case-Usage": orjson.dumps(buc).decode(),
        "X-App-Usage": orjson.dumps(app).decode(),
    }
