from consumer.offsets import OffsetLedger


def test_watermark_waits_for_gaps_and_counts_in_flight() -> None:
    ledger = OffsetLedger()
    key = ("orders", 0)
    tickets = [ledger.track(key, off, 10) for off in (5, 6, 7, 8)]
    assert ledger.events_in_flight == 4 and ledger.bytes_in_flight == 40
    ledger.settle(tickets[1])
    ledger.settle(tickets[3])
    assert list(ledger.take_dirty()) == []  # offset 5 still open: nothing committable
    ledger.settle(tickets[0])
    assert list(ledger.take_dirty()) == [(key, 7)]  # 5 and 6 settled, 7 open
    ledger.settle(tickets[2])
    assert list(ledger.take_dirty()) == [(key, 9)]
    assert ledger.events_in_flight == 0 and ledger.bytes_in_flight == 0
    assert list(ledger.take_dirty()) == []


def test_offsets_with_holes_from_compaction_or_markers() -> None:
    ledger = OffsetLedger()
    key = ("t", 1)
    a = ledger.track(key, 10, 1)
    b = ledger.track(key, 14, 1)  # 11-13 never delivered to us (transaction markers)
    ledger.settle(b)
    ledger.settle(a)
    assert list(ledger.take_dirty()) == [(key, 15)]


def test_settlements_after_revoke_are_ignored() -> None:
    ledger = OffsetLedger()
    key = ("t", 0)
    ledger.assign(key)
    ticket = ledger.track(key, 0, 100)
    ledger.revoke(key)
    assert ledger.events_in_flight == 0 and ledger.bytes_in_flight == 0
    ledger.settle(ticket)
    assert list(ledger.take_dirty()) == []
    assert ledger.events_in_flight == 0
    # Re-assignment starts a fresh ledger; the old ticket cannot move it.
    ledger.assign(key)
    ledger.settle(ticket)
    partition = ledger.get(key)
    assert partition is not None and partition.committable is None
