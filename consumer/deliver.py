"""Deliver stage: POST batches to the Graph API `/{version}/{pixel_id}/events`, retry, bisect.

- One aiohttp session with keep-alive. The deliverer's `AdaptiveSlots` (consumer.concurrency) bound
  requests in flight: per destination by a limit that adapts to Meta's latency and throttling (AIMD),
  in all by `capi.max_requests_in_flight`, shared out in turn between destinations (tenants) so that
  a noisy or slow client cannot starve the others.
- The access token travels in an `Authorization: Bearer` header, never in a URL or a log line.
- Transient errors (network, 5xx, HTML bodies, throttling, `is_transient`) are retried with capped
  exponential backoff and full jitter, waiting at least what `Retry-After` or
  `X-Business-Use-Case-Usage.estimated_time_to_regain_access` asks for; an event is never retried past
  its validity (7 days, 62 for physical_store) - it fails as expired instead.
- A permanent error on a batch (Meta rejects the whole request for one bad event) splits the batch in
  halves until the offending events are isolated; only they fail, the rest is delivered.
- Destination-wide errors (bad token, permissions, unknown pixel, retired version) are retried with a
  long backoff: draining the topic into the dead-letter topic would turn a config mistake into data loss.

Who is retrying or parked right now, and why, is kept here (`DeliveryState`); the loop reads it to
pause the partitions that feed a blocked destination. Delivery metrics are recorded here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final, Protocol

import aiohttp
import orjson
from yarl import URL  # aiohttp's own URL type (installed with it)

from consumer.batch import EVENT_NAME, EVENT_TIME, PendingEvent
from consumer.clock import SYSTEM_CLOCK, Clock
from consumer.concurrency import AdaptiveSlots, ConcurrencySettings, Signal
from consumer.errors import (
    DESTINATION_UNAVAILABLE,
    EVENT_EXPIRED,
    TENANT_PARKED,
    ErrorClass,
    Failure,
    GraphError,
    Stage,
    classify_graph_error,
    transport_error,
)
from consumer.metrics import Metrics
from consumer.validate import MAX_EVENT_AGE_S, MAX_PHYSICAL_STORE_AGE_S, max_event_age_s

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Destination:
    """Where a batch goes. `token` is a secret: never log or export it."""

    name: str
    pixel_id: str
    token: str
    test_event_code: str | None = None
    partner_agent: str | None = None
    parks: bool = False
    """Platform mode: when Meta refuses the destination, fail its events at once as TENANT_PARKED
    (the loop parks them) instead of holding them here while it backs off."""
    metric_label: str = ""
    """The `pixel` label of its metrics: the pixel id, or for a tenant not in
    `platform.status_tenants` the shared value `tenants` (no per-tenant series by default)."""

    @property
    def pixel_label(self) -> str:
        return self.metric_label or self.pixel_id

    def __repr__(self) -> str:
        return f"Destination(name={self.name!r}, pixel_id={self.pixel_id!r})"


@dataclass(frozen=True, slots=True)
class Accepted:
    events_received: int
    fbtrace_id: str | None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float = 0.5
    cap_s: float = 60.0
    destination_base_s: float = 5.0
    destination_cap_s: float = 300.0
    parked_dead_letter_after_s: float | None = None
    """Fail a parked destination's events (to the DLQ) after this long; None = wait for recovery."""

    def delay(self, attempt: int, error: GraphError, rng: random.Random) -> float:
        """Seconds to wait before attempt `attempt + 1` (full jitter, at least Meta's hint)."""
        if error.error_class is ErrorClass.DESTINATION:
            base, cap = self.destination_base_s, self.destination_cap_s
        else:
            base, cap = self.base_s, self.cap_s
        backoff = rng.uniform(0, min(cap, base * (2**attempt)))
        hint = error.retry_after_s or 0.0
        return max(backoff, hint)


_MAX_CACHED_URLS = 100_000


_SHORTEST_WINDOW_S: Final = min(MAX_EVENT_AGE_S, MAX_PHYSICAL_STORE_AGE_S)


def expires_at(event: PendingEvent) -> float:
    """Unix seconds after which Meta refuses the event."""
    window = max_event_age_s(event.action_source)
    return event.event_time + window


