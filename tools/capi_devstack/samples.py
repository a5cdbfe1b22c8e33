"""Realistic, varied canonical order and subscription events (for `make demo`, the benchmark and tests).

Records are Python values as fastavro expects them for the schemas in `schemas/`: Decimal money,
`datetime.date` birthdays, epoch-millis timestamps. All PII is synthetic (example.com, 555 numbers).
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

FIRST = ["Mary", "John", "Valéry", "Zoë", "Mary-Ann", "Jean Luc", "O'Neil", "Søren", "Ana", "Li"]
LAST = ["Smith", "O'Brien", "van der Berg", "Müller", "Smith-Jones", "García", "Nguyen", "Kowalski"]
PLACES = [
    ("San Francisco", "California", "94035-1234", "US", "+1 (650) 555-{:04d}"),
    ("New York", "NY", "10001", "United States", "(212) 555-{:04d}"),
    ("London", "Greater London", "SW1A 1AA", "GB", "020 7946 {:04d}"),
    ("Paris", "Île-de-France", "75008", "France", "06 12 34 {:04d}"),
    ("Berlin", "Berlin", "10115", "DE", "+49 30 9018{:04d}"),
]
CURRENCIES = {"US": "USD", "United States": "USD", "GB": "GBP", "France": "EUR", "DE": "EUR"}
SKUS = [("SKU-TEE", "12.50"), ("SKU-MUG", "9.99"), ("SKU-HAT", "19.00"), ("SKU-BAG", "49.90")]
USER_AGENT = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
)


def customer(rng: random.Random, i: int) -> dict[str, Any]:
    city, state, zp, country, phone = PLACES[i % len(PLACES)]
    return {
        "customer_id": f"cust-{i % 5000:06d}",
        "email": f"  Customer.{i % 5000}+shop@Example.COM ",
        "phone": phone.format(rng.randrange(10000)) if i % 7 else None,
        "first_name": FIRST[i % len(FIRST)],
        "last_name": LAST[i % len(LAST)],
        "date_of_birth": dt.date(1960 + i % 40, 1 + i % 12, 1 + i % 28) if i % 3 else None,
        "gender": ["female", "M", None, "f"][i % 4],
        "city": city,
        "state": state,
        "postal_code": zp,
        "country": country,
    }


def web_context(rng: random.Random, i: int, now_ms: int) -> dict[str, Any] | None:
    if i % 4 == 0:
        return None
    return {
        "client_ip_address": f"203.0.113.{i % 250 + 1}" if i % 2 else f"2001:db8::{i % 9999:x}",
        "client_user_agent": USER_AGENT,
        "fbp": f"fb.1.{now_ms - 86_400_000}.{rng.randrange(10**9)}",
        "fbc": f"fb.1.{now_ms - 3_600_000}.AbCdEf{i}" if i % 3 == 0 else None,
        "page_url": f"https://shop.example.com/checkout/{i}",
    }


def consent(i: int) -> dict[str, Any]:
    return {
        "opt_out": i % 50 == 0,
        "limited_data_use": i % 40 == 0,
        "ldu_country": 1 if i % 40 == 0 else None,
        "ldu_state": 1000 if i % 40 == 0 else None,
    }


def order(
    i: int, *, now_ms: int, rng: random.Random, event_type: str = "placed", items: int = 3
) -> dict[str, Any]:
    country = PLACES[i % len(PLACES)][3]
    lines: list[dict[str, Any]] = []
    for n in range(items):
        sku, price = SKUS[(i + n) % len(SKUS)]
        lines.append({"sku": sku, "quantity": 1 + (i + n) % 3, "unit_price": Decimal(price), "title": None})
    total = sum((Decimal(li["unit_price"]) * li["quantity"] for li in lines), Decimal("0"))
    return {
        "order_id": f"ord-{i:08d}",
        "event_type": event_type,
        "occurred_at": now_ms - rng.randrange(0, 3_600_000),
        "shop_id": f"shop-{i % 3}",
        "subscription_id": None,
        "total": total.quantize(Decimal("0.001")),
        "currency": CURRENCIES[country],
        "line_items": lines,
        "customer": customer(rng, i),
        "web_context": web_context(rng, i, now_ms),
        "consent": consent(i),
    }


def subscription(i: int, *, now_ms: int, rng: random.Random, event_type: str) -> dict[str, Any]:
    country = PLACES[i % len(PLACES)][3]
    renewal = event_type == "renewed"
    return {
        "subscription_id": f"sub-{i:08d}",
        "event_type": event_type,
        "occurred_at": now_ms - rng.randrange(0, 3_600_000),
        "shop_id": f"shop-{i % 3}",
        "order_id": f"ren-{i:08d}" if renewal else None,
        "plan_id": ["monthly", "yearly"][i % 2],
        "amount": Decimal("9.990") if event_type in ("renewed", "started") else None,
        "currency": CURRENCIES[country] if event_type in ("renewed", "started") else None,
        "customer": customer(rng, i),
        "web_context": web_context(rng, i, now_ms),
        "consent": consent(i),
    }


ORDER_TYPES = ["placed", "placed", "placed", "completed", "refunded"]
SUBSCRIPTION_TYPES = ["started", "trial_started", "renewed", "renewed", "cancelled"]


@dataclass(frozen=True)
class Sample:
    kind: str
    """"order" or "subscription"."""
    record: dict[str, Any]


def mixed(n: int, *, now_ms: int, seed: int = 7, subscription_share: float = 0.3) -> Iterator[Sample]:
    """`n` varied events: mostly orders of every type, some subscriptions of every type."""
    rng = random.Random(seed)
    for i in range(n):
        if rng.random() < subscription_share:
            kind = SUBSCRIPTION_TYPES[i % len(SUBSCRIPTION_TYPES)]
            yield Sample("subscription", subscription(i, now_ms=now_ms, rng=rng, event_type=kind))
        else:
            kind = ORDER_TYPES[i % len(ORDER_TYPES)]
            yield Sample("order", order(i, now_ms=now_ms, rng=rng, event_type=kind))
