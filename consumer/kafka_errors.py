"""Broker connection problems an operator must fix (refused credentials, an untrusted certificate):
one clear log line and a readiness reason instead of librdkafka's endless retries.

librdkafka treats a refused SASL login or a failed TLS verification like any other connection
failure: it retries for ever and logs every attempt (a failed handshake several times a second, for
each client). `KafkaErrors.watch` adds an `error_cb` to a client's settings that names the cause once
(`kafka connection refused`, again every `REMIND_S` while it lasts), makes `/readyz` answer not
ready with that cause (`readiness`), and drops librdkafka's own repetitions of the failure meanwhile.
The process keeps running: librdkafka goes on retrying, so a corrected secret on the broker side (a
user created late, a certificate renewed) lets it start without a restart, and a pod that stays up
not ready is what Kubernetes' readiness probe expects. A fixed client setting (the password file,
`ssl.ca.location`) is read at start, so that fix needs a restart, as with any setting.

Other errors the callback receives (a broker down, a timeout) are logged as warnings as before;
fatal ones stop the source (`on_fatal`) as they did when `consume()` returned them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from confluent_kafka import KafkaError

log = logging.getLogger(__name__)

REMIND_S = 300.0
"""How often a problem that goes on is logged again."""
STALE_AFTER_S = 30.0
WARN_EVERY_S = 10.0
"""Other errors (a broker away: one per reconnect attempt, several a second) are logged at most this
often per client and error code, with how many were left out."""
"""A problem not reported again for this long is over (librdkafka retries at least every 10 s)."""
# librdkafka log facilities that repeat a refused connection attempt.
_REPEATING_FACILITIES = frozenset({"FAIL", "SSL", "SASL", "ERROR"})
# Consequences of a refused connection, not worth a line of their own while it lasts.
_CONSEQUENCES = frozenset({KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT})


class _HasFatalError(Protocol):
    fatal_error: str | None


def cause_of(error: KafkaError) -> str | None:
    """What an operator has to fix, or None for an error that is not a refused connection."""
    text = error.str()
    if error.code() == KafkaError._AUTHENTICATION or "SASL authentication error" in text:
        return (
            "authentication failed: the broker refused the SASL credentials (check sasl.username, "
            "sasl.mechanism and the password from kafka.sasl_password_file or kafka.sasl_password_env)"
        )
    if "certificate verify failed" in text:
        return (
            "TLS certificate verification failed: the broker's certificate is not signed by a CA in "
            "ssl.ca.location (or does not name the broker's host)"
        )
    if error.code() == KafkaError._SSL or "SSL handshake failed" in text:
        return "TLS handshake failed (check security.protocol and the ssl.* settings)"
    return None


@dataclass
class _Problem:
    cause: str
    detail: str
    first_seen: float
    last_seen: float
    last_logged: float
    count: int = 0


class KafkaErrors:
    """The connection problems of every Kafka client of the process; callbacks may come from any
    thread (the dead-letter monitor polls in a worker thread)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._problems: dict[str, _Problem] = {}
        self._fatal_targets: dict[str, _HasFatalError] = {}
        self._warned: dict[tuple[str, int], tuple[float, int]] = {}

    def watch(self, conf: dict[str, Any], client: str) -> dict[str, Any]:
        """`conf` with this tracker's `error_cb` for `client`, whose librdkafka log lines must go to
        the logger `librdkafka.<client>` (there they are filtered while the problem lasts)."""
        logger = logging.getLogger(f"librdkafka.{client}")
        if not any(isinstance(f, _RepeatFilter) and f.errors is self for f in logger.filters):
            logger.addFilter(_RepeatFilter(self))
        return {**conf, "error_cb": lambda error: self.report(client, error)}

    def on_fatal(self, client: str, target: _HasFatalError) -> None:
        """A fatal error of `client` sets `target.fatal_error` (the loop then stops)."""
        self._fatal_targets[client] = target

    def report(self, client: str, error: KafkaError) -> None:
        if error.fatal():
            why = f"fatal Kafka error: {error.str()}"
            log.error("kafka client failed", extra={"client": client, "error": error.str()})
            target = self._fatal_targets.get(client)
            if target is not None:
                target.fatal_error = why
            return
        cause = cause_of(error)
        now = self._clock()
        if cause is None:
            if error.code() in _CONSEQUENCES and self.failing():
                return
            key = (client, int(error.code()))
            with self._lock:
                last = self._warned.get(key)
                if last is not None and now - last[0] < WARN_EVERY_S:
                    self._warned[key] = (last[0], last[1] + 1)
                    return
                self._warned[key] = (now, 0)
            extra = {"client": client, "error": error.str(), "left_out": last[1] if last else 0}
            log.warning("kafka client error", extra=extra)
            return
        with self._lock:
            for other in list(self._problems):
                self._active(other, now)  # forget those that are over
            problem = self._problems.get(client)
            if problem is None or problem.cause != cause:
                problem = self._problems[client] = _Problem(cause, error.str(), now, now, float("-inf"))
            problem.last_seen = now
            problem.detail = error.str()
            problem.count += 1
            # Every client of the process uses the same settings: one line per cause, not per client.
            last_logged = max(p.last_logged for p in self._problems.values() if p.cause == cause)
            if now - last_logged < REMIND_S:
                return
            problem.last_logged = now
        log.error(
            "kafka connection refused: " + cause,
            extra={
                "client": client,
                "error": problem.detail,
                "attempts": problem.count,
                "failing_for_s": round(now - problem.first_seen, 1),
            },
        )

    def _active(self, client: str, now: float) -> _Problem | None:
        problem = self._problems.get(client)
        if problem is not None and now - problem.last_seen > STALE_AFTER_S:
            del self._problems[client]
            return None
        return problem

    def problem(self) -> str | None:
        """The current problem of the first client that has one, as `kafka <client>: <cause>`."""
        now = self._clock()
        with self._lock:
            for client in sorted(self._problems):
                current = self._active(client, now)
                if current is not None:
                    return f"kafka {client}: {current.cause}"
        return None

    def failing(self) -> bool:
        """Some client's connection is refused right now."""
        return self.problem() is not None

    def readiness(self, inner: Callable[[], tuple[bool, str]]) -> Callable[[], tuple[bool, str]]:
        """`inner` (the pipeline's /readyz answer), not ready while a connection is refused."""

        def ready() -> tuple[bool, str]:
            ok, why = inner()
            problem = self.problem()
            if problem is None:
                return ok, why
            return False, problem if ok else f"{why}; {problem}"

        return ready


class _RepeatFilter(logging.Filter):
    """Drops librdkafka's lines about failed connection attempts while a refused connection is
    known (it has been logged once, clearly). Any client's counts: they share the settings, and the
    dead-letter monitor's consumer, which is never polled, hands its lines over only when closed."""

    def __init__(self, errors: KafkaErrors) -> None:
        super().__init__()
        self.errors = errors

    def filter(self, record: logging.LogRecord) -> bool:
        facility = record.getMessage().split(" ", 1)[0]
        return facility not in _REPEATING_FACILITIES or not self.errors.failing()
