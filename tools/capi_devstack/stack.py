"""A single-node KRaft Kafka broker, Apicurio Registry and (optionally) the CAPI emulator on 127.0.0.1.

Used by the `capi-devstack` command, the pytest session fixtures, `make demo` and the benchmark.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from capi_devstack.artifacts import DevStackError, apicurio_home, find_java, kafka_libs
from capi_devstack.processes import ManagedProcess, free_port, port_is_free, stop_all, wait_until
from capi_devstack.security import SaslSslEndpoint, SaslSslListener

KAFKA_START_TIMEOUT_S = 120.0
REGISTRY_START_TIMEOUT_S = 120.0
EMULATOR_START_TIMEOUT_S = 30.0

_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.console.ref = STDOUT
logger.raft.name = kafka.server.KafkaRaftServer
logger.raft.level = INFO
"""


def registry_problem(url: str, *, timeout_s: float) -> str | None:
    """None when the registry at `url` answers `GET /subjects` with 200 within `timeout_s`, else what
    went wrong (an HTTP status, or the exception)."""
    try:
        with urllib.request.urlopen(f"{url}/subjects", timeout=timeout_s) as resp:
            return None if int(resp.status) == 200 else f"HTTP {resp.status}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"


@dataclass
class StackOptions:
    state_dir: Path | None = None
    """Keeps broker data (and registry schemas) between runs; None = fresh temporary directory."""
    with_registry: bool = True
    with_emulator: bool = False
    emulator_config: Path | None = None
    benchmark_jvm: bool = False
    """Full JIT for the broker (benchmarks); functional runs use C1 only, which starts faster."""
    kafka_heap: str = "768m"
    kafka_proxied_advertised: str | None = None
    """host:port of a TCP proxy (fault tests): the broker gets a second listener, PROXIED on
    `DevStack.ports["proxied"]`, advertised as this address, so clients bootstrapped there keep going
    through the proxy after metadata (clients reconnect to the advertised address, not the bootstrap
    one). `bootstrap_servers` stays direct."""
    sasl_ssl: bool = False
    """Also a SASL_SSL listener (SCRAM-SHA-512 users, throwaway CA): see capi_devstack.security."""


@dataclass
class Endpoints:
    bootstrap_servers: str
    schema_registry_url: str | None = None
    capi_base_url: str | None = None
    sasl_ssl: SaslSslEndpoint | None = None

    def as_json(self) -> str:
        data: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers}
        if self.schema_registry_url is not None:
            data["schema_registry_url"] = self.schema_registry_url
        if self.capi_base_url is not None:
            data["capi_base_url"] = self.capi_base_url
        if self.sasl_ssl is not None:
            data["sasl_ssl"] = self.sasl_ssl.as_dict()
        return json.dumps(data)


