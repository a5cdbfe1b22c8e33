"""Graph API error objects as Meta sends them, and constructors for the ones the emulator answers.

Texts follow the English wording of published live responses where one exists (see
`docs/capi-reference.md` §6); where Meta's wording is unknown the text is marked "[INF]". Clients must
key on `code`/`error_subcode`/`is_transient`, never on the texts, exactly as against Meta.
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass, field
from typing import Any

_TRACE_ALPHABET = string.ascii_letters + string.digits + "_-"


def new_fbtrace_id() -> str:
    # Meta's ids are 23 url-safe characters; clients log them, so they must differ per response.
    return "".join(secrets.choice(_TRACE_ALPHABET) for _ in range(23))


@dataclass(frozen=True, slots=True)
class ApiError:
    """One Graph error response: the envelope fields plus the HTTP status and extra headers."""

    code: int
    message: str
    http_status: int = 400
    type: str = "OAuthException"
    subcode: int | None = None
    is_transient: bool = False
    user_title: str | None = None
    user_msg: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def envelope(self, fbtrace_id: str) -> dict[str, Any]:
        # Graph omits error_subcode / error_user_* when they do not apply; clients must cope with that.
        err: dict[str, Any] = {"message": self.message, "type": self.type, "code": self.code}
        if self.subcode is not None:
            err["error_subcode"] = self.subcode
        err["is_transient"] = self.is_transient
        if self.user_title is not None:
            err["error_user_title"] = self.user_title
        if self.user_msg is not None:
            err["error_user_msg"] = self.user_msg
        err["fbtrace_id"] = fbtrace_id
        return {"error": err}


def json_path(*parts: str | int) -> str:
    """`$['data'][3]['event_time']`: the path notation Meta uses in 2804019 messages."""
    return "$" + "".join(f"[{p}]" if isinstance(p, int) else f"['{p}']" for p in parts)


def deprecated_version(latest: str) -> ApiError:
    return ApiError(
        code=2635,
        message=(
            "(#2635) You are calling a deprecated version of the Ads API. "
            f"Please update to the latest version: {latest}."
        ),
    )


def unknown_path(path: str) -> ApiError:
    return ApiError(code=2500, message=f"Unknown path components: {path}")


def missing_token() -> ApiError:
    return ApiError(code=104, message="An access token is required to request this resource.")


def _oauth_header(description: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'OAuth "Facebook Platform" "invalid_token" "{description}"'}


def invalid_token() -> ApiError:
    msg = "Invalid OAuth access token - Cannot parse access token"
    return ApiError(code=190, message=msg, http_status=401, headers=_oauth_header(msg))


def expired_token() -> ApiError:
    msg = "Error validating access token: Session has expired."
    return ApiError(
        code=190,
        subcode=463,
        message=msg,
        http_status=401,
        user_title="Session expired",
        user_msg="Your session has expired. Please log in again.",
        headers=_oauth_header(msg),
    )


def invalid_appsecret_proof() -> ApiError:
    return ApiError(
        code=100,
        type="GraphMethodException",
        message="Invalid appsecret_proof provided in the API argument",
    )


def missing_appsecret_proof() -> ApiError:
    return ApiError(
        code=100,
        type="GraphMethodException",
        message="API calls from the server require an appsecret_proof argument",
    )


def unknown_pixel(pixel_id: str) -> ApiError:
    return ApiError(
        code=100,
        subcode=33,
        type="GraphMethodException",
        message=(
            f"Unsupported post request. Object with ID '{pixel_id}' does not exist, cannot be loaded due "
            "to missing permissions, or does not support this operation. Please read the Graph API "
            "documentation at https://developers.facebook.com/docs/graph-api"
        ),
    )


def missing_permission() -> ApiError:
    """Code 200, the generic "Permissions error" of Graph's 200-299 permission range (reference §6).

    HTTP 403 and the "(#200) Permissions error" text are what Graph sends for code 200 on other edges
    (published captures); Meta documents neither the status nor the text for the events edge. No
    subcode, as in every captured code-200 answer. [INF for the events edge]
    """
    return ApiError(code=200, message="(#200) Permissions error", http_status=403)


def invalid_parameter(message: str) -> ApiError:
    """A top-level parameter problem (`data` absent or not an array, too many events) [INF wording]."""
    return ApiError(code=100, message=f"(#100) {message}")


def parameter_error(path: str, problem: str) -> ApiError:
    """100/2804019: the per-field error that names the offending JSON path."""
    return ApiError(
        code=100,
        subcode=2804019,
        message="Invalid parameter",
        user_title="Server-side API parameter error",
        user_msg=f"The parameter {path} {problem}",
    )


def timestamp_too_old(max_age_days: int) -> ApiError:
    return ApiError(
        code=100,
        subcode=2804003,
        message="Invalid parameter",
        user_title="Event Timestamp Too Old",
        user_msg=(
            "The timestamp for this event is too far in the past. Events need to be sent from your "
            f"server within {max_age_days} days of when they occurred. Enter a timestamp that has "
            f"occurred within the last {max_age_days} days."
        ),
    )


def insufficient_customer_information() -> ApiError:
    return ApiError(
        code=100,
        subcode=2804050,
        message="Invalid parameter",
        user_title="You have not added sufficient customer information parameter data for this event",
        user_msg=(
            "This event has no customer information parameters, or a combination so broad it is unlikely "
            "to be effective for matching. See "
            "https://developers.facebook.com/docs/marketing-api/conversions-api/best-practices#req-rec-params"
        ),
    )


# Throttling presets: (subcode, message). Texts as documented in Graph's rate-limiting pages.
THROTTLE_CODES: dict[int, tuple[int | None, str]] = {
    4: (None, "(#4) Application request limit reached"),
    17: (2446079, "(#17) User request limit reached"),
    32: (None, "(#32) Page request limit reached"),
    613: (1487742, "(#613) Calls to this api have exceeded the rate limit."),
    80004: (
        None,
        "(#80004) There have been too many calls to this ad-account. Wait a bit and try again. For more "
        "info, please refer to https://developers.facebook.com/docs/graph-api/overview/rate-limiting.",
    ),
}

TRANSIENT_CODES: dict[int, str] = {
    1: "An unknown error has occurred.",
    2: "An unexpected error has occurred. Please retry your request later.",
}
