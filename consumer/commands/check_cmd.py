"""`capi-consumer check`: send one test event to each chosen pixel and say what Meta answered.

`--tenant ID` (repeatable), `--destination NAME` (repeatable) or `--all` (every fixed destination and
every tenant of the registry). One line per client on stdout, or a JSON array with `--json`.
Exit codes: 0 every connection works, 1 at least one does not, 2 bad configuration or selection.
See consumer.check for the test event (never a conversion).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import orjson

from consumer import logs
from consumer.config import ConfigError, load_config

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def main(args: argparse.Namespace) -> int:
    logs.setup(os.environ.get("CAPI_LOG_LEVEL", "WARNING"))
    from consumer.app import build_client, build_destinations, build_tenants
    from consumer.check import CheckResult, check_destination
    from consumer.deliver import Destination
    from consumer.route import Router, Unroutable

    if not (args.tenant or args.destination or args.all):
        print("capi-consumer check: name --tenant, --destination or --all", file=sys.stderr)
        return EXIT_USAGE
    try:
        config = load_config(args.config, resolve_secrets=False)
        wants_fixed = bool(args.destination) or (args.all and bool(config.destinations))
        if wants_fixed:
            config = load_config(args.config)
        unknown = [d for d in args.destination if d not in config.destinations]
        if unknown:
            known = ", ".join(sorted(config.destinations)) or "none"
            raise ConfigError([f"--destination: unknown {', '.join(unknown)} (known: {known})"], args.config)
        if args.tenant and config.platform.tenants is None:
            raise ConfigError(["--tenant: no platform.tenants registry is configured"], args.config)
        tenants = build_tenants(config, None)
        if tenants is not None and (args.tenant or args.all):
            sources = config.platform.tenants
            assert sources is not None
            tenants.load(sources.load_timeout_s)
    except (ConfigError, ValueError) as exc:
        print(f"capi-consumer: configuration error\n{exc}", file=sys.stderr)
        return EXIT_USAGE

    fixed = build_destinations(config) if wants_fixed else {}
    registry = tenants.registry if tenants is not None else None
    router = Router(fixed, registry, partner_agent=config.platform.partner_agent, park_tenants=False)
    targets: list[tuple[str, Destination | CheckResult]] = []
    names = sorted(fixed) if args.all else list(args.destination)
    targets += [(name, fixed[name]) for name in names]
    tenant_ids = list(args.tenant)
    if args.all and registry is not None:
        tenant_ids = sorted(set(tenant_ids) | set(registry.tenant_ids()))
    for tenant_id in tenant_ids:
        resolved = router.resolve("tenant:" + tenant_id)
        if isinstance(resolved, Unroutable):
            state = registry.resolve(tenant_id).state if registry is not None else "unknown"
            verdict = {"unknown": "unknown_tenant", "invalid": "invalid_entry"}.get(state, state)
            pixel = registry.resolve(tenant_id).entry if registry is not None else None
            targets.append(
                (
                    tenant_id,
                    CheckResult(tenant_id, pixel.pixel_id if pixel else None, verdict, resolved.detail),
                )
            )
        else:
            targets.append((tenant_id, resolved))

    async def run_all() -> list[CheckResult]:
        async with build_client(config) as client:

            async def one(name: str, target: Destination | CheckResult) -> CheckResult:
                if isinstance(target, CheckResult):
                    return target
                return await check_destination(client, target, name, test_event_code=args.test_event_code)

            return list(await asyncio.gather(*(one(n, t) for n, t in targets)))

    results = asyncio.run(run_all())
    if tenants is not None:
        tenants.close()
    if args.json:
        print(orjson.dumps([r.to_json() for r in results], option=orjson.OPT_INDENT_2).decode())
    else:
        for result in results:
            print(result.line())
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} ok, {failed} failed", file=sys.stderr)
    return EXIT_OK if failed == 0 else EXIT_FAILED
