"""`make chaos` / `make soak`: run fault scenarios against a fresh dev stack and print what they found.

    python -m tests.chaos.run                         # every scenario (about 20 minutes)
    python -m tests.chaos.run --scenarios broker-kill,clean-bounces
    python -m tests.chaos.run --list
    python -m tests.chaos.run --soak --minutes 10 --rate 2000

Prints one row per scenario (events, lost, duplicates, dead-lettered, time to recover, consumer RSS) and
the violated invariants; exits 1 when any invariant failed. Logs (consumers, broker, registry, emulator,
toxiproxy) stay in --work-dir (default: a new directory under the system's temp dir).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.harness import ChaosStack, Result, Run
from tests.chaos.scenarios import BY_NAME, SCENARIOS, Scenario, soak


def table(results: list[Result]) -> str:
    head = (
        "| scenario | events | lost | duplicates (resent after a timeout) | dead-lettered | time to recover "
        "| elapsed | RSS start/peak/end MB | ok |"
    )
    rows = [head, "|" + "---|" * 9]
    for r in results:
        recover = f"{r.recover_s:.1f} s" if r.recover_s is not None else "-"
        rss = "/".join(
            f"{v:.0f}" if v is not None else "-" for v in (r.rss_start_mb, r.rss_peak_mb, r.rss_end_mb)
        )
        rows.append(
            f"| {r.scenario} | {r.events} | {r.lost} | {r.duplicates} ({r.resent_after_timeout}) "
            f"| {r.dead_lettered} | {recover} "
            f"| {r.elapsed_s:.0f} s | {rss} | {'yes' if r.ok else 'NO'} |"
        )
    return "\n".join(rows)


def details(results: list[Result]) -> str:
    lines = []
    for r in results:
        for v in r.violations:
            lines.append(f"- {r.scenario}: VIOLATION {v}")
        for n in r.notes:
            lines.append(f"- {r.scenario}: {n}")
    return "\n".join(lines)


def rss_over_time(result: Result, every_s: float = 60.0) -> str:
    points, next_t = [], 0.0
    for t, mb in result.rss_series:
        if t >= next_t:
            points.append(f"{t:.0f}s {mb:.0f} MB")
            next_t = t + every_s
    return "RSS over time: " + ", ".join(points)


def run_scenarios(scenarios: list[Scenario], work_dir: Path, *, soak_mode: bool = False) -> list[Result]:
    emulator_config = None
    if soak_mode:
        # 200,000 accepted events remembered (100 s at 2,000/s): the soak counts duplicates with them.
        emulator_config = work_dir / "emulator.yaml"
        work_dir.mkdir(parents=True, exist_ok=True)
        emulator_config.write_text("max_stored_events: 200000\nmax_logged_requests: 1000\n")
    started = time.monotonic()
    chaos = ChaosStack(work_dir, emulator_config=emulator_config)
    print(f"chaos: stack up in {time.monotonic() - started:.0f}s; work dir {work_dir}", file=sys.stderr)
    results = []
    try:
        for sc in scenarios:
            print(f"chaos: {sc.name}: {sc.summary}", file=sys.stderr)
            result = Run(chaos, sc, work_dir / sc.name, soak=soak_mode).execute()
            print(
                f"chaos: {sc.name}: {'ok' if result.ok else 'FAILED'} in {result.elapsed_s:.0f}s",
                file=sys.stderr,
            )
            results.append(result)
    finally:
        chaos.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.run", description=__doc__.split("\n")[0])
    parser.add_argument("--scenarios", help="comma-separated names (default: all)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--soak", action="store_true", help="the soak instead of the scenarios")
    parser.add_argument("--minutes", type=float, default=10.0, help="soak duration (default 10)")
    parser.add_argument("--rate", type=float, default=2000.0, help="soak events/s (default 2000)")
    parser.add_argument("--work-dir", type=Path, help="logs and state (default: a new temp dir)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.list:
        for sc in SCENARIOS:
            print(f"{sc.name:28} {'[CI] ' if sc.ci else ''}{sc.summary}")
        return 0
    if args.soak:
        chosen = [soak(args.minutes, args.rate)]
    elif args.scenarios:
        unknown = [n for n in args.scenarios.split(",") if n not in BY_NAME]
        if unknown:
            parser.error(f"unknown scenarios {unknown}; --list shows them")
        chosen = [BY_NAME[n] for n in args.scenarios.split(",")]
    else:
        chosen = list(SCENARIOS)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="capi-chaos-"))
    results = run_scenarios(chosen, work_dir, soak_mode=args.soak)
    print(table(results))
    if args.soak and results:
        print(rss_over_time(results[0]))
    extra = details(results)
    if extra:
        print(extra)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
