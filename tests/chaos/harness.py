"""The fault harness: a dev stack behind toxiproxy, a paced producer, the consumer group, and the invariants.

One `ChaosStack` (broker with a state dir so it restarts on the same data and ports, registry, CAPI
emulator, toxiproxy) serves every scenario of a run; each scenario gets its own topic, consumer group and
event ids, and leaves the stack healed. The consumer reaches the broker through the toxiproxy `kafka`
proxy (the broker advertises the proxy's address on its PROXIED listener, so reconnections after
metadata go through it too) and the emulator through the `capi` proxy; the harness itself (producer,
offset checks, dead-letter reads, emulator admin calls) talks to them directly.

Invariants checked for every scenario (`Result.violations`):
- lost: every produced event id was accepted by the emulator or is in the dead-letter topic;
- dead-lettered: only the deliberately undecodable records (`poison-*`), never a good event;
- committed offsets never pass an unsettled record (sampled while the scenario runs: the group's
  committed offsets first, then what the emulator accepted and the dead-letter topic holds);
- the scenario ends (everything produced is committed) within its bound;
- scenario-specific expectations (no duplicates after clean bounces, exit codes, readiness...).
"""

from __future__ import annotations

import contextlib
import json
import statistics
import threading
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry import Schema

from bench.procstat import memory_kb
from bench.workload import ORDER_SCHEMA_PATH, avro_bytes, order_schema, orders, wire_format
from capi_devstack import DevStack, Endpoints, StackOptions
from capi_devstack.processes import free_port
from tests.chaos.toxiproxy import Toxiproxy
from tests.integration.pipeline_helpers import (
    ConsumerProcess,
    clear_faults,
    http_get,
    metrics_port,
    registry_client,
    write_config,
)

KAFKA_PROXY = "kafka"
CAPI_PROXY = "capi"
POISON_PREFIX = "poison-"
LEAVE_TIMEOUT_S = 150.0
"""How long a member may take to exit on SIGTERM: its drain deadline, then at most twice the group
wait (session timeout + 5 s: the final commit, then leaving outside a join)."""
QUIET = {"log_level": 2}
"""The harness's own clients: no librdkafka connection errors on stderr while the broker is away."""


class ChaosStack:
    """Broker, registry, emulator and toxiproxy for a whole run of scenarios."""

    def __init__(self, work_dir: Path, *, emulator_config: Path | None = None) -> None:
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.toxiproxy = Toxiproxy(work_dir / "toxiproxy.log")
        kafka_listen = free_port()
        self.stack = DevStack(
            StackOptions(
                state_dir=work_dir / "state",
                with_emulator=True,
                emulator_config=emulator_config,
                kafka_proxied_advertised=f"127.0.0.1:{kafka_listen}",
            )
        )
        try:
            endpoints = self.stack.start()
            assert endpoints.schema_registry_url is not None and endpoints.capi_base_url is not None
            self.bootstrap = endpoints.bootstrap_servers
            self.registry_url = endpoints.schema_registry_url
            self.emulator_url = endpoints.capi_base_url
            self.kafka_proxy = self.toxiproxy.create(
                KAFKA_PROXY, kafka_listen, f"127.0.0.1:{self.stack.ports['proxied']}"
            )
            emulator_hostport = self.emulator_url.removeprefix("http://")
            capi_listen = self.toxiproxy.create(CAPI_PROXY, free_port(), emulator_hostport)
            self.capi_proxy_url = f"http://{capi_listen}"
        except BaseException:
            self.stop()
            raise
        self.admin = AdminClient({"bootstrap.servers": self.bootstrap, **QUIET})

    def consumer_endpoints(self) -> Endpoints:
        """What the consumer is configured with: the broker through toxiproxy, the registry direct."""
        return Endpoints(self.kafka_proxy, self.registry_url)

    def heal(self) -> None:
        """Undo every fault: proxies without toxics, broker and registry running, no emulator fault."""
        self.toxiproxy.reset()
        names = {proc.name for proc in self.stack.processes}
        if "kafka" in names:
            self.stack.kafka_resume()
        else:
            self.stack.kafka_start()
        if "schema-registry" not in names:
            self.stack.registry_start()
        clear_faults(self.emulator_url)

    def reset_emulator(self) -> None:
        emulator_post(self.emulator_url, "/_emulator/reset")

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.stack.kafka_resume()
        self.stack.stop()
        self.toxiproxy.stop()


