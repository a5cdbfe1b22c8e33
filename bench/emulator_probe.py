"""The CAPI emulator as the benchmark runs it: its own process, nothing stored, plus a receipt probe.

`store_events: false` keeps the emulator's memory and CPU flat over hundreds of thousands of events.
End-to-end latency needs the time each event reached the emulator, so a middleware records
`(event_id, accepted_at)` for every event of an accepted request while the probe is switched on
(only during the short, paced latency phase of each scenario). `accepted_at` is taken when the
emulator has answered, i.e. after any injected latency: the moment Meta would hold the event.

Bench-only endpoints (answered by the middleware, in front of the emulator's own routes):
- `POST /_bench/probe {"on": true|false}`: switch recording on (clears earlier receipts) or off;
- `GET /_bench/receipts`: `{"receipts": [[event_id, accepted_at], ...]}`.

    python -m bench.emulator_probe --port 0     # prints {"capi_base_url": ...} like capi-emulator
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import orjson
from aiohttp import web

from capi_emulator import EmulatorConfig, create_app, posted_events
from capi_emulator.cli import serve


@dataclass
class Probe:
    on: bool = False
    receipts: list[tuple[str, float]] = field(default_factory=list)


PROBE_KEY = web.AppKey("bench_probe", Probe)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def probe_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    probe = request.app[PROBE_KEY]
    if request.path.startswith("/_bench/"):
        return await _bench_endpoint(request, probe)
    response = await handler(request)
    if probe.on and request.method == "POST" and response.status == 200 and request.path.endswith("/events"):
        accepted_at = time.time()
        # The handler already read the body; aiohttp caches it, so this only re-parses it.
        for event in await posted_events(request):
            if isinstance(event, dict):
                probe.receipts.append((str(event.get("event_id")), accepted_at))
    return response


async def _bench_endpoint(request: web.Request, probe: Probe) -> web.StreamResponse:
    if request.path == "/_bench/probe" and request.method == "POST":
        body = await request.read()
        payload = orjson.loads(body) if body else {}
        probe.on = bool(payload.get("on"))
        if probe.on:
            probe.receipts = []
        return web.json_response({"on": probe.on})
    if request.path == "/_bench/receipts" and request.method == "GET":
        return web.Response(body=orjson.dumps({"receipts": probe.receipts}), content_type="application/json")
    return web.json_response({"error": "unknown bench endpoint"}, status=404)


def bench_config() -> EmulatorConfig:
    return EmulatorConfig(store_events=False, max_logged_requests=2000)


def create_probe_app(config: EmulatorConfig | None = None) -> web.Application:
    app = create_app(config or bench_config())
    app.middlewares.append(probe_middleware)
    app[PROBE_KEY] = Probe()
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    asyncio.run(serve(create_probe_app(), args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
