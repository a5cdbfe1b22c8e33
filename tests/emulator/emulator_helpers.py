"""Helpers for the emulator tests: valid events, a fake clock, an HTTP client for one running emulator."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import requests

from capi_emulator import RunningEmulator

PIXEL = "1234567890"
OTHER_PIXEL = "2234567890"
TOKEN = "test-token"


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def make_event(**overrides: Any) -> dict[str, Any]:
    """A server event Meta accepts; keyword arguments replace (or, with value None, remove) fields."""
    event: dict[str, Any] = {
        "event_name": "Purchase",
        "event_time": int(time.time()) - 60,
        "event_id": "order-1",
        "action_source": "system_generated",
        "user_data": {"em": [sha("mary@example.com")], "external_id": ["cust-1"]},
        "custom_data": {"value": 12.5, "currency": "usd"},
    }
    for key, value in overrides.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Client:
    """Thin `requests` wrapper around one running emulator."""

    def __init__(self, running: RunningEmulator) -> None:
        self.running = running
        self.base = running.base_url
        self.http = requests.Session()

    def events_url(self, pixel: str = PIXEL, version: str = "v26.0") -> str:
        return f"{self.base}/{version}/{pixel}/events"

    def send(
        self,
        data: Any,
        *,
        pixel: str = PIXEL,
        version: str = "v26.0",
        token: str | None = TOKEN,
        **fields: Any,
    ) -> requests.Response:
        """JSON body with the token in the query string (the most common client shape)."""
        params = {"access_token": token} if token is not None else {}
        return self.http.post(
            self.events_url(pixel, version), params=params, json={"data": data, **fields}, timeout=10
        )

    def get(self, path: str, **params: Any) -> Any:
        resp = self.http.get(f"{self.base}/_emulator/{path}", params=params, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def post_admin(self, path: str, payload: Any) -> requests.Response:
        return self.http.post(f"{self.base}/_emulator/{path}", json=payload, timeout=10)

    def delete_admin(self, path: str) -> requests.Response:
        return self.http.delete(f"{self.base}/_emulator/{path}", timeout=10)

    def fault(self, **spec: Any) -> dict[str, Any]:
        resp = self.post_admin("faults", spec)
        assert resp.status_code == 201, resp.text
        added: dict[str, Any] = resp.json()["faults"][0]
        return added


def error_of(resp: requests.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}, body
    err: dict[str, Any] = body["error"]
    return err
