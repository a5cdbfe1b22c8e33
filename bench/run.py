"""`make bench`: capi-consumer against the decode ceiling and the official SDK, side by side in one run.

On the real dev stack (Kafka KRaft broker + Apicurio Registry) and the CAPI emulator (its own
process, `bench.emulator_probe`):

1. produce N canonical `placed` order events (three line items, varied PII) in Confluent wire format
   to a topic with 8 partitions (the backlog);
2. for each scenario start the worker process(es) with a fresh consumer group and measure draining
   the backlog: events/s from the first partition assignment to the moment the group's committed offsets
   cover all N records, each worker's peak RSS (VmHWM) and CPU seconds (/proc), and the CPU the
   broker, the emulator and everything else on the machine used in the same window. (e)'s two
   processes start on an empty topic and the N records are produced once both hold partitions, so
   the join rebalance, a one-off when a group scales out, is not what is measured;
3. then, with the worker caught up, append M more records at a steady R events/s to the same topic
   and measure end-to-end latency per event (record timestamp -> accepted by the emulator); a
   drained backlog says nothing about latency, a paced stream does;
4. full runs only: drain a 1,000,000-record backlog with capi-consumer and sample its RSS over time.

Scenarios: (a) decode ceiling (run again right after (c), as (a2), when both run: REPEATED_CEILING), (b)
SDK baseline, (c) capi-consumer (run again right after (a2), as (c2): REPEATED_CONSUMER), (d)
capi-consumer with 150 ms added per request, (e) two capi-consumer processes in one group, (f)
capi-consumer with 600 ms added per request (Meta's typical latency), (g) capi-consumer throttled:
requests of THROTTLE_BATCH events, 600 ms per request, a rate limit of THROTTLE_RATE requests/s per
pixel (80004 above it) and 613 to THROTTLE_SHARE of the requests at random, (h) capi-consumer in
platform mode: the same orders, each routed by its `shop_id` to one of 1,000 tenants (Zipf-like
popularity), each tenant with its own pixel and token (a tenants file and a secrets directory; the
tokens are added to the emulator in bulk). For every scenario that sends, the emulator's counters give
requests/s and events per request over the measured window; for (h) the events each tenant's pixel
received are checked against what was produced for it. Each capi-consumer's adaptive request concurrency
(`capi_request_concurrency_limit`, `capi_requests_in_flight`) is scraped from its /metrics every
CONCURRENCY_SAMPLE_S during the drain. Prints markdown tables and the target ratios; writes JSON to
bench/results/ (`--reference` also writes bench/results/reference.json).

    make bench QUICK=1          # 30,000 events, no 1M backlog check (a few minutes)
    make bench                  # 200,000 events and the 1M backlog check
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from bench import procstat
from bench.workload import (
    ORDER_SCHEMA_PATH,
    PIXEL,
    REPO,
    TOKEN,
    avro_bytes,
    draw_tenants,
    order_schema,
    orders,
    tenant_id,
    tenant_pixel,
    tenant_token,
    wire_format,
)
from capi_devstack import DevStack, StackOptions
from capi_devstack.processes import ManagedProcess, free_port

PARTITIONS = 8
RESULTS = REPO / "bench" / "results"
COMMIT_POLL_S = 0.05
FIRST_POLL_S = 0.01
LIVE_RATE = 1000  # events/s of the latency phase
AUTO_COMMIT_MS = 100
GROUP_SETTLE_S = 1.0

TARGETS = [
    # (name, numerator, denominator, minimum ratio)
    ("(c) >= 0.6 x (a)", "c", "a", 0.6),
    ("(c) >= 0.45 x (a) (issue 17)", "c", "a", 0.45),
    ("(c) >= 3 x (b)", "c", "b", 3.0),
    ("(d) >= 0.9 x (c)", "d", "c", 0.9),
    ("(e) >= 1.4 x (c)", "e", "c", 1.4),
    ("(f) >= 0.9 x (c)", "f", "c", 0.9),
    ("(h) >= 0.7 x (c)", "h", "c", 0.7),
]
RSS_LIMITS_MB = [("c", 250.0), ("h", 300.0)]
CPU_PER_EVENT_LIMITS = [("c", "a", 2.2)]
"""(scenario, reference, most): the worker CPU per event of a scenario against the reference's (issue 17)."""
TENANTS = 1000
"""Tenants of scenario (h) (`--tenants`)."""
TENANT_RELOAD_S = 5.0
PARKED_SUFFIX = ".parked"
"""capi-consumer's default parked topic of a platform-mode topic (`topics.<t>.parked_topic`)."""
PARTNER_AGENT = "plbench-1.0-1.0"
META_LATENCY_MS = 600
"""Meta answers most requests within 600 ms (capi-reference.md, DOC-9): scenarios (f) and (g)."""
THROTTLE_BATCH = 100
"""Scenario (g): events per request (`batching.max_events`), so that requests are many and the limit
has room to move (a request of 1,000 events is 0.1-0.3 s of one core's work: one process keeps only a
few in flight, which a throttled destination's limit would rarely reach)."""
THROTTLE_RATE = 20.0
"""Scenario (g): requests per second per pixel the emulator lets through (a token bucket, burst as
big): below what one capi-consumer sends with THROTTLE_BATCH-event requests once it drains more than
2,000 events/s; at 600 ms per request it fits about 12 requests in flight."""
THROTTLE_SHARE = 0.01
"""Scenario (g): share of requests answered 613 at random, whatever the rate."""
THROTTLE_FAULTS: tuple[dict[str, Any], ...] = (
    {
        "kind": "rate_limit",
        "code": 80004,
        "rate_per_s": THROTTLE_RATE,
        "burst": THROTTLE_RATE,
        # Meta sends whole minutes; 0 (under a minute) lets the consumer's own backoff decide.
        "estimated_time_to_regain_access": 0,
    },
    {"kind": "throttle", "code": 613, "probability": THROTTLE_SHARE, "estimated_time_to_regain_access": 0},
)
CONCURRENCY_SAMPLE_S = 0.5
CONSUMER_COUNTERS = (
    "capi_events_accepted_total",
    "capi_events_rejected_total",
    "capi_events_filtered_total",
    "capi_dead_lettered_total",
    "capi_events_parked_total",
    "capi_graph_errors_total",
    "capi_retries_total",
    "capi_batch_size_events_count",
    "capi_batch_size_events_sum",
    "capi_request_concurrency_limit",
)
"""Read from each capi-consumer's /metrics once its scenario is done (summed over label sets)."""
LOG_EXCERPTS = 8


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    kind: str  # ceiling | sdk | capi
    processes: int = 1
    added_latency_ms: int = 0
    faults: tuple[dict[str, Any], ...] = ()
    """More emulator faults armed while the scenario runs (`POST /_emulator/faults`)."""
    batch_events: int | None = None
    """`batching.max_events` (None: the default, 1,000)."""
    tenants: int = 0
    """Platform mode: events routed by `shop_id` to this many tenants (0: one fixed destination)."""


