"""Session fixtures: one real Kafka broker and one real Schema Registry per test session.

They are started only when a test asks for them, torn down at the end of the session (also on failure
and Ctrl-C), and their child JVMs die with this process even if it is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from capi_devstack import DevStack, DevStackError, Endpoints, StackOptions
from capi_devstack.stack import registry_problem

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


_STACKS: list[DevStack] = []


@pytest.fixture(scope="session")
def devstack() -> Iterator[Endpoints]:
    stack = DevStack(StackOptions())
    _STACKS.append(stack)
    try:
        endpoints = stack.start()
    except DevStackError as exc:
        # The message carries the broker/registry log tail.
        pytest.fail(f"dev stack failed to start: {exc}", pytrace=False)
    try:
        yield endpoints
    finally:
        _STACKS.remove(stack)
        stack.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """When a test on the shared dev stack fails, say whether the broker and registry still run and
    answer, with their log tails (a registry that stopped answering also dumps its JVM threads there)."""
    report = yield
    if report.when != "call" or not report.failed or not _STACKS:
        return report
    if "devstack" not in getattr(item, "fixturenames", ()):
        return report
    stack = _STACKS[-1]
    lines = []
    for proc in stack.processes:
        status = "running" if proc.alive() else f"exited ({proc.proc.returncode})"
        tail = 30
        if proc.name == "schema-registry" and proc.alive() and stack.endpoints is not None:
            problem = registry_problem(str(stack.endpoints.schema_registry_url), timeout_s=5)
            status += ", answers" if problem is None else f", does not answer ({problem})"
            if problem is not None:
                proc.signal_group(signal.SIGQUIT)  # the JVM writes a thread dump to its log
                time.sleep(2)
                tail = 300
        lines.append(f"--- {proc.name}: {status}; last lines of {proc.log_path}:\n{proc.log_tail(tail)}")
    report.sections.append(("dev stack", "\n".join(lines)))
    return report


@pytest.fixture(scope="session")
def kafka_admin(devstack: Endpoints) -> AdminClient:
    return AdminClient({"bootstrap.servers": devstack.bootstrap_servers})


@pytest.fixture
def make_topic(kafka_admin: AdminClient) -> Callable[..., str]:
    """Create a uniquely named topic and return its name."""

    def create(prefix: str = "t", partitions: int = 1) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        futures = kafka_admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(timeout=30)
        return name

    return create
