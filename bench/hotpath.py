"""The consumer's per-record CPU cost without Kafka or HTTP: decode -> map (normalize, validate) -> JSON.

It runs, in one process and one thread, what `consumer.pipeline.Pipeline._handle`/`_enqueue` do for
each record (ledger ticket, `process_record`, metrics counters, orjson, PendingEvent, batcher), so a
profile of it is a profile of the consumer's hot path on a quiet core. Used to find and measure the
optimisations listed in docs/performance.md ("Optimisations"); `--disable` turns some of them off
again, to measure each against the same code.

    .venv/bin/python -m bench.hotpath --records 20000 [--stage all|decode|map] [--profile out.html]
        [--disable lean-decode] [--disable generated-mapping] [--disable user-data-memo]
        [--disable generated-reader]

The time reported is the process's CPU time (best of `--repeat` runs), which other load on a shared
machine disturbs less than the wall clock; the wall-clock seconds are reported beside it. The
garbage collector runs with the service's settings (`consumer.memory.tune_gc`).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import yaml

from bench.workload import ORDER_SCHEMA_PATH, TOKEN, avro_bytes, order_schema, orders
from consumer.batch import Batcher, PendingEvent
from consumer.config import load_config
from consumer.decode import Decoder, parse_schema
from consumer.errors import PipelineError
from consumer.mapping import Mapped, Mapper, MapResult
from consumer.memory import tune_gc
from consumer.metrics import Metrics
from consumer.normalize import Normalizer
from consumer.offsets import OffsetLedger
from consumer.process import Processed, Undecodable, process_record

OPTIMISATIONS = ("lean-decode", "generated-mapping", "user-data-memo", "generated-reader")
DEFAULT_MEMO_SIZE = inspect.signature(Normalizer).parameters["memo_size"].default


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


def build(records: int, disable: frozenset[str] = frozenset()) -> tuple[list[bytes], Callable[[str], int]]:
    """Encoded records and a function that runs one stage over all of them (returns events mapped).

    `disable`: optimisations (OPTIMISATIONS) to turn off, to measure them against the same code
    (without the generated mapping, records are decoded converted too: the interpreter needs them so).
    """
    unknown = disable - set(OPTIMISATIONS)
    if unknown:
        raise ValueError(f"unknown optimisations {sorted(unknown)}")
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp))
    schema = order_schema()
    now_ms = int(time.time() * 1000)
    values = [avro_bytes(schema, r) for r in orders(records, now_ms=now_ms)]
    reader = parse_schema(json.loads(ORDER_SCHEMA_PATH.read_text()))
    decoder = Decoder(
        {"orders": reader},
        writer_schemas={"orders": reader},
        generated_readers="generated-reader" not in disable,
    )
    metrics = Metrics()
    ledger = OffsetLedger()
    batcher = Batcher(max_events=1000, max_bytes=2_000_000, linger_s=0.2, clock=time.monotonic)
    consumed = 0

    def new_mapper() -> Mapper:
        # A fresh normalization cache (and memo) per run.
        norm = config.normalization
        normalizer = Normalizer(
            default_phone_region=norm.default_phone_region,
            hash_external_id=norm.hash_external_id,
            cache_size=norm.cache_size,
            memo_size=0 if "user-data-memo" in disable else DEFAULT_MEMO_SIZE,
        )
        return Mapper(config, config.reader_schemas(), normalizer)

    def decode(value: bytes) -> tuple[dict[str, Any], bool]:
        # The interpreter reads only records with their logical types converted.
        if "lean-decode" in disable or "generated-mapping" in disable:
            return decoder.decode("orders", value), False
        return decoder.decode_lean("orders", value)

    def map_record(mapper: Mapper, record: dict[str, Any], raw_logical: bool) -> MapResult:
        if "generated-mapping" in disable:
            return mapper.interpret("orders", record)
        return mapper.map("orders", record, raw_logical=raw_logical)

    def process(mapper: Mapper, value: bytes) -> Processed:
        if not disable:
            return process_record(decoder, mapper, "orders", value)  # what the pipeline runs
        try:
            record, raw_logical = decode(value)
        except PipelineError as exc:
            return Undecodable(exc.failure)
        return map_record(mapper, record, raw_logical)

    def run(stage: str) -> int:
        nonlocal consumed
        mapper = new_mapper()
        if stage == "decode":
            for v in values:
                decode(v)
            return len(values)
        if stage == "map":
            decoded = [decode(v) for v in values]
            return sum(isinstance(map_record(mapper, record, raw), Mapped) for record, raw in decoded)
        mapped = 0
        mapped_names: Counter[str] = Counter()  # counted into the metric once per poll, as the pipeline does
        for n, value in enumerate(values):
            # What Pipeline._handle and _enqueue do with a record of a fixed destination.
            ticket = ledger.track(("orders", n % 8), n, len(value))
            consumed += 1
            result = process(mapper, value)
            if not isinstance(result, Mapped):
                continue
            mapped += 1
            for omission in result.omitted:
                metrics.identifiers_omitted.labels(omission.field, omission.reason).inc()
            event = result.event
            event_name = event["event_name"]
            mapped_names[event_name] += 1
            pending = PendingEvent(
                body=bytes(memoryview(orjson.dumps(event))),
                event_name=event_name,
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
            if n % 1000 == 999:
                for name, count in mapped_names.items():
                    metrics.child(metrics.events_mapped, name).inc(count)
                mapped_names.clear()
        return mapped

    return values, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--stage", choices=("all", "decode", "map"), default="all")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs")
    parser.add_argument("--profile", default=None, help="write a pyinstrument HTML profile here")
    parser.add_argument(
        "--disable", action="append", choices=OPTIMISATIONS, default=[], help="turn an optimisation off"
    )
    args = parser.parse_args(argv)
    values, run = build(args.records, frozenset(args.disable))
    tune_gc()  # the service's garbage-collector settings, set once start-up is done (run_cmd)
    if args.profile:
        # Optional (`.venv/bin/pip install pyinstrument`), not a project dependency.
        profiler = importlib.import_module("pyinstrument").Profiler(interval=0.0005)
        profiler.start()
        run(args.stage)
        profiler.stop()
        Path(args.profile).write_text(profiler.output_html())
        print(profiler.output_text(unicode=False, color=False, show_all=False)[:6000])
    best_cpu = best_wall = float("inf")
    mapped = 0
    for _ in range(args.repeat):
        started_cpu, started_wall = time.process_time(), time.perf_counter()
        mapped = run(args.stage)
        best_cpu = min(best_cpu, time.process_time() - started_cpu)
        best_wall = min(best_wall, time.perf_counter() - started_wall)
    print(
        json.dumps(
            {
                "stage": args.stage,
                "disabled": sorted(args.disable),
                "records": len(values),
                "mapped": mapped,
                "cpu_seconds": round(best_cpu, 3),
                "wall_seconds": round(best_wall, 3),
                "records_per_cpu_s": round(len(values) / best_cpu),
                "us_per_record": round(1e6 * best_cpu / len(values), 1),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