def emulator_post(base_url: str, path: str) -> None:
    req = urllib.request.Request(f"{base_url}{path}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=30):
        pass


def emulator_json(base_url: str, path: str) -> Any:
    with urllib.request.urlopen(f"{base_url}{path}", timeout=120) as resp:
        return json.loads(resp.read())


def accepted_ids(base_url: str) -> Counter[str]:
    """How often the emulator accepted each event id (its store of accepted events)."""
    events = emulator_json(base_url, "/_emulator/events")["events"]
    return Counter(str(e["event"]["event_id"]) for e in events)


class DeadLetters:
    """The keys (event ids) in a dead-letter topic, read incrementally."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.keys: list[str] = []
        self._lock = threading.Lock()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                **QUIET,
                "group.id": f"chaos-dlq-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])

    def poll(self, budget_s: float = 1.0) -> set[str]:
        with self._lock:
            deadline = time.monotonic() + budget_s
            while time.monotonic() < deadline:
                msg = self._consumer.poll(0.1)
                if msg is None:
                    break
                if msg.error() is None:
                    self.keys.append((msg.key() or b"").decode())
            return set(self.keys)

    def close(self) -> None:
        with self._lock:
            self._consumer.close()


class OffsetReader:
    """Committed offsets of a group and the topic's end offsets, on the direct listener."""

    def __init__(self, bootstrap: str, group_id: str, topic: str, partitions: int) -> None:
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self._lock = threading.Lock()
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, **QUIET, "group.id": group_id, "enable.auto.commit": False}
        )

    def committed(self, timeout_s: float = 5) -> dict[int, int]:
        with self._lock:
            found = self._consumer.committed(self._tps, timeout=timeout_s)
        return {tp.partition: max(tp.offset, 0) for tp in found}

    def ends(self, timeout_s: float = 5) -> dict[int, int]:
        with self._lock:
            return {
                tp.partition: self._consumer.get_watermark_offsets(tp, timeout=timeout_s)[1]
                for tp in self._tps
            }

    def close(self) -> None:
        with self._lock:
            self._consumer.close()


