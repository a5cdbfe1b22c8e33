"""The fault scenarios of issue 16: what each does to the stack, a link or the consumer; what it expects.

A scenario produces `events` unique orders at `rate` events/s (a few undecodable `poison-*` records
among them, which must be dead-lettered) to a fresh topic, runs its fault function while they flow, heals,
and waits until the group has committed everything. The harness (`tests.chaos.harness`) checks the common
invariants; `expect_no_duplicates` and `check` add the scenario's own.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fastavro
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType
from confluent_kafka.schema_registry import Schema

from bench.workload import ORDER_SCHEMA_PATH
from tests.chaos.harness import CAPI_PROXY, KAFKA_PROXY, LEAVE_TIMEOUT_S, POISON_PREFIX, Run
from tests.integration.pipeline_helpers import registry_client

Step = Callable[[Run], None]


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    fault: Step
    events: int = 4000
    rate: float = 200.0
    partitions: int = 4
    members: int = 1
    bound_s: float = 240.0
    """From the first record produced to everything committed."""
    poison_every: int = 500
    consumer_extra: dict[str, Any] = field(default_factory=dict)
    start_members: bool = True
    restart_on_exit: bool = True
    """A member that exits on its own is started again (as a supervisor would); the exit is noted."""
    exits_allowed: bool = False
    expect_no_duplicates: bool = False
    prepare: Step | None = None
    check: Step | None = None
    warmup_s: float = 10.0
    ci: bool = False


# -- the broker ------------------------------------------------------------------------------------------
def broker_kill(run: Run) -> None:
    run.wait_produced(0.3)
    run.chaos.stack.kafka_kill()
    run.note("broker SIGKILLed")
    run.sleep(5)
    run.chaos.stack.kafka_start()
    run.healed()


def broker_pause(run: Run, seconds: float = 30) -> None:
    run.wait_produced(0.3)
    run.chaos.stack.kafka_pause()
    run.sleep(seconds)
    run.chaos.stack.kafka_resume()
    run.healed()


def kafka_link_cut(run: Run, seconds: float = 30) -> None:
    """The consumer's connections to the broker closed and refused (the harness still reaches it)."""
    run.wait_produced(0.3)
    run.chaos.toxiproxy.set_enabled(KAFKA_PROXY, False)
    run.sleep(seconds)
    run.chaos.toxiproxy.set_enabled(KAFKA_PROXY, True)
    run.healed()


def kafka_latency(run: Run, seconds: float = 30) -> None:
    """Every answer of the broker to the consumer 2 s late."""
    run.wait_produced(0.2)
    toxic = run.chaos.toxiproxy.add_toxic(KAFKA_PROXY, "latency", "downstream", latency=2000)
    run.sleep(seconds)
    run.chaos.toxiproxy.remove_toxic(KAFKA_PROXY, toxic)
    run.healed()


# -- the Graph API (the emulator behind the `capi` proxy) -------------------------------------------------
def _capi_toxic(kind: str, stream: str, toxicity: float = 1.0, seconds: float = 20, **attrs: int) -> Step:
    def fault(run: Run) -> None:
        run.wait_produced(0.2)
        toxic = run.chaos.toxiproxy.add_toxic(CAPI_PROXY, kind, stream, toxicity, **attrs)
        run.sleep(seconds)
        run.chaos.toxiproxy.remove_toxic(CAPI_PROXY, toxic)
        run.healed()

    return fault


GRAPH_TIMEOUT = {"capi": {"timeout_s": 2.0}}
# Answers 3 s late with a 2 s request timeout: Meta (the emulator) accepted, the consumer timed out and
# sends again: every such batch is a duplicate (same event_id, deduplicated by Meta within 48 h).
graph_timeouts = _capi_toxic("latency", "downstream", latency=3000)
# Half the connections closed after 200 bytes of the answer: a reset in the middle of the response.
graph_resets = _capi_toxic("limit_data", "downstream", toxicity=0.5, bytes=200)


