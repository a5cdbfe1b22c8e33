"""The official `facebook-business` SDK (26.0.3), pointed at the emulator, works unchanged.

The sync SDK puts access_token/appsecret_proof in the query string and sends `data` as a form field
holding a JSON array of JSON strings; the emulator must accept exactly that and answer errors the SDK
turns into `FacebookRequestError` with the right code and subcode.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from facebook_business.adobjects.serverside.action_source import ActionSource
from facebook_business.adobjects.serverside.content import Content
from facebook_business.adobjects.serverside.custom_data import CustomData
from facebook_business.adobjects.serverside.event import Event
from facebook_business.adobjects.serverside.event_request import EventRequest
from facebook_business.adobjects.serverside.user_data import UserData
from facebook_business.api import FacebookAdsApi
from facebook_business.exceptions import FacebookRequestError

from capi_emulator import EmulatorConfig, TokenConfig
from tests.emulator.emulator_helpers import Client, sha

PIXEL = "1234567890"


@pytest.fixture
def sdk_api() -> Iterator[Callable[..., Any]]:
    """Initialise the SDK's default API against a base URL; restore the previous default afterwards."""
    previous = FacebookAdsApi.get_default_api()

    def init(base_url: str, token: str, app_secret: str | None = None) -> Any:
        api = FacebookAdsApi.init(access_token=token, app_secret=app_secret, crash_log=False, timeout=10)
        # The session's GRAPH attribute is the SDK's base URL; an instance attribute leaves the class alone.
        api._session.GRAPH = base_url
        return api

    yield init
    FacebookAdsApi.set_default_api(previous)


def _event(event_time: int, event_id: str = "order-1001") -> Event:
    return Event(
        event_name="Purchase",
        event_time=event_time,
        event_id=event_id,
        action_source=ActionSource.SYSTEM_GENERATED,
        user_data=UserData(
            emails=["Mary@Example.com"],
            phones=["+1 (650) 555-1212"],
            first_name="Mary",
            external_id="cust-42",
            client_ip_address="203.0.113.9",
        ),
        custom_data=CustomData(
            value=59.9,
            currency="USD",
            contents=[Content(product_id="sku-1", quantity=2, item_price=29.95)],
            order_id="order-1001",
        ),
    )


def test_sdk_event_request_is_accepted(
    make_client: Callable[..., Client], sdk_api: Callable[..., Any]
) -> None:
    cfg = EmulatorConfig(
        tokens={
            "sdk-token": TokenConfig(pixels=[PIXEL], app_secret="app-secret", require_appsecret_proof=True)
        }
    )
    client = make_client(cfg)
    sdk_api(client.base, "sdk-token", app_secret="app-secret")

    request = EventRequest(
        pixel_id=PIXEL,
        events=[_event(int(time.time()) - 30), _event(int(time.time()) - 20, "order-1002")],
        test_event_code="TEST4242",
        partner_agent="capi-consumer-test",
        namespace_id="ns-7",
    )
    response = request.execute()
    assert response.events_received == 2
    assert response.messages == []
    assert response.fbtrace_id

    stored = client.get("events", pixel=PIXEL)["events"]
    assert [e["event"]["event_id"] for e in stored] == ["order-1001", "order-1002"]
    assert {(e["test_event_code"], e["partner_agent"], e["namespace_id"]) for e in stored} == {
        ("TEST4242", "capi-consumer-test", "ns-7")
    }
    user_data = stored[0]["event"]["user_data"]
    # The SDK hashes what it normalizes (lowercase email, digits-only phone) and sends lists.
    assert user_data["em"] == [sha("mary@example.com")]
    assert user_data["ph"] == [sha("16505551212")]
    assert user_data["fn"] == [sha("mary")]
    assert user_data["external_id"] == ["cust-42"]
    log = client.get("requests")["requests"][-1]
    assert (log["status"], log["outcome"]) == (200, "accepted")


def test_sdk_gets_request_error_for_a_too_old_event(
    make_client: Callable[..., Client], sdk_api: Callable[..., Any]
) -> None:
    client = make_client()
    sdk_api(client.base, "test-token")
    request = EventRequest(pixel_id=PIXEL, events=[_event(int(time.time()) - 8 * 86_400)])
    with pytest.raises(FacebookRequestError) as caught:
        request.execute()
    exc = caught.value
    assert exc.api_error_code() == 100
    assert exc.api_error_subcode() == 2804003
    assert exc.http_status() == 400
    assert exc.api_transient_error() is False
    assert client.get("stats")["events_received"] == 0


def test_sdk_sees_token_and_transient_errors(
    make_client: Callable[..., Client], sdk_api: Callable[..., Any]
) -> None:
    client = make_client()
    sdk_api(client.base, "wrong-token")
    with pytest.raises(FacebookRequestError) as caught:
        EventRequest(pixel_id=PIXEL, events=[_event(int(time.time()))]).execute()
    assert (caught.value.api_error_code(), caught.value.http_status()) == (190, 401)

    sdk_api(client.base, "test-token")
    client.fault(kind="transient", code=2, count=1)
    with pytest.raises(FacebookRequestError) as caught:
        EventRequest(pixel_id=PIXEL, events=[_event(int(time.time()))]).execute()
    assert caught.value.api_error_code() == 2
    assert caught.value.api_transient_error() is True
