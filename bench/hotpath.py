"""The consumer's per-record CPU cost without Kafka or HTTP: decode -> map (normalize, validate) -> JSON.

It runs, in one process and one thread, what `consumer.pipeline.Pipeline._handle`/`_enqueue` do for
each record (Origin, ledger ticket, metrics counters, decode, map, orjson, PendingEvent, batcher), so
a profile of it is a profile of the consumer's hot path on a quiet core. Used to find and measure
the optimisations listed in docs/performance.md ("Optimisations").

    .venv/bin/python -m bench.hotpath --records 20000 [--stage all|decode|map] [--profile out.html]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.workload import ORDER_SCHEMA_PATH, TOKEN, avro_bytes, order_schema, orders
from consumer.batch import Batcher, PendingEvent
from consumer.config import load_config
from consumer.decode import Decoder, parse_schema
from consumer.mapping import Mapped, Mapper
from consumer.metrics import Metrics
from consumer.offsets import OffsetLedger


def _config(tmp: Path) -> Any:
    cfg = {
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "topics": {
            "orders": {
                "kind": "order",
                "reader_schema": str(ORDER_SCHEMA_PATH),
                "writer_schema": str(ORDER_SCHEMA_PATH),
                "destination": "main",
            }
        },
        "destinations": {"main": {"pixel_id": "1234567890", "access_token_env": "BENCH_TOKEN"}},
        "normalization": {"default_phone_region": "US"},
    }
    path = tmp / "hotpath.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path, env={"BENCH_TOKEN": TOKEN})


def build(records: int) -> tuple[list[bytes], Callable[[str], int]]:
    """Encoded records and a function that runs one stage over all of them (returns events mapped)."""
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp))
    schema = order_schema()
    now_ms = int(time.time() * 1000)
    values = [avro_bytes(schema, r) for r in orders(records, now_ms=now_ms)]
    reader = parse_schema(json.loads(ORDER_SCHEMA_PATH.read_text()))
    decoder = Decoder({"orders": reader}, writer_schemas={"orders": reader})
    metrics = Metrics()
    ledger = OffsetLedger()
    batcher = Batcher(max_events=1000, max_bytes=2_000_000, linger_s=0.2, clock=time.monotonic)

    def run(stage: str) -> int:
        mapper = Mapper.from_config(config)  # a fresh normalization cache per run
        decoded = [decoder.decode("orders", v) for v in values] if stage == "map" else []
        mapped = 0
        if stage == "decode":
            for v in values:
                decoder.decode("orders", v)
            return len(values)
        for n, value in enumerate(values):
            if stage == "map":
                record = decoded[n]
            else:
                ticket = ledger.track(("orders", n % 8), n, len(value))
                metrics.records_consumed.labels("orders").inc()
                record = decoder.decode("orders", value)
            result = mapper.map("orders", record)
            if not isinstance(result, Mapped):
                continue
            mapped += 1
            if stage == "map":
                continue
            event = result.event
            metrics.events_mapped.labels(event["event_name"]).inc()
            for omission in result.omitted:
                metrics.identifiers_omitted.labels(omission.field, omission.reason).inc()
            pending = PendingEvent(
                body=orjson.dumps(event),
                event_name=event["event_name"],
                event_time=int(event["event_time"]),
                action_source=str(event.get("action_source", "")),
                ticket=ticket,
                origin=None,  # type: ignore[arg-type]  # no Kafka record here; nothing reads it
                record_timestamp_ms=None,
                user_data_keys=tuple(event["user_data"]),
            )
            for batch in batcher.add(result.destination, pending):
                for e in batch.events:
                    ledger.settle(e.ticket)
        return mapped

    return values, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--stage", choices=("all", "decode", "map"), default="all")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--profile", default=None, help="write a pyinstrument HTML profile here")
    args = parser.parse_args(argv)
    values, run = build(args.records)
    if args.profile:
        # Optional (`.venv/bin/pip install pyinstrument`), not a project dependency.
        profiler = importlib.import_module("pyinstrument").Profiler(interval=0.0005)
        profiler.start()
        run(args.stage)
        profiler.stop()
        Path(args.profile).write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False)[:6000])
    best = float("inf")
    mapped = 0
    for _ in range(args.repeat):
        started = time.perf_counter()
        mapped = run(args.stage)
        best = min(best, time.perf_counter() - started)
    rate = len(values) / best
    print(
        json.dumps(
            {
                "stage": args.stage,
                "records": len(values),
                "mapped": mapped,
                "seconds": round(best, 3),
                "records_per_s": round(rate),
                "us_per_record": round(1e6 / rate, 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
