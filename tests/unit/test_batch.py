from consumer.batch import Batcher, PendingEvent
from consumer.offsets import OffsetLedger
from consumer.source import Origin


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _event(ledger: OffsetLedger, offset: int, size: int = 100) -> PendingEvent:
    ticket = ledger.track(("t", 0), offset, 1)
    return PendingEvent(
        body=b"x" * size,
        event_name="Purchase",
        event_time=0,
        action_source="system_generated",
        ticket=ticket,
        origin=Origin("t", 0, offset, None, None, None, None),
    )


def test_flush_on_count_per_destination() -> None:
    ledger = OffsetLedger()
    batcher = Batcher(max_events=3, max_bytes=10**6, linger_s=1.0, clock=FakeClock())
    assert batcher.add("a", _event(ledger, 0)) == []
    assert batcher.add("b", _event(ledger, 1)) == []
    assert batcher.add("a", _event(ledger, 2)) == []
    ready = batcher.add("a", _event(ledger, 3))
    assert [(b.destination, len(b.events)) for b in ready] == [("a", 3)]
    assert batcher.open_events == 1


def test_flush_on_bytes_keeps_request_under_cap() -> None:
    ledger = OffsetLedger()
    batcher = Batcher(max_events=1000, max_bytes=512 + 3 * 101 + 50, linger_s=1.0, clock=FakeClock())
    for off in range(3):
        assert batcher.add("a", _event(ledger, off)) == []
    ready = batcher.add("a", _event(ledger, 3))
    assert len(ready) == 1 and len(ready[0].events) == 3
    assert ready[0].size <= batcher.max_bytes


def test_linger_flushes_old_batches_only() -> None:
    clock = FakeClock()
    ledger = OffsetLedger()
    batcher = Batcher(max_events=1000, max_bytes=10**6, linger_s=0.2, clock=clock)
    batcher.add("a", _event(ledger, 0))
    clock.now += 0.1
    batcher.add("b", _event(ledger, 1))
    clock.now += 0.15
    assert [b.destination for b in batcher.due()] == ["a"]
    clock.now += 0.1
    assert [b.destination for b in batcher.due()] == ["b"]
    assert batcher.drain() == []


def test_more_than_1000_events_per_request_is_refused() -> None:
    try:
        Batcher(max_events=1001, max_bytes=10**6, linger_s=0.2, clock=FakeClock())
    except ValueError as exc:
        assert "1000" in str(exc)
    else:
        raise AssertionError("max_events=1001 accepted")


def test_tenant_batches_linger_longer_and_each_lane_flushes_in_opening_order() -> None:
    clock = FakeClock()
    ledger = OffsetLedger()
    batcher = Batcher(max_events=1000, max_bytes=10**6, linger_s=0.2, clock=clock, tenant_linger_s=1.0)
    batcher.add("tenant:a", _event(ledger, 0))
    batcher.add("main", _event(ledger, 1))
    clock.now += 0.1
    batcher.add("tenant:b", _event(ledger, 2))
    batcher.add("main", _event(ledger, 3))
    assert batcher.open_events == 4
    clock.now += 0.15  # main is due (0.25 s), the tenants are not
    assert [b.destination for b in batcher.due()] == ["main"]
    assert batcher.open_events == 2
    clock.now += 0.8  # 1.05 s: tenant:a is due, tenant:b (0.95 s) is not
    assert [b.destination for b in batcher.due()] == ["tenant:a"]
    clock.now += 0.1
    assert [b.destination for b in batcher.due()] == ["tenant:b"]
    assert batcher.open_events == 0 and batcher.drain() == []


def test_tenant_batches_wait_the_catch_up_linger_while_catching_up() -> None:
    clock = FakeClock()
    ledger = OffsetLedger()
    batcher = Batcher(
        max_events=1000,
        max_bytes=10**6,
        linger_s=0.2,
        clock=clock,
        tenant_linger_s=1.0,
        tenant_catch_up_linger_s=5.0,
    )
    batcher.catching_up = True
    batcher.add("tenant:a", _event(ledger, 0))
    batcher.add("main", _event(ledger, 1))
    clock.now += 1.5
    assert [b.destination for b in batcher.due()] == ["main"]  # fixed destinations keep theirs
    clock.now += 3.6  # 5.1 s
    assert [b.destination for b in batcher.due()] == ["tenant:a"]
    batcher.add("tenant:b", _event(ledger, 2))
    batcher.catching_up = False  # live again: the usual linger
    clock.now += 1.1
    assert [b.destination for b in batcher.due()] == ["tenant:b"]
