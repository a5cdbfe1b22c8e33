"""Serving the emulator: on the caller's event loop (the CLI) or on a background thread (tests)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType

from aiohttp import web

from capi_emulator.app import EMULATOR_KEY, Emulator, create_app
from capi_emulator.config import EmulatorConfig

# Handlers parked by a no_response fault must not hold up shutdown for their whole hold time.
SHUTDOWN_TIMEOUT_S = 0.5


async def start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Listen on host:port (0 = a free port); return the runner and the bound port."""
    # handler_cancellation: a client that gives up (timeout tests) frees its parked handler at once.
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=SHUTDOWN_TIMEOUT_S,
        handler_cancellation=True,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, int(bound)


def base_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class RunningEmulator:
    """An emulator serving on its own thread and event loop. Use as a context manager or call stop()."""

    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.app = create_app(config, clock=clock)
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self.port = port
        self._thread = threading.Thread(
            target=self._run, args=(port,), name=f"capi-emulator-{id(self):x}", daemon=True
        )

    @property
    def emulator(self) -> Emulator:
        """Direct access to the state (faults, tokens, store) for in-process tests."""
        return self.app[EMULATOR_KEY]

    @property
    def base_url(self) -> str:
        return base_url(self.host, self.port)

    def _run(self, port: int) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner, self.port = self._loop.run_until_complete(start_site(self.app, self.host, port))
        except BaseException as exc:
            self._error = exc
            self._started.set()
            self._loop.close()
            return
        self._started.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._runner.cleanup())
            # Handlers still parked by latency/no_response faults die with the loop, quietly.
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def start(self, timeout: float = 10.0) -> RunningEmulator:
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the emulator did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the emulator failed to start: {self._error}") from self._error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if not self._thread.is_alive():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_in_thread(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] | None = None,
) -> RunningEmulator:
    """Start an emulator on a background thread; returns once it accepts connections."""
    return RunningEmulator(config, host=host, port=port, clock=clock).start()