REPEATED_CEILING = "a2"
"""The decode ceiling measured a second time, right after (c), when both (a) and (c) run: its CPU per
record moves by up to a third from one process to the next on the same code (a shared VM), so every
ratio to (a) is taken against the mean of the two runs, and their range is shown beside it."""
REPEATED_CONSUMER = "c2"
"""capi-consumer measured a second time, right after (a2), when both (a) and (c) run: its CPU per event
moved between 89 and 103 µs in eight runs of the same code on one day, so each side of a ratio is the
mean of its two runs (also in ratios to (c)), with the range over the pairs of runs shown beside it."""
REPEATS = {"a": REPEATED_CEILING, "c": REPEATED_CONSUMER}

SCENARIOS = [
    Scenario("a", "decode ceiling (confluent-kafka + fastavro, discard)", "ceiling"),
    Scenario("b", "SDK baseline (facebook-business, 1,000/request, sync commit)", "sdk"),
    Scenario("c", "capi-consumer", "capi"),
    Scenario(REPEATED_CEILING, "decode ceiling again, right after (c)", "ceiling"),
    Scenario(REPEATED_CONSUMER, "capi-consumer again, right after (a2)", "capi"),
    Scenario("d", "capi-consumer, +150 ms per request", "capi", added_latency_ms=150),
    Scenario("e", "capi-consumer, 2 processes in one group", "capi", processes=2),
    Scenario(
        "f", f"capi-consumer, +{META_LATENCY_MS} ms per request", "capi", added_latency_ms=META_LATENCY_MS
    ),
    Scenario(
        "g",
        f"capi-consumer, throttled ({THROTTLE_BATCH} events/request, +{META_LATENCY_MS} ms, "
        f"{THROTTLE_RATE:g} requests/s per pixel, {THROTTLE_SHARE:.0%} 613)",
        "capi",
        added_latency_ms=META_LATENCY_MS,
        faults=THROTTLE_FAULTS,
        batch_events=THROTTLE_BATCH,
    ),
    Scenario("h", f"capi-consumer, platform mode, {TENANTS:,} tenants", "capi", tenants=TENANTS),
]


@dataclass
class Result:
    key: str
    title: str
    events: int
    seconds: float = 0.0
    events_per_s: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    latency_events: int = 0
    latency_missing: int = 0
    peak_rss_mb: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    broker_cpu_s: float = 0.0
    emulator_cpu_s: float = 0.0
    other_cpu_s: float = 0.0
    machine_busy_cores: float = 0.0
    emulator_events: int = 0
    requests: int = 0
    """Requests the emulator answered in the measured window (backlog drain)."""
    requests_rejected: int = 0
    """... of which not accepted (rejected or faulted)."""
    requests_per_s: float | None = None
    events_per_request: float | None = None
    """Events the emulator accepted in the window per accepted request."""
    window_events: int = 0
    """Events the emulator accepted in the window (the backlog: `events`, unless resent)."""
    tenants: int = 0
    tenants_reached: int = 0
    """Platform mode: tenants whose pixel received events in the window."""
    tenant_check: str | None = None
    """Platform mode: whether each tenant's pixel received exactly the events produced for it."""
    tenant_events_missing: int = 0
    """Platform mode: events produced for a tenant that its pixel did not receive (lost or misrouted)."""
    consumer_metrics: list[dict[str, float]] = field(default_factory=list)
    log_problems: int = 0
    """capi-consumer log lines at warning level or above (the first few in `log_excerpts`)."""
    log_excerpts: list[str] = field(default_factory=list)
    exit_codes: list[int | None] = field(default_factory=list)
    rss_timeline_mb: list[list[float]] = field(default_factory=list)
    concurrency_timeline: list[list[list[float]]] = field(default_factory=list)
    """Per capi-consumer: [seconds since start, concurrency limit, requests in flight] every
    CONCURRENCY_SAMPLE_S over the drain (the limit: the lowest of its destinations')."""
    events_short: int = 0
    """Events of the backlog the emulator did not accept in the window (lost, or misrouted)."""
    throttled: int = 0
    """Requests the emulator answered with a throttling code (4, 17, 32, 613, 80004) in the window."""
    error: str | None = None


# --- small HTTP helpers -------------------------------------------------------------------------------


def _http(url: str, method: str = "GET", body: Any = None, timeout: float = 10) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        raw = resp.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode()


def _assigned_at(log_path: Path) -> float | None:
    """When capi-consumer logged its first partition assignment (epoch seconds), from its JSON log.

    Every scenario's clock starts at its first assignment (the bench's own workers print theirs,
    `bench.worker_common.AnnounceAssignment`), so every window includes the fetch of the first records.
    capi-consumer does not announce its first record, and its /metrics endpoint shares the event
    loop that is busy with records, so scraping it would lag by several batches.
    """
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if '"partitions assigned"' in line:
            with contextlib.suppress(ValueError, KeyError):
                entry = json.loads(line)
                if not entry.get("partitions"):
                    continue  # an empty incremental assignment
                stamp = entry["ts"]
                return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=dt.UTC).timestamp()
    return None


# --- Kafka helpers ------------------------------------------------------------------------------------


class Committed:
    """Reads a group's committed offsets (a consumer that never joins the group)."""

    def __init__(self, bootstrap: str, group: str) -> None:
        self._c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})

    def total(self, topic: str) -> int:
        tps = self._c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=10)
        return sum(max(tp.offset, 0) for tp in tps)

    def close(self) -> None:
        self._c.close()


def create_topics(bootstrap: str, names: list[str]) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics(
        [NewTopic(n, num_partitions=PARTITIONS, replication_factor=1) for n in names]
    )
    for future in futures.values():
        future.result(60)


def encoded_orders(
    schema_id: int, n: int, start: int, shops: Sequence[str] | None = None
) -> Iterator[tuple[bytes, bytes]]:
    """(key, Confluent wire-format value) of `n` orders, order IDs from `start` (`shops`: their
    `shop_id`s, platform mode)."""
    schema = order_schema()
    now_ms = int(time.time() * 1000)
    for record in orders(n, now_ms=now_ms, start=start, shops=shops):
        yield record["order_id"].encode(), wire_format(schema_id, avro_bytes(schema, record))


