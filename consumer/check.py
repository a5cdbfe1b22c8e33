"""Connection test: one test event to a destination's pixel, and Meta's answer in an operator's words.

Meta asks platforms to give advertisers "a way to test this connection": send a test event, look for a
200, update the connection's status (../shared/seeds/002). Events sent with a `test_event_code` still
flow into Events Manager and count, so the test event must never look like a conversion: it is the
custom event `CapiConnectionCheck` (never Purchase, Subscribe, ...), `action_source`
`system_generated`, a fresh `event_id`, and one hashed `external_id` that names no customer.
`capi-consumer check` runs it for chosen tenants or destinations; the service runs it when a tenant
appears or its entry or token changes, and reports the result as the tenant's connection status.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from consumer.deliver import Accepted, Destination, GraphClient
from consumer.errors import ErrorClass, GraphError
from consumer.normalize import sha256_hex

CHECK_EVENT_NAME = "CapiConnectionCheck"
_CHECK_EXTERNAL_ID = sha256_hex("capi-consumer-connection-check")

# (code, subcode or None for any) -> (verdict, what an operator should understand and do)
_VERDICTS: dict[tuple[int, int | None], tuple[str, str]] = {
    (190, 463): ("expired_token", "the access token has expired: generate a new system-user token"),
    (190, 460): ("invalid_token", "the token was invalidated (password changed): generate a new one"),
    (190, None): ("invalid_token", "the access token is not valid: check the secret, generate a new token"),
    (102, None): ("invalid_token", "the API session is not valid: generate a new token"),
    (104, None): ("invalid_token", "no access token reached Meta: check the secret"),
    (100, 33): (
        "unknown_pixel",
        "the pixel does not exist or this token cannot access it: check pixel_id and the system "
        "user's assigned assets",
    ),
    (10, None): ("missing_permission", "the token lacks the permission to send events for this pixel"),
    (3, None): ("missing_permission", "the app lacks the capability to send events"),
    (2635, None): ("retired_api_version", "the Graph API version is retired: raise capi.api_version"),
}


@dataclass(frozen=True)
class CheckResult:
    """One connection test. `verdict`: ok, expired_token, invalid_token, missing_permission,
    unknown_pixel, retired_api_version, throttled, unavailable, rejected, or for a tenant that
    could not be tried at all unknown_tenant, invalid_entry, disabled."""

    name: str
    pixel_id: str | None
    verdict: str
    message: str
    code: int | None = None
    subcode: int | None = None
    fbtrace_id: str | None = None
    checked_at: float = 0.0
    """Unix seconds."""

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    def line(self) -> str:
        """One line for a terminal: `name  pixel  ok` or the verdict in words with Graph's codes."""
        where = f"{self.name}  pixel {self.pixel_id or '-'}"
        if self.ok:
            return f"{where}  ok ({self.message})"
        codes = ""
        if self.code is not None:
            codes = f" [code {self.code}" + (f"/{self.subcode}" if self.subcode is not None else "")
            codes += f", fbtrace_id {self.fbtrace_id}]" if self.fbtrace_id else "]"
        return f"{where}  FAILED {self.verdict}: {self.message}{codes}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def check_body(test_event_code: str | None, partner_agent: str | None, now: float) -> bytes:
    event = {
        "event_name": CHECK_EVENT_NAME,
        "event_time": int(now),
        "event_id": f"capi-check-{uuid.uuid4().hex}",
        "action_source": "system_generated",
        "user_data": {"external_id": [_CHECK_EXTERNAL_ID]},
        "custom_data": {"check": "connection"},
    }
    body: dict[str, Any] = {"data": [event]}
    if test_event_code:
        body["test_event_code"] = test_event_code
    if partner_agent:
        body["partner_agent"] = partner_agent
    return orjson.dumps(body)


def verdict(name: str, pixel_id: str, answer: Accepted | GraphError, now: float) -> CheckResult:
    """Meta's answer to a test event, in words."""
    if isinstance(answer, Accepted):
        words = f"Meta accepted the test event (fbtrace_id {answer.fbtrace_id})"
        return CheckResult(name, pixel_id, "ok", words, checked_at=now)
    if answer.code is None:
        kind, words = "unavailable", f"Meta could not be reached: {answer.summary}"
    else:
        known = _VERDICTS.get((answer.code, answer.subcode)) or _VERDICTS.get((answer.code, None))
        if known is None and 200 <= answer.code < 300:
            known = ("missing_permission", "the token lacks the permission to send events for this pixel")
        if known is not None:
            kind, words = known
        elif answer.error_class is ErrorClass.TRANSIENT:
            kind, words = "throttled", "Meta asks to retry later (throttled or busy)"
        else:
            kind, words = "rejected", f"Meta refused the test event: {answer.summary}"
    return CheckResult(
        name, pixel_id, kind, words, answer.code, answer.subcode, answer.fbtrace_id, checked_at=now
    )


async def check_destination(
    client: GraphClient, destination: Destination, name: str, *, test_event_code: str | None = None
) -> CheckResult:
    """Send the test event to `destination` (with `test_event_code`, else the destination's own);
    `name` is how the result calls it (a tenant id or a destination name)."""
    now = time.time()
    body = check_body(test_event_code or destination.test_event_code, destination.partner_agent, now)
    answer = await client.post_body(destination, body)
    return verdict(name, destination.pixel_id, answer, now)
