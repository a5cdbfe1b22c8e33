"""consumer.kafka_errors: a refused broker connection is one clear line and a readiness reason."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError

from consumer import kafka_errors
from consumer.kafka_errors import KafkaErrors, cause_of

AUTH = KafkaError(
    KafkaError._AUTHENTICATION,
    "sasl_ssl://b:9093/bootstrap: SASL authentication error: Authentication failed during authentication "
    "due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 311ms in state AUTH_REQ)",
)
CERT = KafkaError(
    KafkaError._SSL,
    "sasl_ssl://b:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate "
    "verify failed: broker certificate could not be verified (after 15ms in state SSL_HANDSHAKE)",
)
DOWN = KafkaError(KafkaError._ALL_BROKERS_DOWN, "1/1 brokers are down")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _refusals(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith("kafka connection refused")]


def test_causes_are_named() -> None:
    assert (cause_of(AUTH) or "").startswith("authentication failed")
    assert (cause_of(CERT) or "").startswith("TLS certificate verification failed")
    assert cause_of(KafkaError(KafkaError._SSL, "SSL handshake failed: wrong version number")) == (
        "TLS handshake failed (check security.protocol and the ssl.* settings)"
    )
    assert cause_of(DOWN) is None


def test_one_line_per_cause_for_every_client_then_a_reminder(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    errors = KafkaErrors(clock)
    caplog.set_level(logging.INFO)
    for _ in range(20):
        for client in ("consumer", "dlq", "dlq_monitor"):
            errors.report(client, AUTH)
            errors.report(client, DOWN)  # a consequence: not a line of its own
        clock.now += 1
    (line,) = _refusals(caplog)
    assert line.levelno == logging.ERROR and "authentication failed" in line.getMessage()
    assert not [r for r in caplog.records if r.getMessage() == "kafka client error"]
    while clock.now < 1000 + kafka_errors.REMIND_S:  # librdkafka goes on retrying
        clock.now += 10
        errors.report("consumer", AUTH)
    first, reminder = _refusals(caplog)
    assert reminder.getMessage() == first.getMessage()
    assert vars(reminder)["attempts"] == 48 and vars(reminder)["failing_for_s"] == kafka_errors.REMIND_S


def test_a_new_cause_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    errors = KafkaErrors(Clock())
    errors.report("consumer", AUTH)
    errors.report("consumer", CERT)
    assert [r.getMessage().split(": ")[1] for r in _refusals(caplog)] == [
        "authentication failed",
        "TLS certificate verification failed",
    ]


def test_readiness_names_the_cause_until_the_problem_is_over() -> None:
    clock = Clock()
    errors = KafkaErrors(clock)
    inner = [(True, "ok")]
    ready = errors.readiness(lambda: inner[0])
    assert ready() == (True, "ok")
    errors.report("dlq", CERT)
    ok, why = ready()
    assert not ok and why.startswith("kafka dlq: TLS certificate verification failed")
    inner[0] = (False, "no partitions assigned")
    assert ready()[1].startswith("no partitions assigned; kafka dlq: TLS certificate")
    clock.now += kafka_errors.STALE_AFTER_S + 1  # no failed attempt since: connected again
    assert ready() == (False, "no partitions assigned")


def test_other_errors_are_warnings_and_fatal_ones_stop_the_source(caplog: pytest.LogCaptureFixture) -> None:
    class Target:
        fatal_error: str | None = None

    errors = KafkaErrors(Clock())
    target = Target()
    errors.on_fatal("consumer", target)
    errors.report("consumer", DOWN)
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    errors.report("consumer", KafkaError(KafkaError._FATAL, "fenced", fatal=True))
    assert target.fatal_error == "fatal Kafka error: fenced"
    assert errors.readiness(lambda: (True, "ok"))() == (True, "ok")


def test_librdkafka_repeats_are_dropped_while_a_refusal_is_known(caplog: pytest.LogCaptureFixture) -> None:
    errors = KafkaErrors(Clock())
    conf = errors.watch({"bootstrap.servers": "b:9093"}, "unit_test_client")
    assert callable(conf["error_cb"]) and conf["bootstrap.servers"] == "b:9093"
    errors.watch({}, "unit_test_client")  # a second client of that name: one filter
    logger = logging.getLogger("librdkafka.unit_test_client")
    assert len(logger.filters) == 1
    caplog.set_level(logging.INFO)
    logger.error("%s [%s] %s", "FAIL", "rdkafka#consumer-1", "SASL authentication error")
    conf["error_cb"](AUTH)
    logger.error("%s [%s] %s", "FAIL", "rdkafka#consumer-1", "SASL authentication error")
    logger.error("%s [%s] %s", "SSL", "rdkafka#consumer-1", "kafka: error:0200008A")
    logger.warning("%s [%s] %s", "GETPID", "rdkafka#producer-2", "Coordinator load in progress")
    assert [r.getMessage().split(" ")[0] for r in caplog.records if r.name == logger.name] == [
        "FAIL",
        "GETPID",
    ]


def test_a_broker_away_is_a_warning_every_ten_seconds_not_one_per_attempt(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    errors = KafkaErrors(clock)
    caplog.set_level(logging.INFO)
    refused = KafkaError(KafkaError._TRANSPORT, "b:9092/bootstrap: Connect to ipv4#b:9092 failed")
    for _ in range(200):  # 20 attempts a second for 10 s
        errors.report("consumer", refused)
        clock.now += 0.05
    clock.now += 0.1
    errors.report("consumer", refused)
    warnings = [r for r in caplog.records if r.getMessage() == "kafka client error"]
    assert [r.__dict__["left_out"] for r in warnings] == [0, 199]
    errors.report("dlq", refused)  # another client's line is its own
    assert len([r for r in caplog.records if r.getMessage() == "kafka client error"]) == 3
    assert errors.readiness(lambda: (True, "ok"))() == (True, "ok")  # a broker away is not a refusal
