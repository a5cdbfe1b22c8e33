"""`capi-consumer map`: dry run of one topic's mapping, with no Kafka, no registry and no network.

Reads records as JSON lines on stdin (shaped like the topic's Avro record; see
`consumer.avro_json.record_from_json` for timestamps, decimals and dates), writes each server event
that would be sent as one JSON line on stdout, and one JSON line per record that would not be sent on
stderr: `{"line": N, "result": "filtered"|"rejected", "stage": ..., "reason": ..., "detail": ...}`.
Events are validated against the current time, exactly as the consumer would.

Secrets are not resolved (a dry run sends nothing), so the access-token variables need not be set.
Exit codes: 0 every record was mapped or filtered, 1 at least one line was rejected or unreadable,
2 the configuration (or a mapping) is invalid or the topic is not configured.
"""

from __future__ import annotations

import argparse
import sys
from typing import IO, Any

import orjson

from consumer.avro_json import AvroJsonError, SchemaIndex
from consumer.config import ConfigError, load_config
from consumer.mapping import Filtered, Mapped, Mapper

EXIT_OK = 0
EXIT_REJECTED = 1
EXIT_CONFIG = 2


def main(args: argparse.Namespace) -> int:
    """Run the dry run for `args.config` / `args.topic` over stdin; returns the exit code."""
    return run(args.config, args.topic, sys.stdin, sys.stdout, sys.stderr)


def run(config_path: str, topic: str, stdin: IO[str], stdout: IO[str], stderr: IO[str]) -> int:
    """The command with its streams injectable (tests); see the module docstring for the formats."""
    try:
        config = load_config(config_path, resolve_secrets=False)
        if topic not in config.topics:
            known = ", ".join(sorted(config.topics))
            raise ConfigError([f"--topic: '{topic}' is not configured (topics: {known})"], config_path)
        mapper = Mapper.from_config(config)
    except ConfigError as exc:
        print(exc, file=stderr)
        return EXIT_CONFIG
    index = SchemaIndex(config.reader_schema(topic))

    code = EXIT_OK
    for number, line in enumerate(stdin, start=1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
            if not isinstance(obj, dict):
                raise AvroJsonError("$", "expected a JSON object")
            record = index.from_json(obj)
        except orjson.JSONDecodeError as exc:
            _report(stderr, number, "rejected", "input", "invalid_json", str(exc))
            code = EXIT_REJECTED
            continue
        except AvroJsonError as exc:
            _report(stderr, number, "rejected", "input", "invalid_record", str(exc))
            code = EXIT_REJECTED
            continue
        result = mapper.map(topic, record)
        if isinstance(result, Mapped):
            stdout.write(orjson.dumps(result.event).decode() + "\n")
        elif isinstance(result, Filtered):
            _report(stderr, number, "filtered", None, result.reason, result.detail)
        else:
            _report(stderr, number, "rejected", result.stage, result.reason, result.detail)
            code = EXIT_REJECTED
    stdout.flush()
    return code


def _report(stream: IO[str], line: int, result: str, stage: str | None, reason: str, detail: str) -> None:
    entry: dict[str, Any] = {"line": line, "result": result}
    if stage is not None:
        entry["stage"] = stage
    entry.update(reason=reason, detail=detail)
    stream.write(orjson.dumps(entry).decode() + "\n")
