"""Platform mode over the in-memory edges (tests/fakes.py): routing by tenant, unknown and disabled
tenants, parking a refused tenant while the others flow, releasing it when its token is replaced,
probes, and events that expire while parked."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_devstack.samples import order
from consumer.deliver import Destination
from consumer.dlq import decode_headers
from consumer.errors import TENANT_DISABLED, UNKNOWN_TENANT
from consumer.validate import EVENT_TOO_OLD
from tests.fakes import Harness, graph_error

TOPIC = "shop-orders"
PARKED = ("shop-orders.parked", 0)
NOW_MS = int(time.time() * 1000)
DAY_S = 86_400


def tenants(*ids: str, **extra: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t: {"pixel_id": str(9000 + i), **extra.get(t, {})} for i, t in enumerate(ids)}


def shop_orders(
    h: Harness, shops: list[str], *, start: int = 0, now_ms: int = NOW_MS
) -> dict[str, list[str]]:
    """One order per entry of `shops` (its shop_id); returns shop -> order ids."""
    rng = random.Random(start)
    by_shop: dict[str, list[str]] = {}
    records = []
    for i, shop in enumerate(shops):
        record = order(start + i, now_ms=now_ms, rng=rng)
        record["shop_id"] = shop
        records.append(record)
        by_shop.setdefault(shop, []).append(record["order_id"])
    h.produce(TOPIC, records)
    return by_shop


def refuse_token(token: str, code: int = 190, subcode: int | None = 463) -> Any:
    def rule(dest: Destination, events: list[dict[str, Any]]) -> Any:
        return graph_error(code, subcode) if dest.token == token else None

    return rule


def run(test: Any) -> None:
    asyncio.run(asyncio.wait_for(test(), timeout=60))


def test_each_event_goes_to_its_tenants_pixel_with_its_token(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness.build_platform(
            tmp_path,
            tenants("a", "b", "off", b={"test_event_code": "TEST42"}, off={"enabled": False}),
            {"a": "tok-a", "b": "tok-b", "off": "tok-off"},
        )
        seen: list[tuple[str, str, str, str | None, str | None]] = []

        def record(dest: Destination, events: list[dict[str, Any]]) -> None:
            seen.append((dest.name, dest.pixel_id, dest.token, dest.test_event_code, dest.partner_agent))

        h.graph.rules.append(record)
        by_shop = shop_orders(h, ["a", "b", "a", "ghost", "off", "b"])
        await h.run_until(
            lambda: len(h.graph.accepted["tenant:a"]) == 2 and len(h.graph.accepted["tenant:b"]) == 2
        )
        assert sorted(h.graph.accepted["tenant:a"]) == sorted(by_shop["a"])
        assert set(seen) == {
            ("tenant:a", "9000", "tok-a", None, "plshop-2.0-1.1"),
            ("tenant:b", "9001", "tok-b", "TEST42", "plshop-2.0-1.1"),
        }
        # The unknown tenant's event is dead-lettered (replay sends it once the tenant exists) ...
        copies = h.dlq.copies(TOPIC + ".dlq")
        assert [decode_headers(c.headers)["reason"] for c in copies] == [UNKNOWN_TENANT]
        assert decode_headers(copies[0].headers)["stage"] == "route"
        assert "ghost" in decode_headers(copies[0].headers)["error.message"]
        # ... the disabled one's is filtered; everything is committed.
        assert h.pipeline.stats.filtered[TENANT_DISABLED] == 1
        assert h.committed() == {(TOPIC, 0): 6}
        # Metrics aggregate tenants: one `pixel` label for all of them, tenants counted by state.
        assert h.metric("capi_events_accepted_total", pixel="tenants", event_name="Purchase") == 4
        assert h.metric("capi_tenants", state="ok") == 2 and h.metric("capi_tenants", state="disabled") == 1
        status = {t["tenant"]: t for t in h.pipeline.tenant_status()["tenants"]}
        assert status["ghost"]["state"] == "unknown" and status["off"]["state"] == "disabled"
        assert status["a"]["last_success"] is not None

    run(scenario)


def test_unknown_tenants_can_be_filtered_instead(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness.build_platform(tmp_path, tenants("a"), {"a": "tok-a"}, unknown_tenant="filter")
        shop_orders(h, ["ghost", "a"])
        await h.run_until(lambda: len(h.graph.accepted["tenant:a"]) == 1)
        assert h.pipeline.stats.filtered[UNKNOWN_TENANT] == 1 and not h.dlq.copies(TOPIC + ".dlq")

    run(scenario)


def test_a_refused_tenant_waits_in_the_parked_topic_while_the_others_flow(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness.build_platform(
            tmp_path, tenants("a", "b", "c"), {"a": "tok-a", "b": "old-b", "c": "tok-c"}
        )
        h.graph.rules.append(refuse_token("old-b"))
        shops = ["a", "b", "c"] * 10
        by_shop = shop_orders(h, shops)
        h.start()
        await h.until(
            lambda: (
                len(h.graph.accepted["tenant:a"]) == 10
                and len(h.graph.accepted["tenant:c"]) == 10
                and h.committed().get((TOPIC, 0)) == 30
            )
        )
        # One client's token is no reason to take the pod out of service.
        assert h.pipeline.readiness() == (True, "ok")
        await h.stop()
        # b's ten events wait, durably, in the parked topic; the source partition is committed.
        parked = h.broker.log[PARKED]
        assert sorted(c.key.decode() for c in parked if c.key) == sorted(by_shop["b"])
        assert {decode_headers(c.headers)["reason"] for c in parked} == {"tenant_parked"}
        assert not h.graph.accepted["tenant:b"] and not h.dlq.copies(TOPIC + ".dlq")
        status = {t["tenant"]: t for t in h.pipeline.tenant_status()["tenants"]}
        assert status["b"]["state"] == "parked" and status["b"]["events_waiting"] == 10
        assert "190" in status["b"]["last_error"]
        # At most one request was refused per batch in flight when b was parked: the rest waited
        # without a request.
        refused = [ids for name, ids in h.graph.requests if name == "tenant:b"]
        assert sum(len(ids) for ids in refused) <= 10

    run(scenario)


def test_replacing_a_parked_tenants_token_releases_its_events(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness.build_platform(tmp_path, tenants("a", "b"), {"a": "tok-a", "b": "old-b"})
        h.graph.rules.append(refuse_token("old-b"))
        by_shop = shop_orders(h, ["a", "b"] * 5)
        h.start()
        await h.until(lambda: len(h.broker.log[PARKED]) == 5 and len(h.graph.accepted["tenant:a"]) == 5)
        more = shop_orders(h, ["b", "a"], start=100)  # b is parked: held without a request
        await h.until(lambda: len(h.broker.log[PARKED]) == 6)
        requests_before = len(h.graph.requests)
        h.write_token("b", "new-b")  # the operator rotates the secret: no restart
        await h.until(lambda: len(h.graph.accepted["tenant:b"]) == 6)
        await h.until(lambda: h.committed().get(PARKED) == 6)
        await h.stop()
        assert sorted(h.graph.accepted["tenant:b"]) == sorted(by_shop["b"] + more["b"])
        assert len(h.graph.requests) > requests_before
        assert not h.pipeline.p.parking.lot.parked  # type: ignore[union-attr]
        assert not h.dlq.copies(TOPIC + ".dlq")
        status = {t["tenant"]: t for t in h.pipeline.tenant_status()["tenants"]}
        assert status["b"]["state"] == "ok" and status["b"]["events_waiting"] == 0

    run(scenario)


def test_a_probe_meta_still_refuses_parks_the_events_again_and_waits_longer(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness.build_platform(tmp_path, tenants("b"), {"b": "old-b"})
        h.graph.rules.append(refuse_token("old-b"))
        shop_orders(h, ["b"] * 4)
        h.start()
        await h.until(lambda: len(h.broker.log[PARKED]) == 4)
        lot = h.pipeline.p.parking.lot  # type: ignore[union-attr]
        first_backoff = lot.parked["b"].backoff_s
        h.clock.now += first_backoff + 1  # the probe is due
        await h.until(lambda: len(h.broker.log[PARKED]) == 8)  # read back, refused, parked again
        await h.until(lambda: h.committed().get(PARKED) == 4)
        await h.turns()
        assert lot.parked["b"].backoff_s == 2 * first_backoff
        assert lot.parked["b"].next_probe_at > h.clock.now
        await h.turns(5)
        assert len(h.broker.log[PARKED]) == 8  # nothing more until the next probe is due
        copies = [decode_headers(c.headers) for c in h.broker.log[PARKED][4:]]
        assert {c["attempts"] for c in copies} == {"2"} and {c["origin.topic"] for c in copies} == {TOPIC}
        # Meta accepts the token again at the next probe: the copies parked by the first pass go out.
        h.graph.rules.clear()
        h.clock.now += lot.parked["b"].backoff_s + 1
        await h.until(lambda: len(h.graph.accepted["tenant:b"]) == 4)
        await h.until(lambda: h.committed().get(PARKED) == 8)
        await h.stop()
        assert sorted(h.graph.accepted["tenant:b"]) == sorted(
            c.key.decode() for c in h.broker.log[PARKED][:4] if c.key
        )

    run(scenario)


def test_events_that_pass_metas_window_while_parked_are_dead_lettered(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness.build_platform(tmp_path, tenants("b"), {"b": "old-b"})
        h.graph.rules.append(refuse_token("old-b"))
        shop_orders(h, ["b"] * 3)
        h.start()
        await h.until(lambda: len(h.broker.log[PARKED]) == 3)
        h.clock.now += 8 * DAY_S  # a week later: the probe is due, the events are too old
        await h.until(lambda: len(h.dlq.copies(TOPIC + ".dlq")) == 3)
        await h.until(lambda: h.committed().get(PARKED) == 3)
        await h.stop()
        assert set(h.dlq.reasons(TOPIC + ".dlq")) == {EVENT_TOO_OLD}

    run(scenario)


def test_a_tenant_added_to_the_file_receives_events_and_a_removed_one_stops(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness.build_platform(tmp_path, tenants("a"), {"a": "tok-a", "new": "tok-new"})
        h.start()
        shop_orders(h, ["new"])
        await h.until(lambda: len(h.dlq.copies(TOPIC + ".dlq")) == 1)  # not known yet
        h.tenants_file.write_text(yaml.safe_dump({"new": {"pixel_id": "777"}}))  # 'a' removed, 'new' added
        await h.turns(3)
        later = shop_orders(h, ["new", "a"], start=10)
        await h.until(lambda: len(h.graph.accepted["tenant:new"]) == 1)
        await h.until(lambda: len(h.dlq.copies(TOPIC + ".dlq")) == 2)
        await h.stop()
        assert h.graph.accepted["tenant:new"] == later["new"]
        assert h.dlq.reasons(TOPIC + ".dlq") == [UNKNOWN_TENANT, UNKNOWN_TENANT]

    run(scenario)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"pixel_id": "1", "access_token": "EAAB-secret"}, "plaintext token refused"),
        ({"pixel_id": "1", "token_file": "../etc/passwd"}, "secrets directory"),
        ({"pixel_id": "not-a-pixel"}, "pixel_id"),
    ],
)
def test_a_refused_entry_is_reported_and_its_events_are_not_sent(
    tmp_path: Path, entry: dict[str, Any], problem: str
) -> None:
    async def scenario() -> None:
        h = Harness.build_platform(tmp_path, {"a": {"pixel_id": "1"}, "bad": entry}, {"a": "t", "bad": "t2"})
        shop_orders(h, ["bad", "a"])
        await h.run_until(
            lambda: len(h.graph.accepted["tenant:a"]) == 1 and len(h.dlq.copies(TOPIC + ".dlq")) == 1
        )
        status = {t["tenant"]: t for t in h.pipeline.tenant_status()["tenants"]}
        assert status["bad"]["state"] == "invalid" and problem in status["bad"]["problem"]
        assert "EAAB-secret" not in str(h.pipeline.tenant_status())
        assert not h.graph.accepted["tenant:bad"]

    run(scenario)