def graph_trickle(run: Run) -> None:
    """8 KB/s towards the Graph API, 1 KB/s back: a 1,000-event request cannot finish within the timeout."""
    run.wait_produced(0.2)
    up = run.chaos.toxiproxy.add_toxic(CAPI_PROXY, "bandwidth", "upstream", rate=8)
    down = run.chaos.toxiproxy.add_toxic(CAPI_PROXY, "bandwidth", "downstream", rate=1)
    run.sleep(20)
    run.chaos.toxiproxy.remove_toxic(CAPI_PROXY, up)
    run.chaos.toxiproxy.remove_toxic(CAPI_PROXY, down)
    run.healed()


# -- the Schema Registry ---------------------------------------------------------------------------------
def registry_down_at_start(run: Run) -> None:
    """The consumer starts while the registry is down: it must wait, not ready, not exit in a loop."""
    run.chaos.stack.registry_stop()
    proc = run.members.start()
    statuses: list[str] = []
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline:
        run.sleep(2)
        if proc.proc.poll() is not None:
            continue
        try:
            ready, body = run.probe(proc, "/readyz")
            health, _ = run.probe(proc, "/healthz")
        except AssertionError as exc:  # no metrics endpoint: the process exited
            statuses.append(f"no endpoint ({str(exc)[:80]})")
            continue
        statuses.append(f"readyz {ready or body}, healthz {health or 'no answer'}")
        if ready == 200:
            run.violation(f"/readyz answered 200 while the registry was down: {body[:200]}")
            break
        if ready == 0:
            run.violation(f"/readyz did not answer while the registry was down: {body}")
            break
    exits = len(run.members.unexpected_exits)
    if exits:
        run.violation(
            f"the consumer exited {exits} time(s) while the registry was down (restarted each time)"
        )
    run.note(f"operator endpoint during the outage: {sorted(set(statuses))}")
    run.chaos.stack.registry_start()
    run.healed()


def _order_schema_v2() -> str:
    """The order schema plus an optional field: a new writer schema id the consumer has not seen."""
    schema = json.loads(ORDER_SCHEMA_PATH.read_text())
    schema["fields"].append({"name": "chaos_note", "type": ["null", "string"], "default": None})
    return json.dumps(schema)


def registry_down_new_schema(run: Run) -> None:
    """Mid-stream the registry goes away, then records with a new writer schema id arrive: the consumer
    must wait (or stop without committing past them), never dead-letter them as undecodable."""
    run.wait_produced(0.3)
    v2 = _order_schema_v2()
    registry = registry_client(run.chaos.registry_url)
    v2_id = registry.register_schema(f"{run.topic}-value", Schema(v2, "AVRO"))
    run.chaos.stack.registry_stop()
    run.producer.encoding = (v2_id, fastavro.parse_schema(json.loads(v2)))
    run.note(f"writer schema id {run.schema_id} -> {v2_id} with the registry down")
    run.sleep(25)
    run.chaos.stack.registry_start()
    run.healed()


# -- the consumer ----------------------------------------------------------------------------------------
def _bounces(hard: bool) -> Step:
    def fault(run: Run) -> None:
        run.wait_produced(0.15)
        for _ in range(5):
            run.sleep(3)
            for proc in run.members.alive()[:1]:
                if hard:
                    run.members.kill(proc)
                else:
                    code = run.members.terminate(proc)
                    if code != 0:
                        run.violation(f"SIGTERM: exit {code}")
            run.members.start()
        run.healed()

    return fault


def rebalance_storm(run: Run) -> None:
    """4 members on 8 partitions; every 3 s one leaves cleanly (SIGTERM) or one joins, for a minute."""
    rng = random.Random(16)
    run.wait_produced(0.05)
    end = time.monotonic() + 60
    leaving: list[threading.Thread] = []
    codes: list[int] = []
    while time.monotonic() < end:
        run.sleep(3)
        alive = run.members.staying()
        if len(alive) >= 4 or (len(alive) > 2 and rng.random() < 0.5):
            proc = rng.choice(alive)
            # In a thread: the leaving member drains (up to shutdown.drain_deadline_s) while others move.
            thread = threading.Thread(
                target=lambda p=proc: codes.append(run.members.terminate(p)), daemon=True
            )
            thread.start()
            leaving.append(thread)
        else:
            run.members.start()
    for thread in leaving:
        thread.join(LEAVE_TIMEOUT_S)
    while len(run.members.staying(starting=True)) < 2:
        run.members.start()
    if any(code != 0 for code in codes):
        run.violation(f"members leaving on SIGTERM exited with {sorted(set(codes))}")
    run.note(f"{run.members.started} member starts, {len(leaving)} clean leaves")
    run.healed()


