"""The service against a broker secured as production runs it: SASL_SSL, SCRAM-SHA-512, a private CA.

The module starts its own broker with the dev stack's SASL_SSL listener (the session's stack stays
plain; its Schema Registry is shared). The service reads the password from a file and the CA from a
file. With the right ones, events flow and offsets are committed; with a wrong password or a CA that
did not sign the broker's certificate, it logs one clear error naming the cause, stays up and not
ready, commits nothing, and never logs a password.
"""

from __future__ import annotations

import json
import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.admin import AdminClient

from capi_devstack import DevStack, Endpoints, StackOptions
from capi_devstack.cli import build_parser
from capi_devstack.samples import Sample, order
from capi_devstack.security import SaslSslEndpoint, write_ca
from capi_emulator.server import RunningEmulator
from tests.integration.pipeline_helpers import (
    ConsumerProcess,
    committed_total,
    emulator_events,
    http_get,
    metrics_port,
    produce,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.integration

EVENTS = 5
WATCH_S = 15.0
"""How long a refused consumer is watched: longer than a dead-letter monitor check (10 s timeout)."""


@pytest.fixture(scope="module")
def secured() -> Iterator[DevStack]:
    """A broker with the SASL_SSL listener (a start-up failure's message carries its log tail)."""
    with DevStack(StackOptions(sasl_ssl=True, with_registry=False)) as stack:
        yield stack


def _listener(stack: DevStack) -> SaslSslEndpoint:
    assert stack.endpoints is not None and stack.endpoints.sasl_ssl is not None
    return stack.endpoints.sasl_ssl


def _plain(stack: DevStack, devstack: Endpoints | None = None) -> Endpoints:
    """The secured broker's PLAINTEXT listener (for the fixtures) with the session's registry."""
    assert stack.endpoints is not None
    return Endpoints(stack.endpoints.bootstrap_servers, devstack.schema_registry_url if devstack else None)


def _run(
    tmp_path: Path,
    stack: DevStack,
    devstack: Endpoints,
    emulator: RunningEmulator,
    name: str,
    *,
    password_file: Path,
    ca: Path,
) -> tuple[ConsumerProcess, str]:
    """Produce EVENTS orders to a new topic, then start the service on it through SASL_SSL."""
    listener = _listener(stack)
    topic = f"secured-{name}-{secrets.token_hex(4)}"
    now_ms = int(time.time() * 1000)
    samples = [Sample("order", order(i, now_ms=now_ms, rng=random.Random(i))) for i in range(EVENTS)]
    assert produce(_plain(stack, devstack), samples, {topic: "order"}) == EVENTS
    kafka: dict[str, Any] = {
        "bootstrap_servers": listener.bootstrap_servers,
        "properties": {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": listener.mechanism,
            "sasl.username": listener.username,
            "ssl.ca.location": str(ca),
        },
        "sasl_password_file": str(password_file),
    }
    config = write_config(
        tmp_path,
        _plain(stack, devstack),
        emulator.base_url,
        {topic: "order"},
        group_id=name,
        extra={"kafka": kafka},
    )
    return ConsumerProcess(config, tmp_path / f"{name}.log", env={"CAPI_LOG_LEVEL": "DEBUG"}), topic


def _readyz(port: int) -> tuple[int, dict[str, Any]]:
    status, body = http_get(f"http://127.0.0.1:{port}/readyz")
    answer: dict[str, Any] = json.loads(body)
    return status, answer


def _lines(consumer: ConsumerProcess) -> list[dict[str, Any]]:
    """Every complete log line, each of them JSON (librdkafka's too: none goes to stderr raw)."""
    text = consumer.log()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines() if line.strip()]