class GraphClient:
    """Thin async client for the events edge."""

    def __init__(
        self,
        *,
        base_url: str,
        api_version: str,
        timeout_s: float,
        max_requests_in_flight: int,
        user_agent: str = "capi-consumer",
    ) -> None:
        self._base = base_url.rstrip("/")
        self._version = api_version
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._limit = max_requests_in_flight
        """The connection pool's size: the deliverer's slots keep requests within it."""
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}

    async def __aenter__(self) -> GraphClient:
        connector = aiohttp.TCPConnector(limit=self._limit, keepalive_timeout=60)
        self._session = aiohttp.ClientSession(connector=connector, timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, pixel_id: str) -> str:
        return f"{self._base}/{self._version}/{pixel_id}/events"

    def _parsed_url(self, pixel_id: str) -> URL:
        # Parsing a URL is a tenth of aiohttp's work per request; a platform sends hundreds of small
        # requests a second to the same pixels. Bounded by the pixels of the registry (cleared past that).
        url = self._urls.get(pixel_id)
        if url is None:
            if len(self._urls) >= _MAX_CACHED_URLS:
                self._urls.clear()
            url = self._urls[pixel_id] = URL(self.url(pixel_id))
        return url

    @staticmethod
    def body(destination: Destination, events: Sequence[PendingEvent]) -> bytes:
        parts = [b'{"data":[', b",".join(e.body for e in events), b"]"]
        if destination.test_event_code:
            parts.append(b',"test_event_code":' + orjson.dumps(destination.test_event_code))
        if destination.partner_agent:
            parts.append(b',"partner_agent":' + orjson.dumps(destination.partner_agent))
        parts.append(b"}")
        return b"".join(parts)

    async def post(self, destination: Destination, events: Sequence[PendingEvent]) -> Accepted | GraphError:
        return await self.post_body(destination, self.body(destination, events))

    async def post_body(self, destination: Destination, data: bytes) -> Accepted | GraphError:
        """POST a ready request body (`{"data": [...], ...}`) to the destination's events edge."""
        assert self._session is not None, "use GraphClient as an async context manager"
        headers = {
            "Authorization": f"Bearer {destination.token}",
            "Content-Type": "application/json",
            "User-Agent": self._user_agent,
        }
        try:
            async with self._session.post(
                self._parsed_url(destination.pixel_id), data=data, headers=headers
            ) as r:
                raw = await r.read()
                status = r.status
                resp_headers = r.headers
        except TimeoutError:
            return transport_error("request timed out", timed_out=True)
        except aiohttp.ClientError as exc:
            return transport_error(f"{type(exc).__name__}")
        try:
            payload = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
            return classify_graph_error(payload["error"], http_status=status, headers=resp_headers)
        if status == 200 and isinstance(payload, dict) and "events_received" in payload:
            fbtrace = payload.get("fbtrace_id")
            return Accepted(int(payload["events_received"]), str(fbtrace) if fbtrace else None)
        # HTML 502 pages, empty bodies, unexpected shapes: Graph's edge is having trouble.
        return transport_error(f"unexpected response (http {status})", http_status=status)


def load_signal(result: Accepted | GraphError) -> Signal:
    """What an answer says about Meta's load, for the destination's concurrency limit."""
    if isinstance(result, GraphError):
        if result.overload:
            return Signal.OVERLOAD
        if result.code is None:
            return Signal.NEUTRAL  # no Graph answer (a reset connection, an HTML error page)
    return Signal.NORMAL


Outcome = tuple[PendingEvent, Failure | None]
"""An event and its fate: None = accepted by Meta, else why it failed permanently."""


class Sender(Protocol):
    """What delivery needs from the Graph client (a fake in the loop's unit tests)."""

    async def post(
        self, destination: Destination, events: Sequence[PendingEvent]
    ) -> Accepted | GraphError: ...


@dataclass
class DeliveryState:
    """Which destinations wait before retrying right now, and why: the loop pauses the partitions
    that feed them; /readyz reports the parked ones."""

    retrying: Counter[str] = field(default_factory=Counter)
    """Destination -> batches backing off after a transient error."""
    parked: Counter[str] = field(default_factory=Counter)
    """Destination -> batches waiting for a destination error (token, permission, pixel) to clear."""
    last_error: dict[str, GraphError] = field(default_factory=dict)
    """Destination -> the error of its latest backoff."""

    def enter(self, destination: str, error: GraphError) -> bool:
        """A batch starts waiting; True when this parks a destination that was not parked."""
        self.last_error[destination] = error
        if error.error_class is ErrorClass.DESTINATION:
            self.parked[destination] += 1
            return self.parked[destination] == 1
        self.retrying[destination] += 1
        return False

    def leave(self, destination: str, error: GraphError) -> None:
        counter = self.parked if error.error_class is ErrorClass.DESTINATION else self.retrying
        counter[destination] -= 1
        if counter[destination] <= 0:
            del counter[destination]

    def parked_names(self) -> list[str]:
        return sorted(self.parked)

    def blocked(self) -> set[str]:
        """Destinations that are retrying or parked."""
        return set(self.retrying) | set(self.parked)


