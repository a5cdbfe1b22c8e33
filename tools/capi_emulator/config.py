"""Emulator configuration: which tokens may write which pixels, accepted versions, validation policy.

Loaded from YAML or JSON (`load_config`). Without a file, `EmulatorConfig()` is the documented default:
token `test-token` may write pixels `1234567890` and `2234567890`, versions v23.0-v26.0 are accepted
and anything else is answered as retired (2635).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

WILDCARD_PIXEL = "*"
DAY_S = 86_400

FaultKind = Literal[
    "transient",
    "throttle",
    "rate_limit",
    "error",
    "token_expired",
    "html_502",
    "latency",
    "drop_connection",
    "no_response",
    "reject_event_ids",
]


class _Model(BaseModel):
    # Pixel ids and tokens are often written unquoted in YAML, which makes them ints.
    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True)


class TokenConfig(_Model):
    """What one access token may do. Immutable: the emulator shares these values between the config
    and its run-time state, and indexes `pixels` once; the admin API replaces a token with a new one."""

    model_config = ConfigDict(extra="forbid", coerce_numbers_to_str=True, frozen=True)

    pixels: list[str] = Field(description='pixel/dataset ids this token may write; "*" = any')
    app_secret: str | None = Field(
        default=None, description="when set, an appsecret_proof sent with the token must match it"
    )
    require_appsecret_proof: bool = Field(
        default=False, description="reject calls without appsecret_proof (Graph's 'Require App Secret')"
    )
    expired: bool = Field(default=False, description="answer 190/463 for this token")
    missing_permission: bool = Field(
        default=False,
        description="answer 200 'Permissions error' (HTTP 403) on the pixels this token may see",
    )
    # `pixels` as a set: a token of a platform's system user may be granted thousands of pixels.
    _pixel_set: frozenset[str] = PrivateAttr(default_factory=frozenset)

    def model_post_init(self, context: Any, /) -> None:
        self._pixel_set = frozenset(self.pixels)

    @model_validator(mode="after")
    def _proof_needs_secret(self) -> TokenConfig:
        if self.require_appsecret_proof and not self.app_secret:
            raise ValueError("require_appsecret_proof needs app_secret")
        return self

    def allows(self, pixel_id: str) -> bool:
        """Whether the token may see this pixel; O(1) whatever the number of pixels granted."""
        pixels = self._pixel_set
        return pixel_id in pixels or WILDCARD_PIXEL in pixels


class FaultSpec(_Model):
    """One injected fault. Applies to every pixel unless `pixel` is set; stops after `count`
    matching requests or `duration_s` seconds, whichever comes first (neither = until cleared)."""

    kind: FaultKind
    pixel: str | None = None
    count: int | None = Field(default=None, ge=1)
    duration_s: float | None = Field(default=None, gt=0)
    probability: float = Field(default=1.0, gt=0, le=1, description="chance that a request is hit")
    # transient / throttle / error
    code: int | None = None
    subcode: int | None = None
    http_status: int | None = Field(default=None, ge=100, le=599)
    message: str | None = None
    is_transient: bool | None = None
    error_type: str | None = None
    # rate_limit: a token bucket per pixel, `rate_per_s` requests a second, at most `burst` at once
    rate_per_s: float | None = Field(default=None, gt=0)
    burst: float | None = Field(default=None, ge=1, description="default: max(1, rate_per_s)")
    # throttle, rate_limit: minutes until the quota is back, carried in X-Business-Use-Case-Usage
    estimated_time_to_regain_access: float = Field(
        default=1, ge=0, description="minutes; Meta sends whole minutes, a fraction is a test knob"
    )
    # latency: fixed latency_ms, or uniform in [latency_ms, latency_ms_max]
    latency_ms: float = Field(default=0, ge=0)
    latency_ms_max: float | None = Field(default=None, ge=0)
    # no_response: how long to hold the connection before dropping it
    hold_s: float = Field(default=60.0, gt=0)
    # reject_event_ids
    event_ids: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _kind_fields(self) -> FaultSpec:
        if self.kind == "transient" and self.code is not None and self.code not in (1, 2):
            raise ValueError("transient faults use code 1 or 2")
        throttles = ("throttle", "rate_limit")
        if self.kind in throttles and self.code is not None and self.code not in (4, 17, 32, 613, 80004):
            raise ValueError(f"{self.kind} faults use code 4, 17, 32, 613 or 80004")
        if self.kind == "rate_limit" and self.rate_per_s is None:
            raise ValueError("rate_limit needs rate_per_s")
        if self.kind == "error" and self.code is None:
            raise ValueError("error faults need a code")
        if self.kind == "reject_event_ids" and not self.event_ids:
            raise ValueError("reject_event_ids needs event_ids")
        if self.latency_ms_max is not None and self.latency_ms_max < self.latency_ms:
            raise ValueError("latency_ms_max must be >= latency_ms")
        return self


def _default_tokens() -> dict[str, TokenConfig]:
    return {"test-token": TokenConfig(pixels=["1234567890", "2234567890"])}


def _default_versions() -> list[str]:
    return ["v23.0", "v24.0", "v25.0", "v26.0"]


class EmulatorConfig(_Model):
    tokens: dict[str, TokenConfig] = Field(default_factory=_default_tokens)
    accepted_versions: list[str] = Field(
        default_factory=_default_versions,
        description="versions served; any other vNN.N is answered with 2635 (retired)",
    )

    # validation policy
    max_events_per_request: int = Field(default=1000, ge=1)
    max_event_age_s: int = Field(default=7 * DAY_S, ge=0)
    physical_store_max_event_age_s: int = Field(default=62 * DAY_S, ge=0)
    max_future_skew_s: int | None = Field(
        default=60, ge=0, description="event_time this far ahead of now is rejected; null = no limit"
    )
    strict_hashing: bool = Field(
        default=True, description="reject em/ph/fn/... values that are not 64 lowercase hex chars"
    )
    require_website_fields: bool = Field(
        default=False,
        description="website events need event_source_url and client_user_agent (doc: yes; live: no)",
    )

    # bookkeeping; memory stays bounded by these caps so that benchmarks can run for long
    store_events: bool = True
    max_stored_events: int = Field(default=200_000, ge=0)
    max_logged_requests: int = Field(default=10_000, ge=0)
    dedup_window_s: int = Field(default=2 * DAY_S, ge=0)
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)

    faults: list[FaultSpec] = Field(default_factory=list)

    @field_validator("accepted_versions")
    @classmethod
    def _versions_shape(cls, versions: list[str]) -> list[str]:
        if not versions:
            raise ValueError("at least one accepted version is needed")
        for v in versions:
            if version_key(v) is None:
                raise ValueError(f"version {v!r} does not look like vNN.N")
        return versions

    @property
    def latest_version(self) -> str:
        return max(self.accepted_versions, key=lambda v: version_key(v) or (0, 0))


def version_key(version: str) -> tuple[int, int] | None:
    if not version.startswith("v"):
        return None
    major, dot, minor = version[1:].partition(".")
    if not dot or not major.isdigit() or not minor.isdigit():
        return None
    return int(major), int(minor)


# libyaml's loader when PyYAML was built with it: about 10x faster on a file of 10,000 tokens.
_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_config_text(text: str) -> Any:
    """The document in `text`: JSON through orjson (fast), anything else (or JSON-looking YAML flow
    style that is not strict JSON) through the YAML loader."""
    if text.lstrip().startswith("{"):
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            pass
    return yaml.load(text, Loader=_YAML_LOADER)  # SafeLoader or CSafeLoader: no arbitrary objects


def load_config(path: str | Path) -> EmulatorConfig:
    """Read a YAML or JSON file (JSON is valid YAML); an empty file gives the default config."""
    raw = parse_config_text(Path(path).read_text(encoding="utf-8"))
    if raw is None:
        return EmulatorConfig()
    return EmulatorConfig.model_validate(raw)
