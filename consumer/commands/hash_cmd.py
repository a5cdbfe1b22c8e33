"""`capi-consumer hash FIELD VALUE`: show how one identifier is normalized and hashed.

A debugging aid for match-quality problems: compare its output with what the site's Pixel or another
sender hashes. Prints the normalized value and its SHA-256 on one line each (exit 0); when the value
would be omitted, prints `omitted: <reason>` on stderr (exit 1). Unhashed fields print the value that
would be sent on one line. Usage errors (unknown field, unknown region) exit 2.
"""

from __future__ import annotations

import argparse
import sys

from consumer.normalize import (
    HASHED_FIELDS,
    MESSAGING_FIELDS,
    UNHASHED_FIELDS,
    Normalizer,
    Omission,
    country_code,
)

EXIT_OK = 0
EXIT_OMITTED = 1
EXIT_USAGE = 2


def main(args: argparse.Namespace) -> int:
    """Run `hash` for parsed `args` (field, value, country, default_phone_region); returns the exit code."""
    field: str = args.field
    if field not in HASHED_FIELDS + UNHASHED_FIELDS + MESSAGING_FIELDS:
        print(
            f"capi-consumer hash: unknown field {field!r}; expected one of: {' '.join(HASHED_FIELDS)} "
            f"(or an unhashed key: {' '.join(UNHASHED_FIELDS)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if args.country is not None and country_code(args.country) is None:
        print("capi-consumer hash: --country is not an ISO 3166-1 code or country name", file=sys.stderr)
        return EXIT_USAGE
    try:
        normalizer = Normalizer(default_phone_region=args.default_phone_region, cache_size=0)
    except ValueError as exc:
        print(f"capi-consumer hash: {exc}", file=sys.stderr)
        return EXIT_USAGE
    result = normalizer.normalize(field, args.value, country_hint=args.country)
    if isinstance(result, Omission):
        print(f"omitted: {result.reason}", file=sys.stderr)
        return EXIT_OMITTED
    print(result.normalized)
    if field in HASHED_FIELDS:
        print(result.value)
    return EXIT_OK
