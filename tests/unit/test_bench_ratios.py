"""The benchmark's verdicts: (a) and (c) run twice each (bench/run.py, REPEATED_CEILING and
REPEATED_CONSUMER), and a ratio between them is taken between the means of their runs, with the range
over the pairs of runs shown."""

from __future__ import annotations

from bench.run import REPEATED_CEILING, REPEATED_CONSUMER, Result, _selected, ratios


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


def test_the_ceiling_and_the_consumer_are_repeated_only_when_both_a_and_c_run() -> None:
    for repeat in (REPEATED_CEILING, REPEATED_CONSUMER):
        assert _selected(repeat, "abcdefgh") and _selected(repeat, "ac")
        assert not _selected(repeat, "a") and not _selected(repeat, "cdh")
    assert _selected("a", "ac") and not _selected("b", "ac")


def test_both_sides_are_the_means_of_their_runs() -> None:
    results = {
        "a": _run("a", 25_000, 8.0),  # 40 µs per record
        "c": _run("c", 9_000, 20.6),  # 103 µs per event
        REPEATED_CEILING: _run(REPEATED_CEILING, 20_000, 10.0),  # 50 µs
        REPEATED_CONSUMER: _run(REPEATED_CONSUMER, 11_000, 17.4),  # 87 µs
        "d": _run("d", 9_500, 19.0),
    }
    rows = ratios(results)
    cpu = _row(rows, "(c) worker CPU per event")
    # mean(103, 87) / mean(40, 50) = 95 / 45 = 2.11; the pairs of runs give 1.74-2.58.
    assert cpu["ratio"] == "95 (87-103) / 45 (40-50) µs = 2.11 (1.74-2.58)"
    assert cpu["pass"] is True
    speed = _row(rows, "(c) >= 0.45 x (a)")
    assert speed["ratio"] == "0.44 (0.36-0.55)"  # mean(9,000, 11,000) / mean(25,000, 20,000)
    assert speed["pass"] is False
    # Ratios to (c) are taken against the mean of its runs too: 9,500 / 10,000.
    assert _row(rows, "(d) >= 0.9 x (c)")["ratio"] == "0.95 (0.86-1.06)"
    assert _row(rows, "peak RSS of (c)")["ratio"] is None  # no RSS sampled in these results
