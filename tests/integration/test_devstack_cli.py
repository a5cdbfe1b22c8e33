"""`capi-devstack` as a user runs it: one JSON line, live endpoints, and nothing left after a signal."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "capi_devstack.cli", "--state-dir", str(tmp_path / "state"), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 120)
    assert ready, "no JSON line within 120 s"
    line = proc.stdout.readline().decode()
    return proc, json.loads(line)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the dev stack; it must exit 0 within 60 s (its services get 20 s, then SIGKILL)."""
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate(timeout=30)
        pytest.fail(f"the dev stack ran on 60 s after SIGTERM; its stderr:\n{stderr.decode()[-3000:]}")
    assert proc.stderr is not None
    assert code == 0, proc.stderr.read().decode()[-3000:]


def _wait_gone(pids: set[int], timeout_s: float) -> set[int]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = {p for p in pids if _alive(p)}
        if not left:
            return set()
        time.sleep(0.2)
    return {p for p in pids if _alive(p)}


@pytest.mark.parametrize("with_emulator", [False, True])
def test_devstack_prints_endpoints_and_sigterm_leaves_no_process(tmp_path: Path, with_emulator: bool) -> None:
    proc, endpoints = _start(tmp_path, *(["--with-emulator"] if with_emulator else []))
    try:
        expected = {"bootstrap_servers", "schema_registry_url"} | (
            {"capi_base_url"} if with_emulator else set()
        )
        assert set(endpoints) == expected
        if with_emulator:
            with urllib.request.urlopen(endpoints["capi_base_url"] + "/_emulator/stats", timeout=10) as resp:
                assert json.loads(resp.read())["events_received"] == 0
        host, port = endpoints["bootstrap_servers"].split(":")
        assert host == "127.0.0.1"
        socket.create_connection((host, int(port)), timeout=5).close()
        with urllib.request.urlopen(endpoints["schema_registry_url"] + "/subjects", timeout=10) as resp:
            assert json.loads(resp.read()) == []
        started = _descendants(proc.pid)
        assert len(started) >= (3 if with_emulator else 2)  # broker JVM, registry JVM, emulator
    finally:
        _stop(proc)
    assert _wait_gone(started, 10) == set()


def test_devstack_killed_hard_takes_its_jvms_along(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path)
    started = _descendants(proc.pid)
    assert started
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert _wait_gone(started, 20) == set()


def test_state_dir_keeps_topics_and_schemas_between_runs(tmp_path: Path) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic
    from confluent_kafka.schema_registry import Schema

    from tests.integration.pipeline_helpers import registry_client

    schema = '{"type": "record", "name": "Kept", "fields": [{"name": "a", "type": "int"}]}'
    proc, endpoints = _start(tmp_path)
    try:
        admin = AdminClient({"bootstrap.servers": endpoints["bootstrap_servers"]})
        admin.create_topics([NewTopic("kept", num_partitions=2, replication_factor=1)])["kept"].result(30)
        registry = registry_client(endpoints["schema_registry_url"])
        schema_id = registry.register_schema("kept-value", Schema(schema, "AVRO"))
    finally:
        _stop(proc)
    proc, endpoints = _start(tmp_path)
    try:
        admin = AdminClient({"bootstrap.servers": endpoints["bootstrap_servers"]})
        topics = admin.list_topics(timeout=30).topics
        assert "kept" in topics and len(topics["kept"].partitions) == 2
        registry = registry_client(endpoints["schema_registry_url"])
        schema_str = registry.get_schema(schema_id).schema_str
        assert schema_str is not None and "Kept" in schema_str
    finally:
        _stop(proc)


def test_missing_java_gives_one_line_error(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": "/nonexistent",
        "JAVA_HOME": "/nonexistent",
        "CAPI_CACHE_DIR": str(tmp_path / "empty-cache"),
    }
    # /usr/lib/jvm is searched too, so the child process empties the candidate list itself.
    code = (
        "import sys, capi_devstack.artifacts as a;"
        "a._candidates = lambda: [];"
        "from capi_devstack.cli import main; sys.exit(main([]))"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Java 17+" in lines[0] and "install" in lines[0]


def test_missing_maven_with_empty_cache_gives_one_line_error(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": "/nonexistent", "CAPI_CACHE_DIR": str(tmp_path / "empty-cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "capi_devstack.cli"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "mvn not found" in lines[0] and "install Maven" in lines[0]


def test_restart_with_clients_connected_keeps_the_ports(tmp_path: Path) -> None:
    """Connections open when the stack stops are closed by the servers, which leaves the servers' ports in
    TIME_WAIT; the restarted stack must still take its saved ports (clients reconnect there)."""
    proc, first = _start(tmp_path)
    clients: list[socket.socket] = []
    try:
        host, port = first["bootstrap_servers"].split(":")
        registry_port = int(first["schema_registry_url"].split(":")[2].split("/")[0])
        clients = [socket.create_connection((host, int(port)), timeout=5) for _ in range(3)]
        clients.append(socket.create_connection((host, registry_port), timeout=5))
        with urllib.request.urlopen(first["schema_registry_url"] + "/subjects", timeout=10) as resp:
            assert resp.status == 200
    finally:
        _stop(proc)
    try:
        proc, second = _start(tmp_path)
        try:
            assert second == first
            socket.create_connection((host, int(port)), timeout=5).close()
        finally:
            _stop(proc)
    finally:
        for client in clients:
            client.close()


def test_services_stop_together_and_one_that_ignores_sigterm_is_killed_and_named(tmp_path: Path) -> None:
    from capi_devstack.processes import ManagedProcess, stop_all

    stubborn = ManagedProcess("stubborn", ["sh", "-c", "trap '' TERM; sleep 60"], tmp_path / "stubborn.log")
    polite = [ManagedProcess(f"polite{i}", ["sleep", "60"], tmp_path / f"p{i}.log") for i in range(2)]
    time.sleep(0.3)  # the shell sets its trap
    started = time.monotonic()
    problems = stop_all([polite[0], stubborn, polite[1]], timeout_s=2)
    took = time.monotonic() - started
    assert [p.split(" (")[0] for p in problems] == ["stubborn did not exit after SIGTERM; killed"]
    assert 2 <= took < 6  # one shared deadline, not 2 s per service
    assert all(not p.alive() for p in [stubborn, *polite])
