"""`posted_events`: the public way for middleware (the benchmark's probe) to see a request's events."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web

from capi_emulator import EmulatorConfig, create_app, posted_events
from capi_emulator.server import start_site
from tests.emulator.emulator_helpers import PIXEL, TOKEN, make_event

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def test_middleware_sees_the_events_of_every_encoding() -> None:
    events = [make_event(event_id="a"), make_event(event_id="b")]
    seen: list[tuple[int, list[Any]]] = []

    @web.middleware
    async def spy(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)  # reads the body; posted_events reads it again
        seen.append((response.status, await posted_events(request)))
        return response

    async def scenario() -> None:
        app = create_app(EmulatorConfig())
        app.middlewares.append(spy)
        runner, port = await start_site(app, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}/v26.0/{PIXEL}/events"
        auth = {"access_token": TOKEN}
        try:
            async with aiohttp.ClientSession() as http:
                for kwargs in (
                    {"params": auth, "json": {"data": events}},
                    {"data": {**auth, "data": json.dumps(events)}},
                    {"params": auth, "data": {"data": json.dumps([json.dumps(e) for e in events])}},
                    {"params": {**auth, "data": json.dumps(events)}},
                    {"params": auth, "data": b"{not json", "headers": {"Content-Type": "application/json"}},
                    {"params": auth, "json": {"data": "not an array"}},
                ):
                    async with http.post(url, **kwargs) as resp:
                        await resp.read()
        finally:
            await runner.cleanup()

    asyncio.run(scenario())
    assert seen == [(200, events), (200, events), (200, events), (200, events), (400, []), (400, [])]