class PacedProducer:
    """Produces `total` unique orders at `rate` events/s in a thread; records where each one landed.

    Values are Confluent wire format encoded locally with a schema id registered up front, so producing
    goes on while the registry is down; `encoding` can be switched mid-stream (a new writer schema).
    Every `poison_every`-th record is undecodable (key `poison-N`): it must end in the dead-letter topic.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        run_id: str,
        total: int,
        rate: float,
        schema_id: int,
        poison_every: int,
    ) -> None:
        self.topic = topic
        self.run_id = run_id
        self.total = total
        self.rate = rate
        self.encoding: tuple[int, Any] = (schema_id, order_schema())
        """(writer schema id, parsed schema): replace the tuple to switch the writer schema mid-stream."""
        self.poison_every = poison_every
        self.sent = 0
        self.located: dict[tuple[int, int], str] = {}
        self.produced: set[str] = set()
        self.failed: list[str] = []
        self.done = threading.Event()
        self._stop = threading.Event()
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                **QUIET,
                "enable.idempotence": True,  # a broker kill must not duplicate records in Kafka itself
                "linger.ms": 20,
                "message.timeout.ms": 600_000,
            }
        )
        self._thread = threading.Thread(target=self._run, name="chaos-producer", daemon=True)

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def _delivered(self, err: Any, msg: Any) -> None:
        key = (msg.key() or b"").decode()
        if err is not None:
            self.failed.append(f"{key}: {err}")
            return
        self.located[(msg.partition(), msg.offset())] = key
        self.produced.add(key)

    def _run(self) -> None:
        started = time.monotonic()
        now_ms = int(time.time() * 1000)
        records = orders(self.total, now_ms=now_ms, seed=hash(self.run_id) & 0xFFFF)
        try:
            for i, record in enumerate(records):
                if self._stop.is_set():
                    break
                ahead = started + i / self.rate - time.monotonic()
                if ahead > 0:
                    time.sleep(ahead)
                if self.poison_every and i % self.poison_every == self.poison_every // 2:
                    key = f"{POISON_PREFIX}{self.run_id}-{i:07d}"
                    value = b"not avro: " + key.encode()
                else:
                    key = f"{self.run_id}-{i:07d}"
                    record["order_id"] = key
                    schema_id, schema = self.encoding
                    value = wire_format(schema_id, avro_bytes(schema, record))
                while True:
                    try:
                        self._producer.produce(
                            self.topic, key=key.encode(), value=value, on_delivery=self._delivered
                        )
                        break
                    except BufferError:  # the local queue is full while the broker is away
                        self._producer.poll(0.1)
                self.sent += 1
                self._producer.poll(0)
            while self._producer.flush(1) > 0 and not self._stop.is_set():
                pass
        finally:
            self.done.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        self._producer.flush(10)


@dataclass
class Members:
    """The consumer group's members (`capi-consumer run` processes), started, bounced and watched."""

    config: Path
    log_dir: Path
    procs: list[ConsumerProcess] = field(default_factory=list)
    started: int = 0
    unexpected_exits: list[str] = field(default_factory=list)
    _expected_exit: set[int] = field(default_factory=set)

    def start(self) -> ConsumerProcess:
        self.started += 1
        proc = ConsumerProcess(self.config, self.log_dir / f"consumer-{self.started}.log")
        self.procs.append(proc)
        return proc

    def alive(self) -> list[ConsumerProcess]:
        return [p for p in self.procs if p.proc.poll() is None]

    def staying(self, *, starting: bool = False) -> list[ConsumerProcess]:
        """Alive and not told to stop (a member leaving may take a while: its drain, then the group);
        unless `starting`, only those running the service already (they have logged: a SIGTERM before
        Python has installed its handlers kills the process, exit -15)."""
        return [
            p
            for p in self.alive()
            if p.proc.pid not in self._expected_exit
            and (starting or (p.log_path.exists() and p.log_path.stat().st_size > 0))
        ]

    def terminate(self, proc: ConsumerProcess, timeout_s: float = LEAVE_TIMEOUT_S) -> int:
        self._expected_exit.add(proc.proc.pid)
        return proc.terminate(timeout_s)

    def kill(self, proc: ConsumerProcess) -> None:
        self._expected_exit.add(proc.proc.pid)
        proc.kill()

    def exited(self) -> list[tuple[ConsumerProcess, int]]:
        """Members that exited on their own since the last call (noted in `unexpected_exits`)."""
        found = []
        for proc in self.procs:
            code = proc.proc.poll()
            if code is not None and proc.proc.pid not in self._expected_exit:
                self._expected_exit.add(proc.proc.pid)
                tail = " | ".join(proc.log().splitlines()[-3:])[-600:]
                self.unexpected_exits.append(f"{proc.log_path.name} exit {code}: {tail}")
                found.append((proc, code))
        return found

    def stop_all(self) -> None:
        for proc in self.alive():
            with contextlib.suppress(Exception):
                self.terminate(proc)
        for proc in self.procs:
            if proc.proc.poll() is None:
                proc.kill()


SOAK_RSS_WINDOW_S = 60.0


