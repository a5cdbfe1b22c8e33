"""Scenario (a), the decode ceiling: a confluent-kafka consumer that only decodes the Avro and drops it.

Nothing a forwarder can do is faster than reading and decoding the records, so this bounds every
other scenario on the same machine. Offsets are stored once a poll's records are decoded and
auto-committed every 200 ms (like the capi-consumer scenarios), so "last offset committed" is
measured the same way for every scenario.

    python -m bench.decode_ceiling --bootstrap HOST:PORT --registry URL --group G --topics t1,t2
"""

from __future__ import annotations

import argparse
import sys

from confluent_kafka import Consumer, TopicPartition

from bench.worker_common import AnnounceAssignment, StopFlag, WireDecoder, records

COMMIT_INTERVAL_MS = 200


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated")
    args = parser.parse_args(argv)

    stop = StopFlag()
    decoder = WireDecoder(args.registry)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": True,
            "enable.auto.offset.store": False,
            "auto.commit.interval.ms": COMMIT_INTERVAL_MS,
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    consumer.subscribe(args.topics.split(","), on_assign=AnnounceAssignment())
    decoded = 0
    try:
        while not stop.stopped:
            done: dict[tuple[str, int], int] = {}
            for msg in records(consumer.consume(num_messages=1000, timeout=0.1)):
                value = msg.value()
                if value is not None:
                    decoder.decode(value)
                    decoded += 1
                done[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
            if done:
                consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in done.items()])
    finally:
        consumer.close()  # commits the stored offsets
    return 0


if __name__ == "__main__":
    sys.exit(main())