class Deliverer:
    """Delivers one batch to completion: every event ends accepted or with a permanent Failure."""

    def __init__(
        self,
        client: Sender,
        metrics: Metrics,
        *,
        policy: RetryPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        concurrency: ConcurrencySettings | None = None,
    ) -> None:
        self._client = client
        self._metrics = metrics
        self._policy = policy or RetryPolicy()
        self._clock = clock
        self._rng = rng or random.Random()
        self.state = DeliveryState()
        self.slots = AdaptiveSlots(
            concurrency,
            monotonic=clock.monotonic,
            on_limit=self._export_limit,
            on_in_flight=metrics.requests_in_flight.set,
        )
        """Requests in flight: per destination (adaptive) and in all."""

    async def deliver(self, destination: Destination, events: list[PendingEvent]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        await self._deliver(destination, events, outcomes)
        return outcomes

    async def _deliver(
        self, destination: Destination, events: list[PendingEvent], outcomes: list[Outcome]
    ) -> None:
        attempt = 0
        parked_since: float | None = None
        clock = self._clock
        while events:
            events = self._drop_expired(events, outcomes)
            if not events:
                return
            for event in events:
                event.attempts += 1
            async with self.slots.slot(destination.name, destination.pixel_label) as slot:
                self._sending(destination, events)
                started = clock.monotonic()
                result = await self._client.post(destination, events)
                elapsed = clock.monotonic() - started
                slot.answered(elapsed, load_signal(result))
            self._answered(destination, result, elapsed)
            if isinstance(result, Accepted):
                outcomes.extend(zip(events, itertools.repeat(None)))
                return
            if result.error_class is ErrorClass.PERMANENT:
                if len(events) == 1:
                    outcomes.append((events[0], result.failure()))
                    return
                middle = len(events) // 2
                # Halves go out concurrently; the client's slots still bound requests.
                left: list[Outcome] = []
                right: list[Outcome] = []
                await asyncio.gather(
                    self._deliver(destination, events[:middle], left),
                    self._deliver(destination, events[middle:], right),
                )
                outcomes.extend(left)
                outcomes.extend(right)
                return
            if result.error_class is ErrorClass.DESTINATION:
                if destination.parks:
                    failure = result.failure(TENANT_PARKED)
                    outcomes.extend((e, failure) for e in events)
                    return
                parked_since = parked_since if parked_since is not None else clock.monotonic()
                limit = self._policy.parked_dead_letter_after_s
                if limit is not None and clock.monotonic() - parked_since >= limit:
                    failure = result.failure(DESTINATION_UNAVAILABLE)
                    outcomes.extend((e, failure) for e in events)
                    return
            else:
                parked_since = None
            delay = self._policy.delay(attempt, result, self._rng)
            self._back_off(destination, result, delay, len(events), attempt)
            try:
                await clock.sleep(delay)
            finally:
                self.state.leave(destination.name, result)
                self._metrics.destinations_parked.set(len(self.state.parked))
            attempt += 1

    def _export_limit(self, label: str, limit: int | None) -> None:
        gauge = self._metrics.concurrency_limit
        if limit is None:
            with contextlib.suppress(KeyError):
                gauge.remove(label)
        else:
            gauge.labels(label).set(limit)

    # -- metrics and logs of one request
    def _sending(self, destination: Destination, events: Sequence[PendingEvent]) -> None:
        m = self._metrics
        now = self._clock.wall()
        names = Counter(map(EVENT_NAME, events))
        m.event_age_at_send.observe_many([max(0.0, now - t) for t in map(EVENT_TIME, events)])
        for name, n in names.items():
            m.child(m.events_sent, destination.pixel_label, name).inc(n)

    def _answered(self, destination: Destination, result: Accepted | GraphError, seconds: float) -> None:
        m = self._metrics
        outcome = "accepted" if isinstance(result, Accepted) else str(result.error_class)
        m.child(m.request_duration, destination.pixel_label, outcome).observe(seconds)
        if isinstance(result, GraphError) and result.code is not None:
            m.graph_errors.labels(str(result.code), str(result.subcode or "")).inc()

    def _back_off(
        self, destination: Destination, error: GraphError, delay: float, events: int, attempt: int
    ) -> None:
        parked = error.error_class is ErrorClass.DESTINATION
        log.warning(
            "destination parked, probing again later" if parked else "retrying batch",
            extra={
                "destination": destination.name,
                "pixel_id": destination.pixel_id,
                "events": events,
                "error_class": str(error.error_class),
                "graph_code": error.code,
                "graph_subcode": error.subcode,
                "fbtrace_id": error.fbtrace_id,
                "error": error.summary,
                "delay_s": round(delay, 3),
                "attempt": attempt + 1,
            },
        )
        self._metrics.retries.labels(destination.pixel_label, str(error.error_class)).inc()
        if self.state.enter(destination.name, error):
            log.error(
                "destination parked",
                extra={
                    "destination": destination.name,
                    "pixel_id": destination.pixel_id,
                    "graph_code": error.code,
                    "graph_subcode": error.subcode,
                },
            )
        self._metrics.destinations_parked.set(len(self.state.parked))

    def _drop_expired(self, events: list[PendingEvent], outcomes: list[Outcome]) -> list[PendingEvent]:
        now = self._clock.wall()
        if now < min(map(EVENT_TIME, events)) + _SHORTEST_WINDOW_S:
            return events  # the oldest event is inside the shortest window (the usual case)
        keep: list[PendingEvent] = []
        for event in events:
            if now >= expires_at(event):
                outcomes.append(
                    (
                        event,
                        Failure(
                            Stage.DELIVER,
                            EVENT_EXPIRED,
                            ErrorClass.PERMANENT,
                            "event passed Meta's event_time window before it could be delivered",
                        ),
                    )
                )
            else:
                keep.append(event)
        return keep
