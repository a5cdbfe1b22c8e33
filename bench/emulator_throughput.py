"""How many events/s the CAPI emulator accepts on one core (it must never bound a benchmark).

Starts `python -m capi_emulator.cli` as a separate process (one event loop = one core), posts
JSON batches of valid, unique events for a few seconds from this process and reports accepted
events per second as seen by the client and by the emulator's own /_emulator/stats.

    .venv/bin/python bench/emulator_throughput.py --seconds 5 --batch 1000 --concurrency 4
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import requests

PIXEL = "1234567890"
TOKEN = "test-token"


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def make_events(batch: int, request_no: int, now: int) -> list[dict[str, Any]]:
    # Realistic shape: hashed em/ph/names, raw external_id, custom_data with contents.
    return [
        {
            "event_name": "Purchase",
            "event_time": now - (i % 3600),
            "event_id": f"order-{request_no}-{i}",
            "action_source": "system_generated",
            "user_data": {
                "em": [_sha(f"user{i}@example.com")],
                "ph": [_sha(f"1650555{i:04d}")],
                "fn": [_sha("mary")],
                "ln": [_sha("smith")],
                "country": [_sha("us")],
                "external_id": [f"cust-{i}"],
            },
            "custom_data": {
                "value": 19.99 + i,
                "currency": "usd",
                "order_id": f"order-{request_no}-{i}",
                "contents": [{"id": f"sku-{i % 50}", "quantity": 1, "item_price": 19.99}],
            },
        }
        for i in range(batch)
    ]


async def run_load(
    base_url: str, seconds: float, batch: int, concurrency: int, events: list[dict[str, Any]]
) -> tuple[int, int, float]:
    url = f"{base_url}/v26.0/{PIXEL}/events?access_token={TOKEN}"
    deadline = time.perf_counter() + seconds
    accepted = 0
    failed = 0
    counter = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal accepted, failed, counter
        while time.perf_counter() < deadline:
            counter += 1
            # Unique event_ids per request keep the dedup bookkeeping honest (no free cache hits).
            tag = f"r{counter}-"
            for ev in events:
                ev["event_id"] = tag + ev["custom_data"]["order_id"]
            body = orjson.dumps({"data": events})
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                payload = await resp.json()
                if resp.status == 200:
                    accepted += payload["events_received"]
                else:
                    failed += 1

    started = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return accepted, failed, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-store", action="store_true", help="run the emulator with store_events: false")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "emulator.json"
        cfg.write_text(json.dumps({"store_events": not args.no_store}))
        proc = subprocess.Popen(
            [sys.executable, "-m", "capi_emulator.cli", "--port", "0", "--config", str(cfg)],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            base_url = json.loads(proc.stdout.readline())["capi_base_url"]
            events = make_events(args.batch, 0, int(time.time()))
            accepted, failed, elapsed = asyncio.run(
                run_load(base_url, args.seconds, args.batch, args.concurrency, events)
            )
            stats = requests.get(f"{base_url}/_emulator/stats", timeout=10).json()
        finally:
            proc.terminate()
            proc.wait(timeout=10)

    rate = accepted / elapsed
    print(
        json.dumps(
            {
                "batch": args.batch,
                "concurrency": args.concurrency,
                "store_events": not args.no_store,
                "seconds": round(elapsed, 2),
                "events_accepted": accepted,
                "failed_requests": failed,
                "events_per_s": round(rate),
                "emulator_events_received": stats["events_received"],
                "emulator_stored_events": stats["stored_events"],
            }
        )
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
