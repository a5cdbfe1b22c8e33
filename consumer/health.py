"""Operator endpoint: /metrics (Prometheus), /healthz (loop turning), /readyz (assigned, not parked),
and in platform mode /tenants (each tenant's state; `?state=parked` filters)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.metrics import Metrics

STALL_AFTER_S = 30.0


def create_app(
    metrics: Metrics,
    *,
    loop_turned_at: Callable[[], float],
    ready: Callable[[], tuple[bool, str]],
    tenants: Callable[[], dict[str, Any]] | None = None,
) -> web.Application:
    """`loop_turned_at`: monotonic seconds of the consume loop's last turn; `ready`: (ready?, why);
    `tenants`: the platform-mode tenant status, served at /tenants."""

    async def get_metrics(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        age = time.monotonic() - loop_turned_at()
        if age > STALL_AFTER_S:
            return web.json_response(
                {"status": "stalled", "seconds_since_loop_turn": round(age, 1)}, status=503
            )
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        ok, why = ready()
        return web.json_response(
            {"status": "ready" if ok else "not ready", "reason": why}, status=200 if ok else 503
        )

    async def get_tenants(request: web.Request) -> web.Response:
        assert tenants is not None
        status = tenants()
        wanted = request.query.get("state")
        if wanted:
            status = {**status, "tenants": [t for t in status["tenants"] if t["state"] == wanted]}
        return web.json_response(status)

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if tenants is not None:
        app.router.add_get("/tenants", get_tenants)
    return app


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app`; returns the runner (call `cleanup()`) and the bound port (useful with port 0)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, int(bound)
