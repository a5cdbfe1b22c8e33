"""Session fixtures: one real Kafka broker and one real Schema Registry per test session.

They are started only when a test asks for them, torn down at the end of the session (also on failure
and Ctrl-C), and their child JVMs die with this process even if it is killed (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from capi_devstack import DevStack, DevStackError, Endpoints, StackOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def devstack() -> Iterator[Endpoints]:
    stack = DevStack(StackOptions())
    try:
        endpoints = stack.start()
    except DevStackError as exc:
        # The message carries the broker/registry log tail.
        pytest.fail(f"dev stack failed to start: {exc}", pytrace=False)
    try:
        yield endpoints
    finally:
        stack.stop()


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
