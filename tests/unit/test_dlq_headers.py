from consumer.dlq import HEADER_PREFIX, decode_headers, dlq_headers
from consumer.errors import ErrorClass, Failure, Stage
from consumer.source import Origin


def test_context_headers_and_replay_keeps_first_origin() -> None:
    origin = Origin("orders", 3, 42, 1700000000000, b"k", b"v", [("trace", b"abc")])
    failure = Failure(
        Stage.DELIVER,
        "graph_rejected_event",
        ErrorClass.PERMANENT,
        "graph error code=100",
        graph_code=100,
        graph_subcode=2804019,
        fbtrace_id="AbC",
    )
    first = dlq_headers(origin, failure, group_id="g1", requests=2, now_ms=1700000001000)
    assert ("trace", b"abc") in first
    ctx = decode_headers(first)
    assert ctx["origin.topic"] == "orders" and ctx["origin.partition"] == "3" and ctx["origin.offset"] == "42"
    assert ctx["stage"] == "deliver" and ctx["reason"] == "graph_rejected_event"
    assert (
        ctx["graph.code"] == "100" and ctx["graph.subcode"] == "2804019" and ctx["graph.fbtrace_id"] == "AbC"
    )
    assert (
        ctx["attempts"] == "1"
        and ctx["delivery.requests"] == "2"
        and ctx["first.failure.time"] == "1700000001000"
    )
    assert ctx["consumer.group"] == "g1"

    # Replayed from orders.dlq and failing again: origin and first failure stay, attempts grow.
    replayed = Origin("orders.dlq", 0, 7, 1700000000000, b"k", b"v", first)
    again = dlq_headers(replayed, failure, group_id="replay", requests=1, now_ms=1800000000000)
    ctx2 = decode_headers(again)
    assert ctx2["origin.topic"] == "orders" and ctx2["origin.offset"] == "42"
    assert (
        ctx2["attempts"] == "2"
        and ctx2["delivery.requests"] == "1"
        and ctx2["first.failure.time"] == "1700000001000"
    )
    assert sum(1 for k, _ in again if k == HEADER_PREFIX + "reason") == 1
    # A record that never reached Meta (undecodable) carries no request count.
    undecodable = decode_headers(dlq_headers(origin, failure, group_id="g1", requests=0, now_ms=1))
    assert undecodable["attempts"] == "1" and "delivery.requests" not in undecodable
    assert ("trace", b"abc") in again
