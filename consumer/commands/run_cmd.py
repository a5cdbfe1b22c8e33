"""`capi-consumer run --config FILE`: the service."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from consumer import logs
from consumer.config import ConfigError, load_config
from consumer.memory import limit_malloc_arenas, tune_gc


def main(args: argparse.Namespace) -> int:
    # Until the loop installs its handlers, remember a SIGTERM/SIGINT instead of dying of it: a member
    # stopped while it starts (rolling update, scale-down) then still exits cleanly.
    early: list[int] = []
    limit_malloc_arenas()  # before the Kafka clients start their threads
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    logs.setup(os.environ.get("CAPI_LOG_LEVEL", "INFO"))
    try:
        config = load_config(args.config)
        from consumer.app import run_until_signalled
        from consumer.mapping import Mapper

        # Every mapping is checked against its reader schema before anything connects.
        mapper = Mapper.from_config(config)
    except ConfigError as exc:
        print(f"capi-consumer: configuration error\n{exc}", file=sys.stderr)
        return 2
    tune_gc()
    return asyncio.run(run_until_signalled(config, mapper, early))
