"""Scenario (b), the SDK baseline: a Kafka -> CAPI forwarder written the way the official SDK documents it.

`facebook-business` 26.0.3: each record becomes `UserData`/`CustomData`/`Content`/`Event` objects
(the SDK's UserData hashes and normalizes PII itself when the request is built), 1,000 events go
out per `EventRequest(...).execute()` (synchronous, `requests`), and the offsets of exactly those
records are committed synchronously after each accepted request (at-least-once). A partial batch
is sent when a poll comes back empty. Decoding is the same cached-schema fastavro call as the decode
ceiling, so the difference to capi-consumer is the SDK and the synchronous request/commit cycle.

The SDK only accepts ISO alpha-2 countries and `Gender` enum values, so the record's country name
and gender text are mapped to those first, as any user of the SDK has to.

    python -m bench.sdk_baseline --bootstrap H:P --registry URL --group G --topics t --base-url URL
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import sys
from typing import Any

import pycountry
from confluent_kafka import Consumer, Message, TopicPartition
from facebook_business.adobjects.serverside.action_source import ActionSource
from facebook_business.adobjects.serverside.content import Content
from facebook_business.adobjects.serverside.custom_data import CustomData
from facebook_business.adobjects.serverside.event import Event
from facebook_business.adobjects.serverside.event_request import EventRequest
from facebook_business.adobjects.serverside.gender import Gender
from facebook_business.adobjects.serverside.user_data import UserData
from facebook_business.api import FacebookAdsApi

from bench.worker_common import AnnounceAssignment, StopFlag, WireDecoder, records
from bench.workload import PIXEL, TOKEN

EVENTS_PER_REQUEST = 1000
_GENDERS = {"f": Gender.FEMALE, "female": Gender.FEMALE, "m": Gender.MALE, "male": Gender.MALE}


@functools.lru_cache(maxsize=1024)
def _alpha2(country: str) -> str | None:
    try:
        return str(pycountry.countries.lookup(country.strip()).alpha_2).lower()
    except LookupError:
        return None


def _one(value: Any) -> list[Any] | None:
    return [value] if value not in (None, "") else None


def to_event(record: dict[str, Any]) -> Event:
    """The built-in order mapping of capi-consumer, written with the SDK's objects."""
    customer = record.get("customer") or {}
    web = record.get("web_context") or {}
    consent = record.get("consent") or {}
    dob = customer.get("date_of_birth")
    gender = _GENDERS.get(str(customer.get("gender") or "").strip().lower())
    country = _alpha2(customer["country"]) if customer.get("country") else None
    user_data = UserData(
        emails=_one(customer.get("email")),
        phones=_one(customer.get("phone")),
        first_names=_one(customer.get("first_name")),
        last_names=_one(customer.get("last_name")),
        dates_of_birth=[dob.strftime("%Y%m%d")] if isinstance(dob, dt.date) else None,
        genders=[gender] if gender else None,
        cities=_one(customer.get("city")),
        states=_one(customer.get("state")),
        zip_codes=_one(customer.get("postal_code")),
        country_codes=_one(country),
        external_ids=_one(customer.get("customer_id")),
        client_ip_address=web.get("client_ip_address"),
        client_user_agent=web.get("client_user_agent"),
        fbc=web.get("fbc"),
        fbp=web.get("fbp"),
        subscription_id=record.get("subscription_id"),
    )
    contents = [
        Content(product_id=item["sku"], quantity=item["quantity"], item_price=float(item["unit_price"]))
        for item in record.get("line_items") or []
    ]
    custom_data = CustomData(
        value=round(float(record["total"]), 2),
        currency=record["currency"],
        order_id=record["order_id"],
        contents=contents,
        num_items=sum(item["quantity"] for item in record.get("line_items") or []),
    )
    occurred: dt.datetime = record["occurred_at"]
    event = Event(
        event_name="Purchase",
        event_time=int(occurred.timestamp()),
        event_id=record["order_id"],
        action_source=ActionSource.SYSTEM_GENERATED,
        user_data=user_data,
        custom_data=custom_data,
        event_source_url=web.get("page_url"),
    )
    if consent.get("opt_out"):
        event.opt_out = True
    if consent.get("limited_data_use"):
        event.data_processing_options = ["LDU"]
        event.data_processing_options_country = consent.get("ldu_country") or 0
        event.data_processing_options_state = consent.get("ldu_state") or 0
    return event


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--registry", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--topics", required=True, help="comma-separated")
    parser.add_argument("--base-url", required=True, help="the emulator, in place of graph.facebook.com")
    args = parser.parse_args(argv)

    stop = StopFlag()
    api = FacebookAdsApi.init(access_token=TOKEN, crash_log=False, timeout=30)
    api._session.GRAPH = args.base_url
    decoder = WireDecoder(args.registry)
    consumer = Consumer(
        {
            "bootstrap.servers": args.bootstrap,
            "group.id": args.group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "partition.assignment.strategy": "cooperative-sticky",
        }
    )
    consumer.subscribe(args.topics.split(","), on_assign=AnnounceAssignment())
    batch: list[Event] = []
    offsets: dict[tuple[str, int], int] = {}

    def send() -> None:
        EventRequest(events=batch, pixel_id=PIXEL).execute()  # raises FacebookRequestError
        consumer.commit(
            offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False
        )
        batch.clear()
        offsets.clear()

    try:
        while not stop.stopped:
            messages: list[Message] = consumer.consume(num_messages=EVENTS_PER_REQUEST, timeout=0.1)
            for msg in records(messages):
                value = msg.value()
                if value is not None:
                    batch.append(to_event(decoder.decode(value)))
                offsets[(msg.topic() or "", msg.partition() or 0)] = (msg.offset() or 0) + 1
                if len(batch) >= EVENTS_PER_REQUEST:
                    send()
            if not messages and batch:
                send()
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