def produce_backlog(bootstrap: str, topic: str, values: Iterable[tuple[bytes, bytes]]) -> float:
    """Produce records as fast as possible; returns seconds taken."""
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 200_000,
        }
    )
    started = time.monotonic()
    for i, (key, value) in enumerate(values):
        while True:
            try:
                producer.produce(topic, key=key, value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 5000 == 0:
            producer.poll(0)
    if producer.flush(120) != 0:
        raise RuntimeError("backlog not fully produced")
    return time.monotonic() - started


def produce_paced(bootstrap: str, topic: str, values: list[tuple[str, bytes]], rate: float) -> dict[str, int]:
    """Produce at `rate` records/s with CreateTime = now; returns order_id -> timestamp (ms)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 1})
    stamps: dict[str, int] = {}
    started = time.monotonic()
    for i, (order_id, value) in enumerate(values):
        delay = started + i / rate - time.monotonic()
        if delay > 0.002:
            time.sleep(delay)
        ts = int(time.time() * 1000)
        producer.produce(topic, key=order_id.encode(), value=value, timestamp=ts)
        stamps[order_id] = ts
        producer.poll(0)
    if producer.flush(60) != 0:
        raise RuntimeError("paced records not fully produced")
    return stamps


# --- workers ------------------------------------------------------------------------------------------


@dataclass
class Stack:
    bootstrap: str
    registry: str
    capi: str
    broker_pid: int
    emulator_pid: int
    workdir: Path
    consumer_root: Path = REPO
    """Checkout whose `consumer` package the capi-consumer processes run (A/B of proposed changes)."""


@dataclass(frozen=True)
class Platform:
    """Platform mode's tenant registry for a scenario: a tenants file and a secrets directory."""

    tenants_file: Path
    secrets_dir: Path
    count: int

    def pixel_to_tenant(self) -> dict[str, str]:
        return {tenant_pixel(r): tenant_id(r) for r in range(1, self.count + 1)}


def setup_platform(stack: Stack, count: int, directory: Path) -> Platform:
    """`count` tenants: each a pixel, a token file named after it, and that token known to the emulator
    for that pixel only (one bulk `POST /_emulator/tokens`)."""
    secrets = directory / "secrets"
    secrets.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict[str, str]] = {}
    for rank in range(1, count + 1):
        entries[tenant_id(rank)] = {"pixel_id": tenant_pixel(rank)}
        (secrets / tenant_id(rank)).write_text(tenant_token(rank) + "\n")
    tenants_file = directory / "tenants.yaml"
    tenants_file.write_text(yaml.safe_dump(entries, sort_keys=False))
    tokens = [{"token": tenant_token(r), "pixels": [tenant_pixel(r)]} for r in range(1, count + 1)]
    answer = _http(f"{stack.capi}/_emulator/tokens", "POST", tokens, timeout=60)
    if len(answer.get("tokens", {})) != count:
        raise RuntimeError(f"the emulator took {len(answer.get('tokens', {}))} of {count} tenant tokens")
    return Platform(tenants_file, secrets, count)


def _capi_config(
    stack: Stack,
    group: str,
    topics: list[str],
    metrics_port: int,
    platform: Platform | None = None,
    batch_events: int | None = None,
) -> Path:
    if platform is None:
        route: dict[str, Any] = {"destination": "main"}
    else:
        route = {"tenant_field": "shop_id"}
    config: dict[str, Any] = {
        "kafka": {
            "bootstrap_servers": stack.bootstrap,
            "group_id": group,
            # Production keeps librdkafka's 5 s; the benchmark commits often so that "last offset
            # committed" marks the end of the work, not the next tick of the commit timer.
            "consumer_properties": {"auto.commit.interval.ms": AUTO_COMMIT_MS},
        },
        "schema_registry": {"url": stack.registry},
        "topics": {t: {"kind": "order", "reader_schema": str(ORDER_SCHEMA_PATH), **route} for t in topics},
        "destinations": {"main": {"pixel_id": PIXEL, "access_token_env": "CAPI_ACCESS_TOKEN"}},
        "capi": {"base_url": stack.capi},
        "normalization": {"default_phone_region": "US"},
        "metrics": {"host": "127.0.0.1", "port": metrics_port},
        "shutdown": {"drain_deadline_s": 10},
    }
    if batch_events is not None:
        config["batching"] = {"max_events": batch_events}
    if platform is not None:
        # Every topic has a tenant_field: no fixed destination is needed.
        del config["destinations"]
        config["platform"] = {
            "partner_agent": PARTNER_AGENT,
            "tenants": {"file": str(platform.tenants_file)},
            "secrets_dir": str(platform.secrets_dir),
            "reload_interval_s": TENANT_RELOAD_S,
        }
    path = stack.workdir / f"{group}-{metrics_port}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


class Workers:
    """The process(es) of one scenario and how to tell when its clock starts (first assignment)."""

    def __init__(
        self,
        scenario: Scenario,
        stack: Stack,
        group: str,
        topics: list[str],
        profile: Path | None = None,
        platform: Platform | None = None,
    ) -> None:
        self.scenario = scenario
        self.procs: list[ManagedProcess] = []
        self.metrics_ports: list[int] = []
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CAPI_ACCESS_TOKEN": TOKEN}
        logs = stack.workdir / "logs"
        for n in range(scenario.processes):
            log = logs / f"{group}-{n}.log"
            if scenario.kind == "capi":
                port = free_port()
                self.metrics_ports.append(port)
                config = _capi_config(stack, group, topics, port, platform, scenario.batch_events)
                argv = [sys.executable, "-m", "consumer", "run", "--config", str(config)]
                if profile is not None:
                    # pyinstrument (not a dependency) wraps the process and writes its profile at exit.
                    out = profile / f"{group}-{n}.txt"
                    argv[1:1] = ["-m", "pyinstrument", "--interval", "0.001", "-r", "text", "-o", str(out)]
                # `python -m` puts the working directory first on sys.path: its `consumer` package runs.
                cwd = stack.consumer_root
                self.procs.append(ManagedProcess(f"capi-{n}", argv, log, env=env, cwd=cwd))
            else:
                module = "bench.decode_ceiling" if scenario.kind == "ceiling" else "bench.sdk_baseline"
                argv = [sys.executable, "-m", module, "--bootstrap", stack.bootstrap]
                argv += ["--registry", stack.registry, "--group", group, "--topics", ",".join(topics)]
                if scenario.kind == "sdk":
                    argv += ["--base-url", stack.capi]
                self.procs.append(ManagedProcess(module, argv, log, env=env, cwd=REPO, stdout_pipe=True))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def wait_clock_start(self, timeout_s: float) -> float:
        """Wall-clock time of the first partition assignment (any process): every scenario's clock
        starts there, so each window includes the time from assignment to the first fetched record."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for proc in self.procs:
                if not proc.alive():
                    raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")
            if self.scenario.kind == "capi":
                assigned = [t for t in (_assigned_at(p.log_path) for p in self.procs) if t is not None]
                if assigned:
                    return min(assigned)
                time.sleep(FIRST_POLL_S)
            else:
                line = self.procs[0].read_line(0.2)
                if line:
                    payload = json.loads(line)
                    if "error" in payload:
                        raise RuntimeError(payload["error"])
                    if "assigned" in payload:
                        return float(payload["assigned"])
        raise RuntimeError(f"no partition assigned within {timeout_s:.0f}s")

    def wait_all_assigned(self, timeout_s: float) -> None:
        """Until every process has logged a non-empty assignment: the group has formed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.check_alive()
            if all(_assigned_at(p.log_path) is not None for p in self.procs):
                return
            time.sleep(FIRST_POLL_S)
        raise RuntimeError(f"the group did not form within {timeout_s:.0f}s")

    def check_alive(self) -> None:
        for proc in self.procs:
            if not proc.alive():
                raise RuntimeError(f"{proc.name} exited early:\n{proc.log_tail()}")

    def stop(self) -> list[int | None]:
        codes: list[int | None] = []
        for proc in self.procs:
            proc.stop(timeout_s=30)
            codes.append(proc.proc.returncode)
        return codes

    def consumer_metrics(self) -> list[dict[str, float]]:
        """CONSUMER_COUNTERS of each capi-consumer, from its /metrics (summed over label sets)."""
        out: list[dict[str, float]] = []
        for port in self.metrics_ports:
            try:
                text = str(_http(f"http://127.0.0.1:{port}/metrics", timeout=30))
            except OSError as exc:
                out.append({"unreadable": 1.0})
                print(f"    /metrics of port {port} unreadable: {exc}", flush=True)
                continue
            out.append(_sum_counters(text, CONSUMER_COUNTERS))
        return out

    def log_problems(self) -> tuple[int, list[str]]:
        """capi-consumer log lines at warning level or above: how many, and the first few."""
        count = 0
        excerpts: list[str] = []
        for proc in self.procs if self.scenario.kind == "capi" else []:
            with contextlib.suppress(OSError):
                for line in proc.log_path.read_text(errors="replace").splitlines():
                    if _log_level(line) in ("warning", "error", "critical"):
                        count += 1
                        if len(excerpts) < LOG_EXCERPTS:
                            excerpts.append(f"{proc.name}: {line[:400]}")
        return count, excerpts


