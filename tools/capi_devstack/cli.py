"""`capi-devstack`: start Kafka, Schema Registry (and the CAPI emulator); print one JSON line; wait."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from capi_devstack.artifacts import DevStackError
from capi_devstack.stack import DevStack, StackOptions


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capi-devstack",
        description=(
            "Start a single-node KRaft Apache Kafka broker and Apicurio Registry (and optionally the "
            "Conversions API emulator) on 127.0.0.1 with free ports. Prints one JSON line with the "
            "endpoints when everything is ready, then runs until SIGINT/SIGTERM."
        ),
    )
    parser.add_argument("--state-dir", type=Path, default=None, help="keep broker data here between runs")
    parser.add_argument("--with-emulator", action="store_true", help="also start the CAPI emulator")
    parser.add_argument("--emulator-config", type=Path, default=None, help="emulator config file")
    parser.add_argument("--no-registry", action="store_true", help="start the broker only")
    parser.add_argument(
        "--sasl-ssl",
        action="store_true",
        help=(
            "also a SASL_SSL listener (SCRAM-SHA-512, throwaway CA); the JSON line then has a "
            '"sasl_ssl" object: its bootstrap servers, CA file, username and password file'
        ),
    )
    parser.add_argument(
        "--benchmark", action="store_true", help="full JIT and a larger heap for the broker (benchmarks)"
    )
    parser.add_argument("--timings", action="store_true", help="print start-up seconds on stderr")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Signals must not interrupt start-up half-way (leaving a JVM behind); they end the wait instead.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    stack = DevStack(
        StackOptions(
            state_dir=args.state_dir,
            with_registry=not args.no_registry,
            with_emulator=args.with_emulator,
            emulator_config=args.emulator_config,
            benchmark_jvm=args.benchmark,
            kafka_heap="1g" if args.benchmark else "768m",
            sasl_ssl=args.sasl_ssl,
        )
    )
    try:
        endpoints = stack.start()
        if args.timings:
            print(json.dumps({"startup_seconds": stack.startup_seconds}), file=sys.stderr, flush=True)
        print(endpoints.as_json(), flush=True)
        while not stop.wait(0.5):
            dead = [p.name for p in stack.processes if not p.alive()]
            if dead:
                print(f"capi-devstack: {', '.join(dead)} exited unexpectedly", file=sys.stderr)
                return 1
        return 0
    except DevStackError as exc:
        print(f"capi-devstack: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