def test_devstack_announces_the_secured_listener_and_both_users_log_in(secured: DevStack) -> None:
    assert build_parser().parse_args(["--sasl-ssl"]).sasl_ssl
    listener = _listener(secured)
    assert secured.endpoints is not None
    announced = json.loads(secured.endpoints.as_json())["sasl_ssl"]
    assert announced == {
        "bootstrap_servers": listener.bootstrap_servers,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "ca_location": str(listener.ca_location),
        "username": "capi-consumer",
        "password_file": str(listener.password_file),
    }
    assert listener.password_file.stat().st_mode & 0o077 == 0
    assert listener.ca_location.read_text().startswith("-----BEGIN CERTIFICATE-----")
    for admin in (False, True):
        client = AdminClient(listener.client_properties(admin=admin))
        assert client.list_topics(timeout=10).brokers


def test_events_flow_over_sasl_ssl_with_password_and_ca_from_files(
    tmp_path: Path, secured: DevStack, devstack: Endpoints, emulator: RunningEmulator
) -> None:
    listener = _listener(secured)
    consumer, topic = _run(
        tmp_path,
        secured,
        devstack,
        emulator,
        "sasl-ok",
        password_file=listener.password_file,
        ca=listener.ca_location,
    )
    try:
        port = metrics_port(consumer)
        wait_for(
            lambda: len(emulator_events(emulator.base_url)) >= EVENTS, 60, f"{EVENTS} events at the emulator"
        )
        wait_for(
            lambda: committed_total(_plain(secured).bootstrap_servers, "sasl-ok", topic, 1) == EVENTS,
            30,
            "offsets committed",
        )
        assert _readyz(port)[0] == 200
        assert {e["event"]["event_id"] for e in emulator_events(emulator.base_url)} == {
            f"ord-{i:08d}" for i in range(EVENTS)
        }
    finally:
        code = consumer.terminate()
    assert code == 0, consumer.log()[-3000:]
    log = consumer.log()
    assert listener.password_file.read_text().strip() not in log
    assert not [line for line in _lines(consumer) if line["logger"] == "consumer.kafka_errors"]


@pytest.mark.parametrize("case", ["wrong_password", "untrusted_ca"])
def test_refused_connection_is_one_clear_error_not_ready_and_nothing_committed(
    tmp_path: Path, secured: DevStack, devstack: Endpoints, emulator: RunningEmulator, case: str
) -> None:
    listener = _listener(secured)
    real_password = listener.password_file.read_text().strip()
    wrong_password = "wrong-" + secrets.token_hex(12)
    if case == "wrong_password":
        password_file, ca = tmp_path / "wrong.password", listener.ca_location
        password_file.write_text(wrong_password + "\n")
        cause = "authentication failed"
    else:
        password_file, ca = (
            listener.password_file,
            write_ca(tmp_path / "other-ca.pem", "another throwaway CA"),
        )
        cause = "TLS certificate verification failed"
    group = f"sasl-{case.replace('_', '-')}"
    consumer, topic = _run(tmp_path, secured, devstack, emulator, group, password_file=password_file, ca=ca)
    started = time.monotonic()
    try:
        port = metrics_port(consumer)

        def refusals() -> list[dict[str, Any]]:
            return [line for line in _lines(consumer) if line["msg"].startswith("kafka connection refused")]

        wait_for(lambda: bool(refusals()), 20, "the refused connection's error line", interval_s=0.2)
        answers = []
        while time.monotonic() - started < WATCH_S:
            answers.append(_readyz(port))
            assert consumer.proc.poll() is None, "the service must stay up (not ready), not exit"
            time.sleep(1)
        assert all(status == 503 for status, _ in answers), answers
        assert cause in answers[-1][1]["reason"], answers[-1]
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # alive: no restart wanted
        (refusal,) = refusals()  # one line, however many attempts librdkafka made
        assert refusal["level"] == "error" and cause in refusal["msg"], refusal
        assert committed_total(_plain(secured).bootstrap_servers, group, topic, 1) == 0
        assert emulator_events(emulator.base_url) == []
    finally:
        code = consumer.terminate()
    assert code == 0, consumer.log()[-3000:]
    lines = _lines(consumer)
    retries = [line for line in lines if line["logger"].startswith("librdkafka.")]
    assert len(retries) < 30, f"librdkafka's retries flood the log: {len(retries)} lines"
    log = consumer.log()
    assert real_password not in log and wrong_password not in log