def _log_level(line: str) -> str:
    """The level of a JSON log line; anything else (a traceback, librdkafka's stderr) counts as error."""
    if not line.strip():
        return ""
    try:
        entry = json.loads(line)
    except ValueError:
        return "error"
    return str(entry.get("level", "")) if isinstance(entry, dict) else "error"


def _sum_counters(text: str, names: Sequence[str]) -> dict[str, float]:
    """Prometheus text format: each of `names` summed over its label sets (absent: 0)."""
    totals = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in totals:
            with contextlib.suppress(ValueError, IndexError):
                totals[name] += float(line.rsplit(" ", 1)[1])
    return totals


@contextlib.contextmanager
def _fault(stack: Stack, latency_ms: int, extra: Sequence[dict[str, Any]] = ()) -> Iterator[None]:
    faults = [*extra]
    if latency_ms:
        faults.append({"kind": "latency", "latency_ms": latency_ms})
    if faults:
        _http(f"{stack.capi}/_emulator/faults", "POST", faults)
    try:
        yield
    finally:
        if faults:
            _http(f"{stack.capi}/_emulator/faults", "DELETE")


class ConcurrencySampler:
    """Scrapes each capi-consumer's /metrics every `interval_s` in a thread: (seconds since start,
    lowest `capi_request_concurrency_limit`, `capi_requests_in_flight`) per port. The endpoint shares
    the consumer's event loop, so a sample can come late; it is stamped when it arrives."""

    def __init__(self, ports: Sequence[int], interval_s: float = CONCURRENCY_SAMPLE_S) -> None:
        self.ports = list(ports)
        self.interval_s = interval_s
        self.samples: dict[int, list[list[float]]] = {port: [] for port in self.ports}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> ConcurrencySampler:
        if not self.ports:
            return self
        started = time.monotonic()

        def loop() -> None:
            while not self._stop.is_set():
                for port in self.ports:
                    try:
                        text = str(_http(f"http://127.0.0.1:{port}/metrics", timeout=5))
                    except OSError:
                        continue  # not listening yet, or busy
                    sample = _concurrency_sample(text)
                    if sample is not None:
                        self.samples[port].append([round(time.monotonic() - started, 2), *sample])
                self._stop.wait(self.interval_s)

        self._thread = threading.Thread(target=loop, name="concurrency-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[list[list[float]]]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        return [self.samples[port] for port in self.ports]


def _concurrency_sample(text: str) -> tuple[float, float] | None:
    """(lowest concurrency limit, requests in flight) from a /metrics text; None before any request."""
    limits: list[float] = []
    in_flight = 0.0
    for line in text.splitlines():
        with contextlib.suppress(ValueError, IndexError):
            if line.startswith("capi_request_concurrency_limit{"):
                limits.append(float(line.rsplit(" ", 1)[1]))
            elif line.startswith("capi_requests_in_flight "):
                in_flight = float(line.rsplit(" ", 1)[1])
    return (min(limits), in_flight) if limits else None


def _emulator_stats(stack: Stack) -> dict[str, Any]:
    stats: dict[str, Any] = _http(f"{stack.capi}/_emulator/stats", timeout=30)
    return stats


def _emulator_window(
    result: Result,
    before: dict[str, Any],
    after: dict[str, Any],
    platform: Platform | None,
    expected: Counter[str] | None,
) -> None:
    """Requests and events the emulator counted between two snapshots of its stats (the measured
    window); for platform mode, each tenant's events against what was produced for it."""
    requests = int(after["requests"]) - int(before["requests"])
    accepted = int(after["requests_accepted"]) - int(before["requests_accepted"])
    events = int(after["events_received"]) - int(before["events_received"])
    result.requests = requests
    result.requests_rejected = requests - accepted
    result.window_events = events
    result.events_short = max(0, result.events - events)
    result.throttled = _throttled(after) - _throttled(before)
    if result.seconds and requests:
        result.requests_per_s = round(requests / result.seconds, 1)
    if accepted:
        result.events_per_request = round(events / accepted, 2)
    if platform is None or expected is None:
        return
    tenant_of = platform.pixel_to_tenant()
    got: Counter[str] = Counter()
    strays = 0
    by_pixel_before = before.get("events_by_pixel", {})
    for pixel, total in after.get("events_by_pixel", {}).items():
        delta = int(total) - int(by_pixel_before.get(pixel, 0))
        if delta <= 0:
            continue
        tenant = tenant_of.get(pixel)
        if tenant is None:
            strays += delta
        else:
            got[tenant] = delta
    result.tenants = platform.count
    result.tenants_reached = len(got)
    short = sorted(t for t in expected if got[t] < expected[t])
    extra = sorted(t for t in got if got[t] > expected.get(t, 0))
    if not short and not extra and not strays:
        result.tenant_check = f"ok: each of {len(expected)} tenants received exactly its events"
        return
    parts = []
    if short:
        missing = sum(expected[t] - got[t] for t in short)
        result.tenant_events_missing = missing
        parts.append(
            f"{len(short)} tenants short by {missing} events (e.g. "
            + ", ".join(f"{t} {got[t]}/{expected[t]}" for t in short[:3])
            + ")"
        )
    if extra:
        surplus = sum(got[t] - expected.get(t, 0) for t in extra)
        parts.append(f"{len(extra)} tenants with {surplus} events more than produced (resends)")
    if strays:
        parts.append(f"{strays} events to pixels of no tenant")
    result.tenant_check = "; ".join(parts)


THROTTLE_CODES = ("4", "17", "32", "613", "80004")


def _throttled(stats: dict[str, Any]) -> int:
    """Requests the emulator answered with a throttling code, from `by_error` ("code" or "code/sub")."""
    return sum(int(n) for key, n in stats.get("by_error", {}).items() if key.split("/")[0] in THROTTLE_CODES)


def _percentile(sorted_values: list[float], q: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def run_scenario(
    scenario: Scenario,
    stack: Stack,
    topic: str,
    n: int,
    live: list[tuple[str, bytes]],
    run_id: str,
    timeout_s: float,
    profile: Path | None = None,
    produce_after_join: list[tuple[bytes, bytes]] | None = None,
    platform: Platform | None = None,
    expected_tenants: Counter[str] | None = None,
) -> Result:
    """Drain `topic` with the scenario's worker(s). With `produce_after_join`, the topic starts empty:
    the workers start, the group forms (every process holds partitions), then those records are
    produced and the clock starts; otherwise the backlog is already there and the clock starts at
    the first partition assignment. `platform`: the workers run in platform mode with that registry;
    `expected_tenants`: how many of the backlog's events each tenant should receive."""
    result = Result(scenario.key, scenario.title, n)
    group = f"bench-{scenario.key}-{run_id}"
    committed = Committed(stack.bootstrap, group)
    stats_before = _emulator_stats(stack)
    workers: Workers | None = None
    sampler: procstat.RssSampler | None = None
    concurrency: ConcurrencySampler | None = None
    try:
        with _fault(stack, scenario.added_latency_ms, scenario.faults):
            workers = Workers(scenario, stack, group, [topic], profile, platform)
            sampler = procstat.RssSampler(workers.pids, interval_s=0.5).start()
            concurrency = ConcurrencySampler(workers.metrics_ports).start()
            if produce_after_join is None:
                first = workers.wait_clock_start(60)
            else:
                workers.wait_all_assigned(60)
                time.sleep(GROUP_SETTLE_S)
                first = time.time()
            ours = [*workers.pids, stack.broker_pid, stack.emulator_pid]
            cpu0 = [procstat.cpu_seconds(p) for p in ours]
            busy0 = procstat.system_busy_seconds()
            own0 = procstat.cpu_seconds(os.getpid())
            if produce_after_join is not None:
                produce_backlog(stack.bootstrap, topic, produce_after_join)
            deadline = time.monotonic() + timeout_s
            done = 0
            while True:
                done = committed.total(topic)
                if done >= n:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"timed out: {done}/{n} committed after {timeout_s:.0f}s")
                workers.check_alive()
                time.sleep(COMMIT_POLL_S)
            end = time.time()
            if concurrency is not None:
                result.concurrency_timeline = concurrency.stop()
            cpu1 = [procstat.cpu_seconds(p) for p in ours]
            busy1 = procstat.system_busy_seconds()
            own1 = procstat.cpu_seconds(os.getpid())
            stats_end = _emulator_stats(stack)
            used = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
            k = len(workers.pids)
            result.seconds = end - first
            result.events_per_s = n / result.seconds
            result.cpu_s = [round(u, 2) for u in used[:k]]
            result.broker_cpu_s = round(used[k], 2)
            result.emulator_cpu_s = round(used[k + 1], 2)
            result.other_cpu_s = round(max(0.0, (busy1 - busy0) - sum(used) - (own1 - own0)), 2)
            result.machine_busy_cores = round((busy1 - busy0) / result.seconds, 2)
            _emulator_window(result, stats_before, stats_end, platform, expected_tenants)
            if scenario.kind != "ceiling" and live:
                _latency_phase(result, stack, committed, topic, n, live, workers)
            result.peak_rss_mb = [
                round(procstat.memory_kb(p).get("VmHWM", 0) / 1024, 1) for p in workers.pids
            ]
            result.consumer_metrics = workers.consumer_metrics()
    except Exception as exc:
        result.error = str(exc)[-2000:]
    finally:
        if concurrency is not None and not result.concurrency_timeline:
            result.concurrency_timeline = concurrency.stop()
        if sampler is not None:
            sampler.stop()
            result.rss_timeline_mb = [
                [round(rss / 1024, 1) for _, rss in samples] for samples in sampler.samples.values()
            ]
        if workers is not None:
            result.exit_codes = workers.stop()
            result.log_problems, result.log_excerpts = workers.log_problems()
        committed.close()
    with contextlib.suppress(Exception):
        result.emulator_events = int(_emulator_stats(stack)["events_received"]) - int(
            stats_before["events_received"]
        )
    return result


def _latency_phase(
    result: Result,
    stack: Stack,
    committed: Committed,
    topic: str,
    backlog: int,
    live: list[tuple[str, bytes]],
    workers: Workers,
) -> None:
    """Append `live` to the drained topic at LIVE_RATE and time each event to the emulator."""
    _http(f"{stack.capi}/_bench/probe", "POST", {"on": True})
    try:
        stamps = produce_paced(stack.bootstrap, topic, live, LIVE_RATE)
        deadline = time.monotonic() + 60
        while committed.total(topic) < backlog + len(live):
            if time.monotonic() > deadline:
                raise RuntimeError("latency phase: records not committed within 60 s")
            workers.check_alive()
            time.sleep(COMMIT_POLL_S)
        receipts = _http(f"{stack.capi}/_bench/receipts", timeout=30)["receipts"]
    finally:
        _http(f"{stack.capi}/_bench/probe", "POST", {"on": False})
    latencies = sorted((at * 1000 - stamps[event_id]) for event_id, at in receipts if event_id in stamps)
    result.latency_events = len(latencies)
    result.latency_missing = len(stamps) - len({e for e, _ in receipts if e in stamps})
    if latencies:
        result.p50_ms = round(_percentile(latencies, 0.50), 1)
        result.p99_ms = round(_percentile(latencies, 0.99), 1)


def backlog_check(stack: Stack, topic: str, n: int, run_id: str) -> dict[str, Any]:
    """Drain an `n`-record backlog with one capi-consumer and sample its RSS every second."""
    result = run_scenario(
        Scenario("backlog", f"capi-consumer, {n:,}-record backlog", "capi"), stack, topic, n, [], run_id, 1800
    )
    timeline = result.rss_timeline_mb[0] if result.rss_timeline_mb else []
    out: dict[str, Any] = {
        "events": n,
        "events_per_s": round(result.events_per_s),
        "seconds": round(result.seconds, 1),
        "peak_rss_mb": result.peak_rss_mb[0] if result.peak_rss_mb else None,
        "error": result.error,
    }
    if len(timeline) >= 8:
        quarter = len(timeline) // 4
        early = max(timeline[quarter : 2 * quarter])
        late = max(timeline[-quarter:])
        out.update(
            {
                "rss_samples": len(timeline),
                "rss_2nd_quarter_max_mb": early,
                "rss_last_quarter_max_mb": late,
                "rss_growth_pct": round(100 * (late - early) / early, 1),
                "flat": late <= early * 1.10,
                "rss_timeline_mb": timeline[:: max(1, len(timeline) // 60)],
            }
        )
    return out


# --- report -------------------------------------------------------------------------------------------


def _cpu_us_per_event(r: Result | None) -> float | None:
    """The worker processes' CPU per event of a scenario's drain, in µs."""
    if r is None or r.error or not r.cpu_s or not r.events:
        return None
    return 1e6 * sum(r.cpu_s) / r.events


def _selected(key: str, chosen: str) -> bool:
    """Whether `--scenarios` runs scenario `key`; the repeats of (a) and (c) run when both do."""
    if key in REPEATS.values():
        return "a" in chosen and "c" in chosen
    return key in chosen


def _references(results: dict[str, Result], key: str) -> list[Result]:
    """The runs of scenario `key` that succeeded: (a) or (c) and its repeat, or just `key`."""
    keys = [key, REPEATS[key]] if key in REPEATS else [key]
    return [r for k in keys if (r := results.get(k)) is not None and not r.error]


def _span(values: list[float], digits: int) -> str:
    """` (low-high)` of two or more values, else nothing."""
    return f" ({min(values):.{digits}f}-{max(values):.{digits}f})" if len(values) > 1 else ""


def ratios(results: dict[str, Result]) -> list[dict[str, Any]]:
    """The targets: ratios to a reference scenario (to (a): to the mean of its two runs, their range
    shown beside), CPU per event, peak RSS and (g)'s losses."""
    rows = []
    for name, num, den, minimum in TARGETS:
        ours_each = [r.events_per_s for r in _references(results, num) if r.events_per_s]
        refs = [r.events_per_s for r in _references(results, den) if r.events_per_s]
        value = statistics.fmean(ours_each) / statistics.fmean(refs) if ours_each and refs else None
        each = [o / ref for o in ours_each for ref in refs] if value else []
        shown: str | float | None = round(value, 2) if value else None
        if value and len(each) > 1:
            shown = f"{value:.2f}{_span(each, 2)}"
        rows.append(
            {
                "target": name,
                "ratio": shown,
                "pass": bool(value and value >= minimum),
            }
        )
    for key, ref, most in CPU_PER_EVENT_LIMITS:
        ours_each = [o for r in _references(results, key) if (o := _cpu_us_per_event(r))]
        theirs_each = [t for r in _references(results, ref) if (t := _cpu_us_per_event(r))]
        ours = statistics.fmean(ours_each) if ours_each else None
        theirs = statistics.fmean(theirs_each) if theirs_each else None
        value = ours / theirs if ours and theirs else None
        pairs = [o / t for o in ours_each for t in theirs_each]
        rows.append(
            {
                "target": f"({key}) worker CPU per event <= {most} x ({ref})'s",
                "ratio": (
                    f"{ours:.0f}{_span(ours_each, 0)} / {theirs:.0f}{_span(theirs_each, 0)} µs = "
                    f"{value:.2f}{_span(pairs, 2)}"
                )
                if ours and theirs and value
                else None,
                "pass": bool(value and value <= most),
            }
        )
    for key, limit in RSS_LIMITS_MB:
        peaks = [mb for r in _references(results, key) for mb in r.peak_rss_mb]
        rss = max(peaks) if peaks else None  # the highest of the scenario's runs
        rows.append(
            {
                "target": f"peak RSS of ({key}) <= {limit:.0f} MB",
                "ratio": rss,
                "pass": bool(rss and rss <= limit),
            }
        )
    g = results.get("g")
    if g is not None:
        lost, dead = g.events_short + g.tenant_events_missing, _dead_lettered(g)
        rows.append(
            {
                "target": "(g) throttled: 0 lost, 0 dead-lettered",
                "ratio": "failed" if g.error else f"{lost} lost, {dead:.0f} dead-lettered",
                "pass": not g.error and lost == 0 and dead == 0,
            }
        )
    return rows


def _dead_lettered(r: Result) -> float:
    return sum(m.get("capi_dead_lettered_total", 0.0) for m in r.consumer_metrics)


def concurrency_summary(r: Result) -> dict[str, Any] | None:
    """The adaptive limit over a scenario's drain (first process): where it started, its highest and
    lowest, the median of the second half (where it settled), requests in flight, and a timeline of
    about 40 points."""
    samples = r.concurrency_timeline[0] if r.concurrency_timeline else []
    if not samples:
        return None
    limits = [s[1] for s in samples]
    in_flight = sorted(s[2] for s in samples)
    settled = sorted(limits[len(limits) // 2 :])
    step = max(1, len(samples) // 40)
    return {
        "samples": len(samples),
        "first": limits[0],
        "max": max(limits),
        "min": min(limits),
        "settled_median": settled[len(settled) // 2],
        "in_flight_median": in_flight[len(in_flight) // 2],
        "in_flight_max": in_flight[-1],
        "timeline": [[s[0], s[1]] for s in samples[::step]],
    }


def _fmt(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def markdown(
    results: dict[str, Result], ratio_rows: list[dict[str, Any]], backlog: dict[str, Any] | None
) -> str:
    lines = [
        "| scenario | events/s | p50 ms | p99 ms | peak RSS MB | worker CPU s | worker cores "
        "| broker CPU s | emulator CPU s | other CPU s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        if r.error:
            lines.append(f"| ({r.key}) {r.title} | FAILED: {r.error.splitlines()[0][:80]} |||||||||")
            continue
        cores = sum(r.cpu_s) / r.seconds if r.seconds else 0.0
        lines.append(
            f"| ({r.key}) {r.title} | {_fmt(r.events_per_s)} | {_fmt(r.p50_ms)} | {_fmt(r.p99_ms)} | "
            f"{' + '.join(_fmt(m, 0) for m in r.peak_rss_mb)} | {' + '.join(_fmt(c, 1) for c in r.cpu_s)} | "
            f"{cores:.2f} | {_fmt(r.broker_cpu_s, 1)} | {_fmt(r.emulator_cpu_s, 1)} | "
            f"{_fmt(r.other_cpu_s, 1)} |"
        )
    lines += ["", "| target | measured | met |", "|---|---:|---|"]
    for row in ratio_rows:
        value = row["ratio"] if isinstance(row["ratio"], str) else _fmt(row["ratio"], 2)
        lines.append(f"| {row['target']} | {value} | {'yes' if row['pass'] else 'NO'} |")
    if backlog is None:
        lines.append("| RSS flat over a 1,000,000-record backlog | skipped (QUICK) | - |")
    elif "flat" in backlog:
        lines.append(
            f"| RSS flat over a {backlog['events']:,}-record backlog | "
            f"{backlog['rss_2nd_quarter_max_mb']} -> {backlog['rss_last_quarter_max_mb']} MB "
            f"(peak {backlog['peak_rss_mb']} MB) | {'yes' if backlog['flat'] else 'NO'} |"
        )
    else:
        lines.append(f"| RSS flat over a backlog | {backlog.get('error') or 'too few samples'} | NO |")
    lines += requests_table(results)
    lines += concurrency_table(results)
    return "\n".join(lines)


def concurrency_table(results: dict[str, Result]) -> list[str]:
    """The adaptive request concurrency of each capi-consumer scenario over its drain (first process),
    with what the emulator throttled and what was lost or dead-lettered; then the timelines of (f), (g)."""
    rows: list[tuple[Result, dict[str, Any]]] = []
    for r in results.values():
        summary = concurrency_summary(r) if not r.error else None
        if summary is not None:
            rows.append((r, summary))
    if not rows:
        return []
    lines = [
        "",
        "| scenario | limit: first / max / min / settled | requests in flight: median / max "
        "| requests throttled | retries | events lost | dead-lettered |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r, c in rows:
        retries = sum(m.get("capi_retries_total", 0.0) for m in r.consumer_metrics)
        lines.append(
            f"| ({r.key}) {r.title} | {c['first']:.0f} / {c['max']:.0f} / {c['min']:.0f} / "
            f"{c['settled_median']:.0f} | {c['in_flight_median']:.0f} / {c['in_flight_max']:.0f} | "
            f"{r.throttled} | {retries:.0f} | {r.events_short + r.tenant_events_missing} | "
            f"{_dead_lettered(r):.0f} |"
        )
    for r, c in rows:
        if r.key in ("f", "g"):
            points = " ".join(f"{t:.0f}s:{v:.0f}" for t, v in c["timeline"])
            lines.append(f"\n({r.key}) limit over time (seconds since start: limit): {points}")
    return lines


def requests_table(results: dict[str, Result]) -> list[str]:
    """Requests per scenario (from the emulator's counters over the measured window), the ratio to
    (c), and for platform mode whether every tenant received its events."""
    rows = [r for r in results.values() if not r.error and r.requests]
    if not rows:
        return []
    runs = [r.events_per_s for r in _references(results, "c") if r.events_per_s]
    base = statistics.fmean(runs) if runs else None  # (c) and its repeat: their mean
    lines = [
        "",
        "| scenario | events/s | x (c) | requests/s | events/request | requests not accepted "
        "| consumer log warnings+errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        ratio = r.events_per_s / base if base else None
        problems = str(r.log_problems) if r.consumer_metrics else "-"
        lines.append(
            f"| ({r.key}) {r.title} | {_fmt(r.events_per_s)} | {_fmt(ratio, 2)} | "
            f"{_fmt(r.requests_per_s)} | {_fmt(r.events_per_request, 1)} | {r.requests_rejected} | "
            f"{problems} |"
        )
    for r in rows:
        if r.tenant_check is not None:
            lines.append(
                f"\n({r.key}): {r.tenants_reached:,} of {r.tenants:,} tenants reached; {r.tenant_check}"
            )
    return lines


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        )
        return out.stdout.strip()
    except OSError:
        return ""


def _git_dirty() -> list[str]:
    """Paths with uncommitted changes (the benchmark runs the working tree)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True)
    except OSError:
        return []
    return [line[3:] for line in out.stdout.splitlines() if line.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="make bench", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--quick", action="store_true", help="30,000 events, no 1M backlog check")
    parser.add_argument(
        "--events", type=int, default=None, help="backlog size (default 200,000; quick 30,000)"
    )
    parser.add_argument(
        "--backlog", type=int, default=None, help="RSS check backlog (default 1,000,000; quick: skipped)"
    )
    parser.add_argument("--scenarios", default="abcdefgh", help="subset to run, e.g. 'ac'")
    parser.add_argument(
        "--tenants", type=int, default=TENANTS, help=f"tenants of scenario (h) (default {TENANTS:,})"
    )
    parser.add_argument(
        "--keep-logs", type=Path, default=None, help="copy the workers' and the emulator's logs here"
    )
    parser.add_argument("--reference", action="store_true", help="also write bench/results/reference.json")
    parser.add_argument(
        "--consumer-root",
        type=Path,
        default=REPO,
        help="run capi-consumer from this checkout (directory holding a `consumer` package)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="run scenarios (c) and (h) under pyinstrument (pip install it first), profiles written here",
    )
    args = parser.parse_args(argv)
    n = args.events or (30_000 if args.quick else 200_000)
    backlog_n = args.backlog if args.backlog is not None else (0 if args.quick else 1_000_000)
    live_n = 2_000 if args.quick else 10_000
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    load_before = os.getloadavg()
    print(f"bench: {n:,} events, scenarios {args.scenarios}, run {run_id}", flush=True)

    with (
        tempfile.TemporaryDirectory(prefix="capi-bench-") as tmp,
        DevStack(StackOptions(with_emulator=False, benchmark_jvm=True, kafka_heap="1g")) as devstack,
    ):
        ep = devstack.endpoints
        assert ep is not None and ep.schema_registry_url is not None
        workdir = Path(tmp)
        emulator = ManagedProcess(
            "bench-emulator",
            [sys.executable, "-m", "bench.emulator_probe", "--port", "0"],
            workdir / "emulator.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=REPO,
            stdout_pipe=True,
        )
        try:
            capi = json.loads(emulator.read_line(30))["capi_base_url"]
            broker_pid = next(p.pid for p in devstack.processes if p.name == "kafka")
            stack = Stack(
                ep.bootstrap_servers,
                ep.schema_registry_url,
                capi,
                broker_pid,
                emulator.pid,
                workdir,
                args.consumer_root.resolve(),
            )
            print(f"dev stack up in {time.monotonic() - started:.0f}s", flush=True)
            # One topic per scenario, each with the same N records: a second topic per scenario would
            # let the sticky assignor give one process of (e) all of one topic and nothing to do.
            selected = [
                dataclasses.replace(
                    s, tenants=args.tenants, title=f"capi-consumer, platform mode, {args.tenants:,} tenants"
                )
                if s.tenants
                else s
                for s in SCENARIOS
                if _selected(s.key, args.scenarios)
            ]
            topic_of = {s.key: f"bench-orders-{s.key}-{run_id}" for s in selected}
            big_topic = f"bench-backlog-{run_id}"
            # Platform mode also reads `<topic>.parked` (where a refused tenant's events wait); the
            # service does not create it, so the harness does, as a deployment would.
            parked = [topic_of[s.key] + PARKED_SUFFIX for s in selected if s.tenants]
            create_topics(stack.bootstrap, [*topic_of.values(), *parked] + ([big_topic] if backlog_n else []))
            registry = SchemaRegistryClient({"url": stack.registry})
            schema_id = registry.register_schema(
                f"bench-orders-{run_id}-value", Schema(ORDER_SCHEMA_PATH.read_text(), "AVRO")
            )
            encoded = list(encoded_orders(schema_id, n, 0))

            schema = order_schema()
            results: dict[str, Result] = {}
            for index, scenario in enumerate(selected):
                platform: Platform | None = None
                shops: list[str] | None = None
                live_shops: list[str] | None = None
                if scenario.tenants:
                    # The same orders as the other scenarios, each with a tenant as its shop_id.
                    try:
                        platform = setup_platform(
                            stack, scenario.tenants, workdir / f"platform-{scenario.key}"
                        )
                    except (OSError, RuntimeError, ValueError, KeyError) as exc:
                        results[scenario.key] = Result(
                            scenario.key, scenario.title, n, error=f"platform setup failed: {exc}"
                        )
                        print(f"({scenario.key}) FAILED: platform setup: {exc}", flush=True)
                        continue
                    shops = draw_tenants(scenario.tenants, n, seed=2026)
                    live_shops = draw_tenants(scenario.tenants, live_n, seed=2027)
                    print(
                        f"{scenario.tenants:,} tenants registered ({len(set(shops)):,} of them in the "
                        f"backlog, the biggest with {Counter(shops).most_common(1)[0][1]:,} orders)",
                        flush=True,
                    )
                # A group of several processes is measured once it has formed: started on a drained
                # backlog, its first member would take every partition and the join rebalance (a
                # one-off when scaling out) would dominate the run. One process reads a ready backlog.
                after_join = scenario.processes > 1
                if not after_join:
                    values = encoded if shops is None else encoded_orders(schema_id, n, 0, shops)
                    took = produce_backlog(stack.bootstrap, topic_of[scenario.key], values)
                    print(
                        f"produced {n:,} records to {topic_of[scenario.key]} ({PARTITIONS} partitions) "
                        f"in {took:.0f}s",
                        flush=True,
                    )
                now_ms = int(time.time() * 1000)
                start = 10_000_000 * (index + 1)
                live = [
                    (r["order_id"], wire_format(schema_id, avro_bytes(schema, r)))
                    for r in orders(live_n, now_ms=now_ms, start=start, shops=live_shops)
                ]
                print(f"({scenario.key}) {scenario.title} ...", flush=True)
                timeout = max(300.0, n / 500)
                profile = args.profile if scenario.key in ("c", "h") else None
                if profile is not None:
                    profile.mkdir(parents=True, exist_ok=True)
                result = run_scenario(
                    scenario,
                    stack,
                    topic_of[scenario.key],
                    n,
                    live,
                    run_id,
                    timeout,
                    profile,
                    produce_after_join=encoded if after_join else None,
                    platform=platform,
                    expected_tenants=Counter(shops) if shops is not None else None,
                )
                results[scenario.key] = result
                if result.error:
                    print(f"    FAILED: {result.error}", flush=True)
                else:
                    print(
                        f"    {result.events_per_s:,.0f} events/s over {result.seconds:.1f}s, "
                        f"p50 {_fmt(result.p50_ms)} ms, p99 {_fmt(result.p99_ms)} ms, "
                        f"peak RSS {result.peak_rss_mb} MB, CPU {result.cpu_s} s",
                        flush=True,
                    )
                if result.requests:
                    print(
                        f"    {_fmt(result.requests_per_s)} requests/s, "
                        f"{_fmt(result.events_per_request, 1)} events/request",
                        flush=True,
                    )
                if result.tenant_check is not None:
                    print(f"    tenants: {result.tenant_check}", flush=True)
                summary = concurrency_summary(result)
                if summary is not None:
                    print(
                        f"    concurrency limit: first {summary['first']:.0f}, max {summary['max']:.0f}, "
                        f"min {summary['min']:.0f}, settled {summary['settled_median']:.0f}; in flight "
                        f"median {summary['in_flight_median']:.0f}; {result.throttled} throttled, "
                        f"{result.events_short} events short, {_dead_lettered(result):.0f} dead-lettered",
                        flush=True,
                    )
                if result.log_problems:
                    print(f"    {result.log_problems} warning/error lines in the consumer log:", flush=True)
                    for excerpt in result.log_excerpts:
                        print(f"      {excerpt}", flush=True)
                time.sleep(2)

            backlog: dict[str, Any] | None = None
            if backlog_n:
                del encoded
                took = produce_backlog(
                    stack.bootstrap, big_topic, encoded_orders(schema_id, backlog_n, 50_000_000)
                )
                print(
                    f"produced {backlog_n:,} records to {big_topic} in {took:.0f}s; draining ...", flush=True
                )
                backlog = backlog_check(stack, big_topic, backlog_n, run_id)
                print(
                    f"    {json.dumps({k: v for k, v in backlog.items() if k != 'rss_timeline_mb'})}",
                    flush=True,
                )
            else:
                print("note: QUICK run, the 1,000,000-record backlog RSS check is skipped (full run only)")
        finally:
            emulator.stop()
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    shutil.copytree(workdir / "logs", args.keep_logs, dirs_exist_ok=True)
                    shutil.copy(workdir / "emulator.log", args.keep_logs)

    ratio_rows = ratios(results)
    table = markdown(results, ratio_rows, backlog)
    mode = "quick" if args.quick else "full"
    machine = procstat.machine()
    wall_s = round(time.monotonic() - started, 1)
    report: dict[str, Any] = {
        "run": {
            "id": run_id,
            "mode": mode,
            "events": n,
            "latency_events": live_n,
            "latency_rate_per_s": LIVE_RATE,
            "partitions": PARTITIONS,
            "consumer_root": str(args.consumer_root.resolve()),
            "git_commit": _git_commit(),
            "uncommitted": _git_dirty(),
            "machine": machine,
            "load_avg_before": [round(v, 2) for v in load_before],
            "load_avg_after": [round(v, 2) for v in os.getloadavg()],
            "wall_s": wall_s,
        },
        "scenarios": {k: asdict(v) for k, v in results.items()},
        "targets": ratio_rows,
        "backlog": backlog,
        "table": table,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{run_id}-{mode}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    if args.reference:
        (RESULTS / "reference.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{table}\n")
    print(
        f"machine: {machine['cpus']} x {machine['cpu_model']}, {machine['memory_gb']} GB; load average "
        f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after; {wall_s} s; "
        f"Python {machine['python']} ({machine['python_binary']})"
    )
    print(f"results: {path.relative_to(REPO)}")
    return 0 if all(not r.error and not r.tenant_events_missing for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
