"""The benchmark's verdicts: ratios to the decode ceiling are taken against the mean of its two runs
(bench/run.py, REPEATED_CEILING), with the range of the two shown."""

from __future__ import annotations

from bench.run import REPEATED_CEILING, Result, _selected, ratios


def _run(key: str, events_per_s: float, cpu_s: float, events: int = 200_000) -> Result:
    return Result(key, key, events, seconds=events / events_per_s, events_per_s=events_per_s, cpu_s=[cpu_s])


def _row(rows: list[dict[str, object]], start: str) -> dict[str, object]:
    return next(r for r in rows if str(r["target"]).startswith(start))


def test_the_verdict_uses_the_mean_of_both_ceiling_runs_and_shows_their_range() -> None:
    results = {
        "a": _run("a", 25_000, 8.0),  # 40 µs per record
        REPEATED_CEILING: _run(REPEATED_CEILING, 19_000, 10.4),  # 52 µs
        "c": _run("c", 9_500, 20.0),  # 100 µs
    }
    rows = ratios(results)
    cpu = _row(rows, "(c) worker CPU per event")
    # 100 / mean(40, 52) = 2.17: met, although against the faster run alone it would not be (2.50).
    assert cpu["ratio"] == "100 / 46 (40-52) µs = 2.17 (1.92-2.50)"
    assert cpu["pass"] is True
    speed = _row(rows, "(c) >= 0.45 x (a)")
    assert speed["ratio"] == "0.43 (0.38-0.50)"  # 9,500 / 22,000
    assert speed["pass"] is False


def test_with_one_ceiling_run_the_ratio_is_against_it_alone() -> None:
    rows = ratios({"a": _run("a", 25_000, 8.0), "c": _run("c", 12_000, 17.0)})
    assert _row(rows, "(c) worker CPU per event")["ratio"] == "85 / 40 µs = 2.12"
    assert _row(rows, "(c) >= 0.45 x (a)")["ratio"] == 0.48


def test_a_failed_repeat_is_left_out() -> None:
    failed = Result(REPEATED_CEILING, "x", 200_000, error="exited early")
    rows = ratios({"a": _run("a", 25_000, 8.0), REPEATED_CEILING: failed, "c": _run("c", 12_000, 17.0)})
    assert _row(rows, "(c) worker CPU per event")["ratio"] == "85 / 40 µs = 2.12"


def test_the_ceiling_is_repeated_only_when_both_a_and_c_run() -> None:
    assert _selected(REPEATED_CEILING, "abcdefgh") and _selected(REPEATED_CEILING, "ac")
    assert not _selected(REPEATED_CEILING, "a") and not _selected(REPEATED_CEILING, "cdh")
    assert _selected("a", "ac") and not _selected("b", "ac")
