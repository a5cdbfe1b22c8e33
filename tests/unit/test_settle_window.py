"""The dead-letter guard's sliding window: right counts, and memory bounded by the window."""

from __future__ import annotations

from consumer.dlq import SettleWindow


def test_counts_only_the_last_window() -> None:
    window = SettleWindow(10.0)
    for i in range(100):
        window.add(1000.0 + i * 0.1, failed=i % 4 == 0)  # 10 s: 100 settled, 25 failed
    assert window.counts(1009.9) == (100, 25)
    # At 1015 the first half (t < 1005) has left the window (buckets are whole seconds).
    settled, failed = window.counts(1015.0)
    assert settled == 50
    assert failed == 12
    assert window.counts(2000.0) == (0, 0)


def test_buckets_do_not_grow_with_the_record_rate() -> None:
    window = SettleWindow(60.0)
    for i in range(1_000_000):
        window.add(i / 5000, failed=False)  # 200 s at 5,000 records/s, nothing failing
    assert len(window._buckets) <= 62
    assert window.counts(200.0)[0] == 60 * 5000


def test_a_count_settles_like_that_many_records() -> None:
    # A request's accepted events settle together (consumer.pipeline._settle_accepted).
    one_by_one, together = SettleWindow(10.0), SettleWindow(10.0)
    for second, failed, n in [
        (1000.2, False, 1000),
        (1000.7, True, 3),
        (1004.0, False, 250),
        (1012.5, False, 7),
    ]:
        for _ in range(n):
            one_by_one.add(second, failed)
        together.add(second, failed, n)
        assert together.counts(second) == one_by_one.counts(second)
    assert together.counts(1012.5) == (257, 0)
