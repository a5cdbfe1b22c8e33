"""`capi-consumer replay`: send dead-lettered records again (see consumer.replay)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys

from consumer import logs
from consumer.config import ConfigError, load_config
from consumer.memory import limit_malloc_arenas, tune_gc


def main(args: argparse.Namespace) -> int:
    limit_malloc_arenas()  # before the Kafka clients start their threads
    logs.setup(os.environ.get("CAPI_LOG_LEVEL", "WARNING"))
    from consumer.app import Service, build_decoder
    from consumer.mapping import Mapper
    from consumer.replay import (
        ReplayFilter,
        ReplayPolicy,
        dlq_topics,
        dry_run,
        move_replay_group,
        parse_time,
        replay_ends,
    )

    try:
        config = load_config(args.config, resolve_secrets=not args.dry_run)
        mapper = Mapper.from_config(config)
        flt = ReplayFilter(parse_time(args.since), parse_time(args.until), args.reason)
    except ConfigError as exc:
        print(f"capi-consumer: configuration error\n{exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"capi-consumer replay: {exc}", file=sys.stderr)
        return 2
    topics = dlq_topics(config, args.dlq_topic)
    ends = replay_ends(config, topics, from_beginning=args.from_beginning)
    if args.dry_run:
        preview = dry_run(config, mapper, build_decoder(config), ends, flt)
        print(
            f"dry run: would send {sum(preview.would_send.values())} {dict(preview.would_send)}, "
            f"expired {preview.expired}, would fail again {sum(preview.failed.values())} "
            f"{dict(preview.failed)}, filtered out {sum(preview.filtered.values())}; "
            "nothing sent, nothing committed",
            file=sys.stderr,
        )
        return 0 if not preview.failed else 1
    if args.from_beginning:
        move_replay_group(config, ends)
    service = Service(config, mapper, replay=ReplayPolicy(config, ends, flt))

    async def run() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return await service.run(stop)

    tune_gc()
    code = asyncio.run(run())
    stats = service.pipeline.stats
    print(
        f"replay of {', '.join(topics)}: replayed {sum(stats.accepted.values())} {dict(stats.accepted)}, "
        f"expired {sum(stats.skipped.values())}, failed again {stats.failed} {dict(stats.dead_lettered)}, "
        f"filtered out {sum(stats.filtered.values())} {dict(stats.filtered)}",
        file=sys.stderr,
    )
    return 0 if code == 0 and stats.failed == 0 else 1