def resent_after_timeout(log_dir: Path) -> int:
    """Events the members' logs say they sent again because a request timed out."""
    total = 0
    for path in sorted(log_dir.glob("consumer-*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if '"retrying batch"' not in line or "request timed out" not in line:
                continue
            try:
                total += int(json.loads(line).get("events", 0))
            except ValueError:
                continue
    return total


@dataclass
class Result:
    scenario: str
    events: int = 0
    lost: int = 0
    duplicates: int = 0
    resent_after_timeout: int = 0
    """Events in batches the members sent again after the request timed out (Meta may have accepted
    the first one): the duplicates a timeout explains, whatever the scenario's fault."""
    dead_lettered: int = 0
    recover_s: float | None = None
    elapsed_s: float = 0.0
    rss_start_mb: float | None = None
    rss_peak_mb: float | None = None
    rss_end_mb: float | None = None
    rss_series: list[tuple[float, float]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations


class Run:
    """One scenario running: what a fault function gets to act on the stack, the members and the clock."""

    def __init__(self, chaos: ChaosStack, scenario: Any, work_dir: Path, *, soak: bool = False) -> None:
        self.chaos = chaos
        self.scenario = scenario
        self.soak = soak
        self.work_dir = work_dir
        work_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = f"{scenario.name}-{uuid.uuid4().hex[:6]}"
        self.topic = f"chaos-{self.run_id}"
        self.group_id = f"g-{self.run_id}"
        self.result = Result(scenario.name)
        self.heal_at: float | None = None
        self._heal_ends: dict[int, int] | None = None
        self._stop = threading.Event()
        self.t0 = time.monotonic()

    # -- helpers for fault functions
    def note(self, text: str) -> None:
        self.result.notes.append(text)

    def violation(self, text: str) -> None:
        self.result.violations.append(text)

    def sleep(self, seconds: float) -> None:
        """Sleep, restarting members that died on their own (a supervisor such as Kubernetes would)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.supervise()
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))

    def supervise(self) -> list[tuple[ConsumerProcess, int]]:
        exited = self.members.exited()
        for _proc, _code in exited:
            if self.scenario.restart_on_exit:
                self.members.start()
        return exited

    def wait_produced(self, fraction: float) -> None:
        target = int(self.scenario.events * fraction)
        while self.producer.sent < target and not self.producer.done.is_set():
            self.sleep(0.2)

    def healed(self) -> None:
        """The fault is over: time to recover counts from now."""
        self.heal_at = time.monotonic()
        self._heal_ends = None

    # -- the scenario
    def execute(self) -> Result:
        sc = self.scenario
        chaos = self.chaos
        try:
            chaos.reset_emulator()
            chaos.admin.create_topics(
                [NewTopic(self.topic, num_partitions=sc.partitions, replication_factor=1)]
            )[self.topic].result(30)
            if sc.prepare is not None:
                sc.prepare(self)
            registry = registry_client(chaos.registry_url)
            self.schema_id = registry.register_schema(
                f"{self.topic}-value", Schema(ORDER_SCHEMA_PATH.read_text(), "AVRO")
            )
            config = write_config(
                self.work_dir,
                chaos.consumer_endpoints(),
                chaos.capi_proxy_url,
                {self.topic: "order"},
                group_id=self.group_id,
                extra=sc.consumer_extra,
            )
            self.members = Members(config, self.work_dir)
            self.offsets = OffsetReader(chaos.bootstrap, self.group_id, self.topic, sc.partitions)
            self.dead_letters = DeadLetters(chaos.bootstrap, f"{self.topic}.dlq", sc.partitions)
            self.producer = PacedProducer(
                chaos.bootstrap, self.topic, self.run_id, sc.events, sc.rate, self.schema_id, sc.poison_every
            )
            if sc.start_members:
                for _ in range(sc.members):
                    self.members.start()
            monitor = threading.Thread(target=self._monitor, name="chaos-monitor", daemon=True)
            monitor.start()
            self.t0 = time.monotonic()
            self.producer.start()
            try:
                sc.fault(self)
            except Exception as exc:
                self.violation(f"fault step failed: {type(exc).__name__}: {exc}")
            if self.heal_at is None:
                self.healed()
            chaos.heal()
            self._wait_settled()
            self._stop.set()
            monitor.join(30)
            self._finish()
        except Exception as exc:
            self.violation(f"harness error: {type(exc).__name__}: {exc}")
        finally:
            self._stop.set()
            self._cleanup()
        self.result.elapsed_s = round(time.monotonic() - self.t0, 1)
        return self.result

    def _wait_settled(self) -> None:
        """Until the producer is done and the committed offsets reach the end of every partition."""
        deadline = self.t0 + self.scenario.bound_s
        while time.monotonic() < deadline:
            self.supervise()
            if self.producer.done.is_set():
                try:
                    if self._covered(self.offsets.ends()):
                        if self.result.recover_s is None and self.heal_at is not None:
                            # Settled before the monitor's next sample: at most this long.
                            self.result.recover_s = round(time.monotonic() - self.heal_at, 1)
                        return
                except Exception:  # the broker may still be starting
                    pass
            time.sleep(0.5)
        self.violation(
            f"not settled within the bound of {self.scenario.bound_s:.0f}s "
            f"(produced {len(self.producer.produced)} of {self.scenario.events})"
        )

    def _covered(self, ends: dict[int, int]) -> bool:
        committed = self.offsets.committed()
        return all(committed.get(p, 0) >= end for p, end in ends.items())

    def _monitor(self) -> None:
        """Samples RSS, the recovery point and (not in the soak) committed offsets against settled records."""
        last_check = 0.0
        interval = 30.0 if self.soak else 4.0
        while not self._stop.wait(1.0):
            now = time.monotonic()
            rss = sum(memory_kb(p.proc.pid).get("VmRSS", 0) for p in self.members.alive())
            if rss:
                self.result.rss_series.append((round(now - self.t0, 1), round(rss / 1024, 1)))
            try:
                if self.heal_at is not None and self.result.recover_s is None:
                    if self._heal_ends is None:
                        self._heal_ends = self.offsets.ends(timeout_s=2)
                    if self._covered(self._heal_ends):
                        self.result.recover_s = round(time.monotonic() - self.heal_at, 1)
                if not self.soak and now - last_check >= interval:
                    last_check = now
                    self._check_committed_settled()
            except Exception:  # the broker may be down: sample again later
                continue

    def _check_committed_settled(self) -> None:
        committed = self.offsets.committed(timeout_s=2)
        settled = set(accepted_ids(self.chaos.emulator_url)) | self.dead_letters.poll(0.5)
        for (partition, offset), key in list(self.producer.located.items()):
            if offset < committed.get(partition, 0) and key not in settled:
                self.violation(
                    f"committed offset {committed[partition]} of partition {partition} passed "
                    f"the unsettled record at offset {offset} ({key})"
                )
                return

    def _finish(self) -> None:
        res = self.result
        produced = self.producer.produced
        res.events = len(produced)
        if self.producer.failed:
            res.notes.append(f"{len(self.producer.failed)} records not produced: {self.producer.failed[:3]}")
        dlq = self.dead_letters.poll(5.0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not {k for k in produced if k.startswith(POISON_PREFIX)} <= dlq:
            dlq = self.dead_letters.poll(1.0)
        if self.soak:
            self._finish_counts(dlq)
        else:
            accepted = accepted_ids(self.chaos.emulator_url)
            lost = produced - set(accepted) - dlq
            res.lost = len(lost)
            res.duplicates = sum(n - 1 for key, n in accepted.items() if n > 1 and key in produced)
            if lost:
                self.violation(f"{len(lost)} events lost, e.g. {sorted(lost)[:3]}")
        res.dead_lettered = len(dlq & produced)
        wrongly = {k for k in dlq & produced if not k.startswith(POISON_PREFIX)}
        if wrongly:
            self.violation(f"{len(wrongly)} good events dead-lettered, e.g. {sorted(wrongly)[:3]}")
        self._rss_summary()
        start, end = res.rss_start_mb, res.rss_end_mb
        if self.soak and start is not None and end is not None and end > start * 1.1:
            self.violation(
                f"RSS grew from {start:.0f} MB (median of the minute after warm-up) to {end:.0f} MB "
                "(median of the last minute): more than 10 %"
            )
        exits = self.members.unexpected_exits
        if exits and not self.scenario.exits_allowed:
            self.violation(f"{len(exits)} unexpected consumer exits: {exits[0]}")
        elif exits:
            res.notes.append(f"{len(exits)} consumer exits: {exits[0]}")
        res.resent_after_timeout = resent_after_timeout(self.members.log_dir)
        unexplained = res.duplicates - res.resent_after_timeout
        if self.scenario.expect_no_duplicates and unexplained > 0:
            self.violation(
                f"{res.duplicates} duplicates where none are expected "
                f"({res.resent_after_timeout} events were resent after a request timed out)"
            )
        if self.scenario.check is not None:
            self.scenario.check(self)

    def _finish_counts(self, dlq: set[str]) -> None:
        """The soak: 1M+ events exceed the emulator's store, so count: accepted once = received - duplicates
        (the emulator flags a repeat within its dedup memory of `max_stored_events` ids)."""
        stats = emulator_json(self.chaos.emulator_url, "/_emulator/stats")
        produced = self.producer.produced
        unique = int(stats["events_received"]) - int(stats["duplicates"])
        good = len([k for k in produced if not k.startswith(POISON_PREFIX)])
        self.result.duplicates = int(stats["duplicates"])
        self.result.lost = max(0, good - unique)
        if unique > good:
            self.result.notes.append(f"{unique - good} repeats older than the emulator's dedup memory")
        if self.result.lost:
            self.violation(
                f"{self.result.lost} events lost (count: {good} good produced, {unique} accepted once)"
            )

    def _rss_summary(self) -> None:
        series = self.result.rss_series
        if not series:
            return
        warm = [mb for t, mb in series if t >= self.scenario.warmup_s] or [mb for _, mb in series]
        self.result.rss_start_mb = warm[0]
        self.result.rss_peak_mb = max(mb for _, mb in series)
        self.result.rss_end_mb = series[-1][1]
        if self.soak:
            # RSS swings by tens of MB within seconds as faults come and go (events in flight during
            # a catch-up): one sample says little. The soak compares the median of the minute after
            # the warm-up with the median of the last minute (samples every second).
            w0, last = self.scenario.warmup_s, series[-1][0]
            start = [mb for t, mb in series if w0 <= t < w0 + SOAK_RSS_WINDOW_S]
            end = [mb for t, mb in series if t > last - SOAK_RSS_WINDOW_S]
            if start and end:
                self.result.rss_start_mb = statistics.median(start)
                self.result.rss_end_mb = statistics.median(end)

    def _cleanup(self) -> None:
        with contextlib.suppress(Exception):
            self.members.stop_all()
        with contextlib.suppress(Exception):
            self.producer.stop()
        with contextlib.suppress(Exception):
            self.chaos.heal()
        for closer in ("offsets", "dead_letters"):
            with contextlib.suppress(Exception):
                getattr(self, closer).close()

    # -- checks fault functions use
    def probe(self, proc: ConsumerProcess, path: str = "/readyz") -> tuple[int, str]:
        """(status, body) of the consumer's operator endpoint; status 0 when it does not answer within 5 s."""
        port = metrics_port(proc)
        try:
            status, body = http_get(f"http://127.0.0.1:{port}{path}", timeout_s=5)
        except OSError as exc:  # URLError, a timeout, a refused connection
            return 0, f"no answer within 5 s ({type(exc).__name__})"
        return status, body.decode(errors="replace")
