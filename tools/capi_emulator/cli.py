"""`capi-emulator`: serve the Conversions API emulator until SIGINT/SIGTERM.

Once listening it prints exactly one JSON line, `{"capi_base_url": "http://HOST:PORT"}`, to stdout;
launchers (the dev stack) read that line to learn the port when `--port 0` was given.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import orjson
from aiohttp import web
from pydantic import ValidationError

from capi_emulator.app import create_app
from capi_emulator.config import EmulatorConfig, load_config
from capi_emulator.server import base_url, start_site


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capi-emulator", description="A local emulator of Meta's Conversions API events endpoint."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free port")
    parser.add_argument("--config", default=None, help="YAML/JSON config file (default: built-in config)")
    return parser


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve `app`, print `{"capi_base_url": ...}` on stdout once listening, run until SIGINT/SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner, bound = await start_site(app, host, port)
    try:
        sys.stdout.write(orjson.dumps({"capi_base_url": base_url(host, bound)}).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config) if args.config else EmulatorConfig()
    except (OSError, ValidationError, ValueError) as exc:
        print(f"capi-emulator: bad config {args.config}: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(serve(create_app(config), args.host, args.port))
    except OSError as exc:
        print(f"capi-emulator: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
