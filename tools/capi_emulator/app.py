"""The aiohttp application: `POST /{version}/{pixel_id}/events` as Meta answers it, plus `/_emulator/*`.

Checks run in Graph's order (version, token, appsecret_proof, pixel visibility, permission,
parameters), so a request with several problems gets the error Meta would report first.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import orjson
from aiohttp import web
from pydantic import ValidationError

from capi_emulator import errors
from capi_emulator.config import EmulatorConfig, FaultSpec, TokenConfig
from capi_emulator.errors import ApiError, new_fbtrace_id
from capi_emulator.faults import HTML_502_BODY, FaultRegistry, fault_error
from capi_emulator.store import RequestParams, Store
from capi_emulator.validation import validate_data

JSON_CONTENT_TYPE = "application/json; charset=UTF-8"
_REQUEST_FIELDS = (
    "test_event_code",
    "partner_agent",
    "namespace_id",
    "upload_id",
    "upload_tag",
    "upload_source",
)


class Emulator:
    """All mutable state of one emulator instance; `clock` is the wall clock validation uses as "now"."""

    def __init__(self, config: EmulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.started_at = time.time()
        self.faults = FaultRegistry()
        self.store = Store(
            config.max_stored_events if config.store_events else 0,
            config.max_logged_requests,
            config.dedup_window_s,
        )
        self.tokens: dict[str, TokenConfig] = {}
        self.reset()

    def reset(self) -> None:
        """Back to the configured state: tokens, faults from the file, nothing stored, zero counters."""
        # TokenConfig is immutable, so the run-time table can share the configured values: a reset with
        # 10,000 tokens costs one dict copy.
        self.tokens = dict(self.config.tokens)
        self.faults.clear()
        for spec in self.config.faults:
            self.faults.add(spec)
        self.store.clear()


EMULATOR_KEY = web.AppKey("emulator", Emulator)


@dataclass(slots=True)
class _Outcome:
    """What the handler decided, collected for the request log and the counters."""

    status: int | None = None
    outcome: str = "accepted"
    error_code: int | None = None
    error_subcode: int | None = None
    fault: str | None = None
    request_id: int = 0
    body_bytes: int = 0
    events: int | None = None
    events_received: int = 0
    duplicates: int = 0
    params: RequestParams = field(default_factory=RequestParams)
    fbtrace_id: str | None = None


def _error_response(err: ApiError, out: _Outcome, outcome: str = "rejected") -> web.Response:
    trace = new_fbtrace_id()
    out.status, out.outcome = err.http_status, outcome
    out.error_code, out.error_subcode = err.code, err.subcode
    out.fbtrace_id = trace
    headers = {"x-fb-trace-id": trace, **err.headers}
    return web.Response(
        body=orjson.dumps(err.envelope(trace)),
        status=err.http_status,
        headers=headers,
        content_type="application/json",
        charset="UTF-8",
    )


class _BadBody(Exception):
    pass


async def _read_params(request: web.Request) -> tuple[dict[str, Any], int]:
    """Query string and body fields merged (Graph treats them alike), and the body size in bytes."""
    params: dict[str, Any] = dict(request.query)
    ctype = request.content_type
    if ctype.startswith("multipart/"):
        form = await request.post()
        params.update({k: v for k, v in form.items() if isinstance(v, str)})
        return params, request.content_length or 0
    body = await request.read()
    if not body:
        return params, 0
    if ctype == "application/json" or (ctype == "application/octet-stream" and body[:1] == b"{"):
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise _BadBody("The request body is not valid JSON") from exc
        if not isinstance(parsed, dict):
            raise _BadBody("The request body must be a JSON object")
        params.update(parsed)
    else:
        try:
            params.update(parse_qsl(body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError as exc:
            raise _BadBody("The request body is not valid UTF-8") from exc
    return params, len(body)


def _token_from(request: web.Request, params: dict[str, Any]) -> str | None:
    token = params.get("access_token")
    if isinstance(token, str) and token:
        return token
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() in ("bearer", "oauth") and value.strip():
        return value.strip()
    return None


def _decode_data(raw: Any) -> list[Any] | ApiError:
    """`data` as a list of events, whichever of the three encodings carried it."""
    if raw is None:
        return errors.invalid_parameter("The parameter data is required")
    if isinstance(raw, str):
        try:
            raw = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return errors.invalid_parameter("param data must be an array.")
    if not isinstance(raw, list):
        return errors.invalid_parameter("param data must be an array.")
    if not any(isinstance(item, str) for item in raw):
        return raw
    # The official Python SDK encodes every event as its own JSON string inside the array.
    decoded: list[Any] = []
    for index, item in enumerate(raw):
        if isinstance(item, str):
            try:
                item = orjson.loads(item)
            except orjson.JSONDecodeError:
                return errors.parameter_error(errors.json_path("data", index), "must be a JSON object.")
        decoded.append(item)
    return decoded


async def posted_events(request: web.Request) -> list[Any]:
    """The events a `POST .../events` request carries, decoded as the events handler decodes them.

    Any of the three encodings of `data` (JSON array, JSON string, array of JSON strings) in the query
    string, a JSON, form or multipart body; `[]` when the body or `data` is malformed. Meant for
    middleware that looks at requests the handler has answered (the benchmark's receipt probe): aiohttp
    keeps the body it read, so a second look only re-parses it.
    """
    try:
        params, _ = await _read_params(request)
    except _BadBody:
        return []
    data = _decode_data(params.get("data"))
    return data if isinstance(data, list) else []


def _request_params(params: dict[str, Any]) -> RequestParams | ApiError:
    values: dict[str, str | None] = {}
    for name in _REQUEST_FIELDS:
        value = params.get(name)
        if value is not None and not isinstance(value, str):
            if isinstance(value, int | float) and not isinstance(value, bool):
                value = str(value)
            else:
                return errors.invalid_parameter(f"param {name} must be a string.")
        values[name] = value
    return RequestParams(**values)


def _log_params(out: _Outcome, params: RequestParams | ApiError) -> None:
    if isinstance(params, RequestParams):
        out.params = params


def _check_auth(emu: Emulator, token: str | None, params: dict[str, Any], pixel_id: str) -> ApiError | None:
    if token is None:
        return errors.missing_token()
    tok = emu.tokens.get(token)
    if tok is None:
        return errors.invalid_token()
    if tok.expired:
        return errors.expired_token()
    if tok.app_secret:
        proof = params.get("appsecret_proof")
        if isinstance(proof, str) and proof:
            expected = hmac.new(tok.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()
            if not hmac.compare_digest(proof, expected):
                return errors.invalid_appsecret_proof()
        elif tok.require_appsecret_proof:
            return errors.missing_appsecret_proof()
    # A pixel the token cannot see does not exist for it (100/33), whatever the token's permissions;
    # only a visible pixel gets the permission error.
    if not tok.allows(pixel_id):
        return errors.unknown_pixel(pixel_id)
    if tok.missing_permission:
        return errors.missing_permission()
    return None


async def _drop_connection(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        transport.abort()
    # Nothing can be written any more; aiohttp discards a response for an aborted transport.
    return web.Response(status=204)


async def _events_answer(
    request: web.Request, emu: Emulator, version: str, pixel_id: str, out: _Outcome
) -> web.StreamResponse:
    fault = emu.faults.response_fault(pixel_id)
    if fault is not None:
        out.fault = fault.kind
        if fault.kind == "html_502":
            out.status, out.outcome = 502, "fault"
            return web.Response(text=HTML_502_BODY, status=502, content_type="text/html", charset="utf-8")
        if fault.kind == "drop_connection":
            out.outcome = "fault"
            return await _drop_connection(request)
        if fault.kind == "no_response":
            out.outcome = "fault"
            await asyncio.sleep(fault.hold_s)
            return await _drop_connection(request)
        return _error_response(fault_error(fault, pixel_id), out, "fault")

    if version not in emu.config.accepted_versions:
        return _error_response(errors.deprecated_version(emu.config.latest_version), out)

    try:
        params, out_size = await _read_params(request)
    except _BadBody as exc:
        query = dict(request.query)
        _log_params(out, _request_params(query))
        auth_err = _check_auth(emu, _token_from(request, query), query, pixel_id)
        return _error_response(auth_err or errors.invalid_parameter(str(exc)), out)
    out.body_bytes = out_size

    # Logged before the checks, so that a rejected call (a client's test event answered 190, 200 or
    # 100/33) still shows its test_event_code and partner_agent in /_emulator/requests.
    req_params = _request_params(params)
    _log_params(out, req_params)

    auth_err = _check_auth(emu, _token_from(request, params), params, pixel_id)
    if auth_err is not None:
        return _error_response(auth_err, out)

    if isinstance(req_params, ApiError):
        return _error_response(req_params, out)

    data = _decode_data(params.get("data"))
    if isinstance(data, ApiError):
        return _error_response(data, out)
    out.events = len(data)

    now = emu.clock()
    err = validate_data(data, now, emu.config) or emu.faults.rejected_event(pixel_id, data)
    if err is not None:
        return _error_response(err, out)

    if emu.config.store_events:
        out.duplicates = emu.store.add_events(pixel_id, data, req_params, out.request_id, now)
    out.events_received = len(data)
    out.status = 200
    trace = new_fbtrace_id()
    out.fbtrace_id = trace
    body = b'{"events_received":%d,"messages":[],"fbtrace_id":"%s"}' % (len(data), trace.encode())
    return web.Response(
        body=body,
        content_type="application/json",
        charset="UTF-8",
        headers={"x-fb-trace-id": trace, "facebook-api-version": version},
    )


async def handle_events(request: web.Request) -> web.StreamResponse:
    emu = request.app[EMULATOR_KEY]
    started = time.perf_counter()
    version = request.match_info.get("version") or emu.config.latest_version
    pixel_id = request.match_info["node"]
    out = _Outcome(request_id=emu.store.next_request_id(), body_bytes=request.content_length or 0)
    try:
        delay = emu.faults.latency_s(pixel_id)
        if delay:
            out.fault = "latency"
            await asyncio.sleep(delay)
        return await _events_answer(request, emu, version, pixel_id, out)
    finally:
        _record(emu, request, version, pixel_id, out, started)


def _record(
    emu: Emulator, request: web.Request, version: str, pixel_id: str, out: _Outcome, started: float
) -> None:
    stats = emu.store.stats
    stats.requests += 1
    if out.status is not None:
        stats.by_status[out.status] += 1
    if out.outcome == "accepted" and out.status == 200:
        stats.requests_accepted += 1
        stats.events_received += out.events_received
        stats.duplicates += out.duplicates
        stats.events_by_pixel[pixel_id] += out.events_received
    elif out.outcome == "fault":
        stats.requests_faulted += 1
    else:
        stats.requests_rejected += 1
    if out.error_code is not None:
        key = str(out.error_code) if out.error_subcode is None else f"{out.error_code}/{out.error_subcode}"
        stats.by_error[key] += 1
    emu.store.log_request(
        {
            "id": out.request_id,
            "at": time.time(),
            "method": request.method,
            "path": request.path,
            "version": version,
            "pixel_id": pixel_id,
            "outcome": out.outcome if out.status is not None else "no_answer",
            "fault": out.fault,
            "status": out.status,
            "error_code": out.error_code,
            "error_subcode": out.error_subcode,
            "events": out.events,
            "events_received": out.events_received,
            "duplicates": out.duplicates,
            "bytes": out.body_bytes,
            "latency_ms": round((time.perf_counter() - started) * 1000, 3),
            "fbtrace_id": out.fbtrace_id,
            **out.params.to_json(),
        }
    )


async def handle_unknown(request: web.Request) -> web.StreamResponse:
    err = errors.unknown_path(request.path)
    return _error_response(err, _Outcome())


# ---- /_emulator: inspection and admin -------------------------------------------------------------


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS),
        status=status,
        content_type="application/json",
    )


def _admin_error(message: str, status: int = 400) -> web.Response:
    return _json({"error": message}, status)


def _int_query(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise web.HTTPBadRequest(
            text=orjson.dumps({"error": f"{name} must be an integer"}).decode(),
            content_type="application/json",
        ) from exc


async def _json_body(request: web.Request) -> Any:
    body = await request.read()
    if not body:
        return {}
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(
            text=orjson.dumps({"error": f"invalid JSON: {exc}"}).decode(), content_type="application/json"
        ) from exc


async def get_events(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    events = emu.store.query_events(
        request.query.get("pixel"), request.query.get("test_event_code"), _int_query(request, "limit")
    )
    return _json({"count": len(events), "events": events})


async def get_requests(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    pixel = request.query.get("pixel")
    limit = _int_query(request, "limit")
    entries = [r for r in emu.store.requests if pixel is None or r["pixel_id"] == pixel]
    if limit:
        entries = entries[-limit:]
    return _json({"count": len(entries), "requests": entries})


async def get_stats(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    return _json(emu.store.stats.to_json(len(emu.store.events), emu.started_at, time.time()))


async def post_reset(request: web.Request) -> web.Response:
    request.app[EMULATOR_KEY].reset()
    return _json({"reset": True})


async def get_faults(request: web.Request) -> web.Response:
    return _json({"faults": request.app[EMULATOR_KEY].faults.listing()})


async def post_faults(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    payload = await _json_body(request)
    specs = payload if isinstance(payload, list) else [payload]
    try:
        parsed = [FaultSpec.model_validate(s) for s in specs]
    except ValidationError as exc:
        return _admin_error(str(exc))
    now = time.monotonic()
    added = [emu.faults.add(spec).to_json(now) for spec in parsed]
    return _json({"faults": added}, status=201)


async def delete_faults(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    raw_id = request.match_info.get("fault_id")
    if raw_id is None:
        return _json({"cleared": emu.faults.clear()})
    if not raw_id.isdigit():
        return _admin_error("fault id must be an integer")
    cleared = emu.faults.clear(int(raw_id))
    if not cleared:
        return _admin_error(f"no fault {raw_id}", 404)
    return _json({"cleared": cleared})


def _token_view(cfg: TokenConfig) -> dict[str, Any]:
    return {
        "pixels": cfg.pixels,
        "expired": cfg.expired,
        "missing_permission": cfg.missing_permission,
        "has_app_secret": cfg.app_secret is not None,
        "require_appsecret_proof": cfg.require_appsecret_proof,
    }


def _token_listing(emu: Emulator) -> dict[str, Any]:
    return {"tokens": {token: _token_view(cfg) for token, cfg in emu.tokens.items()}}


def _token_answer(
    emu: Emulator, tokens: dict[str, TokenConfig], deleted: list[str] | None = None
) -> web.Response:
    """The shape every /_emulator/tokens answer shares: the tokens concerned, the total, deletions."""
    body: dict[str, Any] = {
        "count": len(emu.tokens),
        "tokens": {token: _token_view(cfg) for token, cfg in tokens.items()},
    }
    if deleted is not None:
        body["deleted"] = deleted
    return _json(body)


async def get_tokens(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    return _token_answer(emu, emu.tokens)


async def get_token(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    token = request.match_info["token"]
    cfg = emu.tokens.get(token)
    if cfg is None:
        return _admin_error(f"unknown token {token!r}", 404)
    return _token_answer(emu, {token: cfg})


class _TokenEntryError(Exception):
    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _staged_token(
    emu: Emulator, staged: dict[str, TokenConfig | None], entry: Any
) -> tuple[str, TokenConfig | None]:
    """One entry of a POST applied on top of the table as already changed by the earlier entries:
    (token, its new config), or (token, None) for a deletion."""
    if not isinstance(entry, dict) or not isinstance(entry.get("token"), str) or not entry["token"]:
        raise _TokenEntryError('each entry must be an object with a non-empty "token"')
    fields = dict(entry)
    token: str = fields.pop("token")
    delete = fields.pop("delete", False)
    if not isinstance(delete, bool):
        raise _TokenEntryError(f'token {token!r}: "delete" must be true or false')
    current = staged[token] if token in staged else emu.tokens.get(token)
    if delete:
        if current is None:
            raise _TokenEntryError(f"unknown token {token!r}", 404)
        return token, None
    # A partial update: fields not sent keep their value; an unknown token needs "pixels".
    merged = {**(current.model_dump() if current is not None else {}), **fields}
    try:
        return token, TokenConfig.model_validate(merged)
    except ValidationError as exc:
        raise _TokenEntryError(f"token {token!r}: {exc}") from exc


async def post_tokens(request: web.Request) -> web.Response:
    """Create, change (expire / restore / revoke permission / re-grant pixels) or delete tokens.

    Body: one entry or a JSON list of entries, applied in order and all-or-nothing. An entry is
    {"token": "...", "pixels": [...]?, "expired": bool?, "missing_permission": bool?,
    "app_secret": str?, "require_appsecret_proof": bool?, "delete": bool?}; fields left out keep their
    current value, an unknown token needs "pixels". Answer: {"count": total tokens, "tokens": {the
    tokens created or changed}, "deleted": [...]}; a bad entry → 400 (404 for deleting an unknown
    token) with "error" (and "index" for a list) and nothing applied.
    """
    emu = request.app[EMULATOR_KEY]
    payload = await _json_body(request)
    entries = payload if isinstance(payload, list) else [payload]
    staged: dict[str, TokenConfig | None] = {}
    for index, entry in enumerate(entries):
        try:
            token, cfg = _staged_token(emu, staged, entry)
        except _TokenEntryError as exc:
            body: dict[str, Any] = {"error": str(exc)}
            if isinstance(payload, list):
                body["index"] = index
            return _json(body, exc.status)
        staged[token] = cfg
    for token, cfg in staged.items():
        if cfg is None:
            emu.tokens.pop(token, None)
        else:
            emu.tokens[token] = cfg
    changed = {token: cfg for token, cfg in staged.items() if cfg is not None}
    return _token_answer(emu, changed, [token for token, cfg in staged.items() if cfg is None])


async def delete_token(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    token = request.match_info["token"]
    if emu.tokens.pop(token, None) is None:
        return _admin_error(f"unknown token {token!r}", 404)
    return _token_answer(emu, {}, [token])


async def get_health(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    return _json({"ok": True, "accepted_versions": emu.config.accepted_versions})


async def get_config(request: web.Request) -> web.Response:
    emu = request.app[EMULATOR_KEY]
    return _json(emu.config.model_dump(mode="json", exclude={"tokens"}) | _token_listing(emu))


def create_app(
    config: EmulatorConfig | None = None, *, clock: Callable[[], float] | None = None
) -> web.Application:
    """The emulator as an aiohttp application; its state is `app[EMULATOR_KEY]`."""
    cfg = config or EmulatorConfig()
    app = web.Application(client_max_size=cfg.max_body_bytes)
    app[EMULATOR_KEY] = Emulator(cfg, clock or time.time)
    app.router.add_post(r"/{version:v\d+\.\d+}/{node}/events", handle_events)
    # Unversioned calls are served with the latest version, as Graph uses the app's default version.
    app.router.add_post(r"/{node:\d+}/events", handle_events)
    app.router.add_get("/_emulator/health", get_health)
    app.router.add_get("/_emulator/config", get_config)
    app.router.add_get("/_emulator/events", get_events)
    app.router.add_get("/_emulator/requests", get_requests)
    app.router.add_get("/_emulator/stats", get_stats)
    app.router.add_post("/_emulator/reset", post_reset)
    app.router.add_get("/_emulator/faults", get_faults)
    app.router.add_post("/_emulator/faults", post_faults)
    app.router.add_delete("/_emulator/faults", delete_faults)
    app.router.add_delete("/_emulator/faults/{fault_id}", delete_faults)
    app.router.add_get("/_emulator/tokens", get_tokens)
    app.router.add_post("/_emulator/tokens", post_tokens)
    app.router.add_get("/_emulator/tokens/{token}", get_token)
    app.router.add_delete("/_emulator/tokens/{token}", delete_token)
    app.router.add_route("*", "/{tail:.*}", handle_unknown)
    return app
