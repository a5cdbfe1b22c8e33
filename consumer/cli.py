"""`capi-consumer` command line: parses arguments and dispatches to consumer.commands.*."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="capi-consumer",
        description="Forward order and subscription events from Kafka to Meta's Conversions API.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="consume, map and deliver events until SIGTERM/SIGINT")
    run.add_argument("--config", required=True, help="YAML configuration file")

    mapp = sub.add_parser(
        "map",
        help="dry run: read records as JSON lines on stdin, print the server events that would be sent",
    )
    mapp.add_argument("--config", required=True, help="YAML configuration file")
    mapp.add_argument("--topic", required=True, help="source topic whose mapping to apply")

    hsh = sub.add_parser("hash", help="print a customer identifier normalized and SHA-256-hashed")
    hsh.add_argument("field", help="user_data key: em ph fn ln ge db ct st zp country external_id")
    hsh.add_argument("value", help="the raw value")
    hsh.add_argument("--country", default=None, help="country hint (ISO code or name) for ph/st/zp")
    hsh.add_argument("--default-phone-region", default=None, help="region for national phone numbers")

    rep = sub.add_parser("replay", help="re-send records from a dead-letter topic")
    rep.add_argument("--config", required=True, help="YAML configuration file")
    rep.add_argument("--dlq-topic", default=None, help="dead-letter topic (default: every configured one)")
    rep.add_argument(
        "--since", default=None, help="only records dead-lettered at or after (ISO-8601 or epoch ms)"
    )
    rep.add_argument("--until", default=None, help="only records dead-lettered before (ISO-8601 or epoch ms)")
    rep.add_argument("--reason", default=None, help="only records with this reason code")
    rep.add_argument("--dry-run", action="store_true", help="print what would be sent; commit nothing")
    rep.add_argument(
        "--from-beginning",
        action="store_true",
        help="start from the oldest record, not where the last replay ended",
    )
    chk = sub.add_parser(
        "check",
        help="send a test event to each chosen pixel (tenants, destinations) and report Meta's answer",
    )
    chk.add_argument("--config", required=True, help="YAML configuration file")
    chk.add_argument("--tenant", action="append", default=[], help="a tenant id of the registry (repeatable)")
    chk.add_argument(
        "--destination", action="append", default=[], help="a configured destination (repeatable)"
    )
    chk.add_argument("--all", action="store_true", help="every destination and every tenant of the registry")
    chk.add_argument("--test-event-code", default=None, help="Test Events code (default: each tenant's own)")
    chk.add_argument("--json", action="store_true", help="a JSON array instead of one line per client")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(f"consumer.commands.{args.command}_cmd")
    code: int = module.main(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