@dataclass
class DevStack:
    """Start with `start()`, stop with `stop()` (idempotent); also a context manager."""

    options: StackOptions = field(default_factory=StackOptions)
    endpoints: Endpoints | None = None
    processes: list[ManagedProcess] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    startup_seconds: dict[str, float] = field(default_factory=dict)
    sasl_ssl: SaslSslListener | None = None
    _tmp: str | None = None

    def __enter__(self) -> DevStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def state_dir(self) -> Path:
        if self.options.state_dir is not None:
            return self.options.state_dir
        if self._tmp is None:
            self._tmp = tempfile.mkdtemp(prefix="capi-devstack-")
        return Path(self._tmp)

    def start(self) -> Endpoints:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            ports = self.ports = self._ports()
            if self.options.sasl_ssl:
                self.sasl_ssl = SaslSslListener(self.state_dir / "sasl_ssl", ports["sasl_ssl"])
            bootstrap = self._start_kafka(ports["broker"], ports["controller"])
            registry = self._start_registry(ports["registry"]) if self.options.with_registry else None
            capi = self._start_emulator() if self.options.with_emulator else None
        except BaseException:
            self.stop()
            raise
        sasl_ssl = self.sasl_ssl.endpoint if self.sasl_ssl is not None else None
        self.endpoints = Endpoints(bootstrap, registry, capi, sasl_ssl)
        return self.endpoints

    def stop(self) -> None:
        """Stop every service together (within about 30 s even if one hangs); a service that had to be
        killed is named on stderr."""
        for problem in stop_all(self.processes):
            print(f"capi-devstack: {problem}", file=sys.stderr, flush=True)
        self.processes.clear()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- ports: stable across runs when a state dir is kept, so clients can reconnect
    def _ports(self) -> dict[str, int]:
        path = self.state_dir / "ports.json"
        if self.options.state_dir is not None and path.exists():
            saved: dict[str, int] = json.loads(path.read_text())
            if {"sasl_ssl", "proxied"} <= set(saved) and all(port_is_free(p) for p in saved.values()):
                return saved
        ports = {name: free_port() for name in ("broker", "controller", "registry", "sasl_ssl", "proxied")}
        while len(set(ports.values())) < len(ports):
            ports = {name: free_port() for name in ports}
        path.write_text(json.dumps(ports))
        return ports

    def _start_kafka(self, broker_port: int, controller_port: int) -> str:
        java = find_java(17)
        libs = kafka_libs()
        kdir = self.state_dir / "kafka"
        data = kdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "controller.listener.names": "CONTROLLER",
            "listeners": f"PLAINTEXT://127.0.0.1:{broker_port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{broker_port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "log.cleaner.dedupe.buffer.size": "16777216",
            "auto.create.topics.enable": "true",
        }
        if self.options.kafka_proxied_advertised is not None:
            props["listeners"] += f",PROXIED://127.0.0.1:{self.ports['proxied']}"
            props["advertised.listeners"] += f",PROXIED://{self.options.kafka_proxied_advertised}"
            props["listener.security.protocol.map"] += ",PROXIED:PLAINTEXT"
        if self.sasl_ssl is not None:
            props = self.sasl_ssl.broker_properties(props)
        server_props = kdir / "server.properties"
        server_props.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = kdir / "log4j2.properties"
        log4j.write_text(_LOG4J2)
        jvm = [
            java.path,
            "-Xms256m",
            f"-Xmx{self.options.kafka_heap}",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j.resolve()}",
            "-cp",
            f"{libs}/*",
        ]
        if not self.options.benchmark_jvm:
            jvm.insert(1, "-XX:TieredStopAtLevel=1")
        started = time.monotonic()
        cluster_file = kdir / "cluster.id"
        if not cluster_file.exists():
            cluster_file.write_text(base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("="))
        fmt = subprocess.run(
            [
                *jvm,
                "kafka.tools.StorageTool",
                "format",
                # "=" form: a base64url cluster ID may start with "-", which argparse takes for an option.
                f"--cluster-id={cluster_file.read_text().strip()}",
                "-c",
                str(server_props),
                "--ignore-formatted",
                *(self.sasl_ssl.format_args() if self.sasl_ssl is not None else []),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if fmt.returncode != 0:
            raise DevStackError(f"kafka storage format failed:\n{(fmt.stdout + fmt.stderr)[-3000:]}")
        proc = ManagedProcess("kafka", [*jvm, "kafka.Kafka", str(server_props)], kdir / "kafka.log")
        self.processes.append(proc)
        bootstrap = f"127.0.0.1:{broker_port}"

        def ready() -> bool:
            from confluent_kafka.admin import AdminClient

            # A plain TCP accept first: librdkafka logs every refused connection on stderr.
            with socket.create_connection(("127.0.0.1", broker_port), timeout=1):
                pass
            admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 2000})
            metadata = admin.list_topics(timeout=2)
            return len(metadata.brokers) > 0

        if not wait_until(ready, process=proc, timeout_s=KAFKA_START_TIMEOUT_S):
            raise DevStackError(f"Kafka broker did not become ready; log tail:\n{proc.log_tail()}")
        if self.sasl_ssl is not None and (problem := self.sasl_ssl.wait_ready(KAFKA_START_TIMEOUT_S)):
            raise DevStackError(f"SASL_SSL listener not usable: {problem}; log tail:\n{proc.log_tail()}")
        self.startup_seconds["kafka"] = time.monotonic() - started
        return bootstrap

    def _start_registry(self, port: int) -> str:
        java = find_java(21)
        app = apicurio_home()
        rdir = self.state_dir / "registry"
        rdir.mkdir(parents=True, exist_ok=True)
        argv = [
            java.path,
            "-Xmx384m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dquarkus.http.host=127.0.0.1",
            f"-Dquarkus.http.port={port}",
            "-Dquarkus.log.level=WARN",
            # Quarkus' management interface (enabled at build time) would bind a fixed 0.0.0.0:9000: two
            # registries on one machine (tests beside a benchmark) would collide, and nothing should
            # listen beyond loopback.
            "-Dquarkus.management.host=127.0.0.1",
            f"-Dquarkus.management.port={free_port()}",
        ]
        if self.options.state_dir is not None:
            # Keep schemas next to the broker data: records on disk reference schema IDs.
            db = (rdir / "registry-db").resolve()
            argv += [
                "-Dapicurio.storage.kind=sql",
                "-Dapicurio.storage.sql.kind=h2",
                f"-Dapicurio.datasource.url=jdbc:h2:file:{db};DB_CLOSE_ON_EXIT=FALSE",
                "-Dapicurio.datasource.username=sa",
                "-Dapicurio.datasource.password=sa",
            ]
        argv += ["-jar", str(app / "quarkus-run.jar")]
        started = time.monotonic()
        proc = ManagedProcess("schema-registry", argv, rdir / "registry.log", cwd=rdir)
        self.processes.append(proc)
        url = f"http://127.0.0.1:{port}/apis/ccompat/v7"

        def ready() -> bool:
            return registry_problem(url, timeout_s=2) is None

        if not wait_until(ready, process=proc, timeout_s=REGISTRY_START_TIMEOUT_S):
            raise DevStackError(f"Schema Registry did not become ready; log tail:\n{proc.log_tail()}")
        self.startup_seconds["schema_registry"] = time.monotonic() - started
        return url

    def _start_emulator(self) -> str:
        argv = [sys.executable, "-m", "capi_emulator.cli", "--host", "127.0.0.1", "--port", "0"]
        if self.options.emulator_config is not None:
            argv += ["--config", str(self.options.emulator_config)]
        edir = self.state_dir / "emulator"
        edir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        # The emulator announces its URL as one JSON line on stdout; its logs go to stderr.
        proc = ManagedProcess(
            "capi-emulator",
            argv,
            edir / "emulator.log",
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout_pipe=True,
        )
        self.processes.append(proc)
        line = proc.read_line(EMULATOR_START_TIMEOUT_S)
        try:
            announced: dict[str, Any] = json.loads(line)
            url = str(announced["capi_base_url"])
        except (ValueError, KeyError) as exc:
            raise DevStackError(f"CAPI emulator did not start; log tail:\n{proc.log_tail()}") from exc
        self.startup_seconds["capi_emulator"] = time.monotonic() - started
        return url

    # -- faults (tests/chaos): broker and registry stopped and started again on the same data and ports
    def _find(self, name: str) -> ManagedProcess:
        for proc in self.processes:
            if proc.name == name:
                return proc
        raise DevStackError(f"{name} is not running")

    def _restart_check(self, name: str) -> None:
        if any(proc.name == name for proc in self.processes):
            raise DevStackError(f"{name} is already running")

    def kafka_kill(self) -> None:
        """SIGKILL the broker (a crash: no controlled shutdown; the log is recovered on the next start)."""
        proc = self._find("kafka")
        self.processes.remove(proc)
        proc.kill()

    def kafka_stop(self) -> None:
        """Controlled shutdown of the broker (SIGTERM)."""
        proc = self._find("kafka")
        self.processes.remove(proc)
        proc.stop(timeout_s=60)

    def kafka_pause(self) -> None:
        """SIGSTOP the broker: connections stay open and nothing answers (a long GC pause, a frozen VM)."""
        self._find("kafka").signal_group(signal.SIGSTOP)

    def kafka_resume(self) -> None:
        self._find("kafka").signal_group(signal.SIGCONT)

    def kafka_start(self) -> str:
        """Start the broker again on the same data directory and ports; returns the bootstrap servers."""
        self._restart_check("kafka")
        return self._start_kafka(self.ports["broker"], self.ports["controller"])

    def registry_stop(self) -> None:
        proc = self._find("schema-registry")
        self.processes.remove(proc)
        proc.stop()

    def registry_start(self) -> str:
        """Start the registry again on the same port (with a state dir, on the same schemas too)."""
        self._restart_check("schema-registry")
        return self._start_registry(self.ports["registry"])
