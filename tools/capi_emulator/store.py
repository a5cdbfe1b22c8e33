"""What the emulator remembers: accepted events (with the 48 h dedup flag), a request log, counters.

Everything is capped (config `max_stored_events`, `max_logged_requests`) so a long benchmark cannot
grow memory without bound; the counters in `Stats` are never capped.
"""

from __future__ import annotations

import itertools
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, NamedTuple


@dataclass(slots=True)
class RequestParams:
    """The request-level (non-`data`) fields Meta records with a batch."""

    test_event_code: str | None = None
    partner_agent: str | None = None
    namespace_id: str | None = None
    upload_id: str | None = None
    upload_tag: str | None = None
    upload_source: str | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "test_event_code": self.test_event_code,
            "partner_agent": self.partner_agent,
            "namespace_id": self.namespace_id,
            "upload_id": self.upload_id,
            "upload_tag": self.upload_tag,
            "upload_source": self.upload_source,
        }


class StoredEvent(NamedTuple):
    pixel_id: str
    request_id: int
    received_at: float
    duplicate: bool
    params: RequestParams
    event: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "pixel_id": self.pixel_id,
            "request_id": self.request_id,
            "received_at": self.received_at,
            "duplicate": self.duplicate,
            **self.params.to_json(),
            "event": self.event,
        }


@dataclass(slots=True)
class Stats:
    requests: int = 0
    requests_accepted: int = 0
    requests_rejected: int = 0
    requests_faulted: int = 0
    events_received: int = 0
    duplicates: int = 0
    by_status: Counter[int] = field(default_factory=Counter)
    by_error: Counter[str] = field(default_factory=Counter)
    events_by_pixel: Counter[str] = field(default_factory=Counter)

    def to_json(self, stored_events: int, started_at: float, now: float) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "requests_accepted": self.requests_accepted,
            "requests_rejected": self.requests_rejected,
            "requests_faulted": self.requests_faulted,
            "events_received": self.events_received,
            "duplicates": self.duplicates,
            "stored_events": stored_events,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "by_error": dict(sorted(self.by_error.items())),
            "events_by_pixel": dict(sorted(self.events_by_pixel.items())),
            "uptime_s": round(now - started_at, 3),
        }


class Store:
    def __init__(self, max_events: int, max_requests: int, dedup_window_s: float) -> None:
        self._max_events = max_events
        self._dedup_window_s = dedup_window_s
        self.events: deque[StoredEvent] = deque(maxlen=max_events or None)
        # (pixel, event_name, event_id) -> first-seen time; ordered by insertion so the oldest can go.
        self._first_seen: OrderedDict[tuple[str, str, str], float] = OrderedDict()
        self.requests: deque[dict[str, Any]] = deque(maxlen=max_requests or None)
        self._request_ids = itertools.count(1)
        self.stats = Stats()

    def next_request_id(self) -> int:
        return next(self._request_ids)

    def log_request(self, entry: dict[str, Any]) -> None:
        if self.requests.maxlen is not None:
            self.requests.append(entry)

    def add_events(
        self,
        pixel_id: str,
        data: list[dict[str, Any]],
        params: RequestParams,
        request_id: int,
        received_at: float,
    ) -> int:
        """Store accepted events; return how many were duplicates of an event seen within the window."""
        duplicates = 0
        for event in data:
            event_id = event.get("event_id")
            duplicate = False
            if isinstance(event_id, str) and event_id:
                key = (pixel_id, event["event_name"], event_id)
                first = self._first_seen.get(key)
                if first is not None and received_at - first < self._dedup_window_s:
                    duplicate = True
                    duplicates += 1
                else:
                    # Outside the window a repeat counts as a new first sighting.
                    self._first_seen.pop(key, None)
                    self._first_seen[key] = received_at
                    if self._max_events and len(self._first_seen) > self._max_events:
                        self._first_seen.popitem(last=False)
            if self._max_events:
                # A tuple per event, expanded to JSON only when inspected: storing must stay cheap.
                self.events.append(StoredEvent(pixel_id, request_id, received_at, duplicate, params, event))
        return duplicates

    def query_events(
        self, pixel_id: str | None, test_event_code: str | None, limit: int | None
    ) -> list[dict[str, Any]]:
        out = [
            e
            for e in self.events
            if (pixel_id is None or e.pixel_id == pixel_id)
            and (test_event_code is None or e.params.test_event_code == test_event_code)
        ]
        return [e.to_json() for e in (out[-limit:] if limit else out)]

    def clear(self) -> None:
        self.events.clear()
        self._first_seen.clear()
        self.requests.clear()
        self.stats = Stats()