# -- the dead-letter topic -------------------------------------------------------------------------------
def _small_dlq(run: Run) -> None:
    """Kafka refuses every dead-letter copy: the topic's max.message.bytes is below any copy's size."""
    topic = f"{run.topic}.dlq"
    spec = NewTopic(
        topic,
        num_partitions=run.scenario.partitions,
        replication_factor=1,
        config={"max.message.bytes": "64"},
    )
    run.chaos.admin.create_topics([spec])[topic].result(30)


def dlq_unwritable(run: Run) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and run.members.alive():
        time.sleep(0.5)
    exits = run.members.exited()
    if not exits:
        run.violation("the consumer did not stop when its dead-letter copy was refused")
    elif exits[0][1] != 1:
        run.violation(f"exit {exits[0][1]} instead of 1 when the dead-letter copy was refused")
    committed = run.offsets.committed()
    poison = sorted((p, o) for (p, o), key in run.producer.located.items() if key.startswith(POISON_PREFIX))
    first: dict[int, int] = {}
    for p, o in poison:
        first.setdefault(p, o)
    past = {p: committed.get(p, 0) for p, o in first.items() if committed.get(p, 0) > o}
    if past:
        run.violation(f"committed past the refused record: {past} (first poison offsets {first})")
    # The fix: a sane limit on the topic, then the consumer started again.
    resource = ConfigResource(
        ResourceType.TOPIC,
        f"{run.topic}.dlq",
        incremental_configs=[
            ConfigEntry("max.message.bytes", "1048576", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    for future in run.chaos.admin.incremental_alter_configs([resource]).values():
        future.result(30)
    run.sleep(2)
    run.members.start()
    run.healed()


def _storm(protocol: str) -> Scenario:
    return Scenario(
        f"rebalance-storm-{protocol}",
        f"4 members on 8 partitions joining and leaving (SIGTERM) every 3 s for 60 s, protocol {protocol}",
        rebalance_storm,
        events=12000,
        rate=150,
        partitions=8,
        members=4,
        bound_s=300,
        consumer_extra={"kafka": {"group_protocol": protocol}},
        expect_no_duplicates=True,
    )


SCENARIOS: list[Scenario] = [
    Scenario(
        "broker-kill",
        "broker SIGKILLed mid-stream, restarted 5 s later on the same data dir",
        broker_kill,
        ci=True,
    ),
    Scenario("broker-pause", "broker SIGSTOPped for 30 s", broker_pause),
    Scenario(
        "kafka-link-cut", "consumer-to-broker connections cut for 30 s (toxiproxy disabled)", kafka_link_cut
    ),
    Scenario("kafka-latency", "2 s added to every broker answer for 30 s", kafka_latency),
    Scenario(
        "graph-timeouts",
        "Graph answers 3 s late with a 2 s request timeout, for 20 s (duplicates counted)",
        graph_timeouts,
        consumer_extra=GRAPH_TIMEOUT,
        ci=True,
    ),
    Scenario("graph-resets", "half the Graph connections closed mid-response for 20 s", graph_resets),
    Scenario("graph-trickle", "8 KB/s to the Graph API, 1 KB/s back, for 20 s", graph_trickle),
    Scenario(
        "registry-down-at-start",
        "registry down when the consumer starts, back 25 s later",
        registry_down_at_start,
        start_members=False,
        exits_allowed=True,
        ci=True,
    ),
    Scenario(
        "registry-down-new-schema",
        "registry down mid-stream, then a new writer schema id; back 25 s later",
        registry_down_new_schema,
        exits_allowed=True,
    ),
    Scenario(
        "clean-bounces",
        "5 clean bounces of the consumer (SIGTERM, restart): no duplicates",
        _bounces(hard=False),
        events=6000,
        expect_no_duplicates=True,
        ci=True,
    ),
    Scenario(
        "hard-bounces",
        "5 hard bounces of the consumer (SIGKILL, restart): no loss",
        _bounces(hard=True),
        events=6000,
        # A SIGKILLed member holds its partitions until its session times out (librdkafka's 45 s default):
        # 10 s keeps the scenario short without changing what it tests.
        consumer_extra={"kafka": {"consumer_properties": {"session.timeout.ms": 10000}}},
        ci=True,
    ),
    _storm("classic"),
    _storm("consumer"),
    Scenario(
        "dlq-unwritable",
        "dead-letter topic refuses copies (max.message.bytes 64): stop, commit nothing past, fix, restart",
        dlq_unwritable,
        events=3000,
        poison_every=1000,
        prepare=_small_dlq,
        restart_on_exit=False,
        exits_allowed=True,
    ),
]

BY_NAME = {s.name: s for s in SCENARIOS}


# -- the soak: a steady stream and a random fault every 30 s ---------------------------------------------
def _registry_blip(run: Run) -> None:
    run.chaos.stack.registry_stop()
    run.sleep(10)
    run.chaos.stack.registry_start()


def _kafka_kill_restart(run: Run) -> None:
    run.chaos.stack.kafka_kill()
    run.sleep(5)
    run.chaos.stack.kafka_start()


def _timed_toxic(proxy: str, kind: str, stream: str, toxicity: float = 1.0, **attrs: int) -> Step:
    def fault(run: Run) -> None:
        toxic = run.chaos.toxiproxy.add_toxic(proxy, kind, stream, toxicity, **attrs)
        run.sleep(10)
        run.chaos.toxiproxy.remove_toxic(proxy, toxic)

    return fault


def _pause(run: Run) -> None:
    run.chaos.stack.kafka_pause()
    run.sleep(10)
    run.chaos.stack.kafka_resume()


def _cut(run: Run) -> None:
    run.chaos.toxiproxy.set_enabled(KAFKA_PROXY, False)
    run.sleep(10)
    run.chaos.toxiproxy.set_enabled(KAFKA_PROXY, True)


SOAK_FAULTS: dict[str, Step] = {
    "broker-kill": _kafka_kill_restart,
    "broker-pause-10s": _pause,
    "kafka-link-cut-10s": _cut,
    "kafka-latency-10s": _timed_toxic(KAFKA_PROXY, "latency", "downstream", latency=2000),
    "graph-timeouts-10s": _timed_toxic(CAPI_PROXY, "latency", "downstream", latency=3000),
    "graph-resets-10s": _timed_toxic(CAPI_PROXY, "limit_data", "downstream", 0.5, bytes=200),
    "registry-down-10s": _registry_blip,
}


def soak(minutes: float, rate: float, seed: int = 16) -> Scenario:
    """One consumer for `minutes` at `rate` events/s; every 30 s one fault of SOAK_FAULTS at random. Consumer
    restarts are left out so that its RSS over the whole run says whether memory stays bounded."""
    rng = random.Random(seed)

    def fault(run: Run) -> None:
        end = time.monotonic() + minutes * 60 - 30
        applied: list[str] = []
        while time.monotonic() < end:
            run.sleep(30 - 10)
            name = rng.choice(sorted(SOAK_FAULTS))
            started = time.monotonic()
            SOAK_FAULTS[name](run)
            run.chaos.heal()
            applied.append(f"{name}@{started - run.t0:.0f}s")
            run.sleep(max(0.0, 10 - (time.monotonic() - started)))
        run.note("faults: " + ", ".join(applied))
        run.healed()

    return Scenario(
        "soak",
        f"{minutes:g} min at {rate:g} events/s, a random fault every 30 s",
        fault,
        events=int(minutes * 60 * rate),
        rate=rate,
        partitions=8,
        bound_s=minutes * 60 + 300,
        poison_every=5000,
        consumer_extra=GRAPH_TIMEOUT,
        warmup_s=60.0,
    )
