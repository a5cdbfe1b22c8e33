"""The canonical order and subscription events (`schemas/`): their event types, what is sent by
default and under which CAPI event name, and the built-in mappings of those topics, written in the
custom-mapping language (`consumer.config.MappingSpec`). One home for that vocabulary: the
configuration checks against it, the mapping compiles it.
"""

from __future__ import annotations

from typing import Any

CANONICAL_EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "order": ("placed", "completed", "refunded"),
    "subscription": ("started", "trial_started", "renewed", "cancelled"),
}
"""Event types (Avro enum symbols) of the canonical schemas in `schemas/`, per topic kind."""

# Purchase on `placed` is the usual choice: it is when the Pixel fires its own Purchase on the
# confirmation page (same order ID, so Meta deduplicates), and it is what ad optimisation wants to
# learn from. `completed` can be added (same event_id, so Meta drops it as a duplicate within 48 h) or
# used instead for businesses that only count fulfilled orders.
DEFAULT_SEND_EVENT_TYPES: dict[str, tuple[str, ...]] = {
    "order": ("placed",),
    "subscription": ("started", "trial_started", "renewed"),
}
DEFAULT_EVENT_NAMES: dict[str, dict[str, str]] = {
    "order": {"placed": "Purchase", "completed": "Purchase", "refunded": "OrderRefunded"},
    "subscription": {
        "started": "Subscribe",
        "trial_started": "StartTrial",
        "renewed": "Purchase",
        "cancelled": "SubscriptionCancelled",
    },
}


_CUSTOMER_USER_DATA = {
    "external_id": "customer.customer_id",
    "em": "customer.email",
    "ph": "customer.phone",
    "fn": "customer.first_name",
    "ln": "customer.last_name",
    "db": "customer.date_of_birth",
    "ge": "customer.gender",
    "ct": "customer.city",
    "st": "customer.state",
    "zp": "customer.postal_code",
    "country": "customer.country",
    "client_ip_address": "web_context.client_ip_address",
    "client_user_agent": "web_context.client_user_agent",
    "fbp": "web_context.fbp",
    "fbc": "web_context.fbc",
    "subscription_id": "subscription_id",
}
_CONSENT = {
    "opt_out": "consent.opt_out",
    "limited_data_use": {
        "field": "consent.limited_data_use",
        "country": "consent.ldu_country",
        "state": "consent.ldu_state",
    },
}


def builtin_mapping(kind: str, sent: dict[str, str]) -> dict[str, Any]:
    """The mapping of a canonical `kind`, sending the event types of `sent` as their event names."""
    common: dict[str, Any] = {
        "event_name": {"field": "event_type", "values": sent},
        "event_time": {"field": "occurred_at", "unit": "auto"},
        "action_source": "system_generated",
        "event_source_url": "web_context.page_url",
        "user_data": dict(_CUSTOMER_USER_DATA),
        **_CONSENT,
    }
    if kind == "order":
        return {
            **common,
            "event_id": "order_id",
            "custom_data": {"value": "total", "currency": "currency", "order_id": "order_id"},
            "contents": {
                "field": "line_items",
                "id": "sku",
                "quantity": "quantity",
                "item_price": "unit_price",
            },
        }
    if kind == "subscription":
        return {
            **common,
            # Subscribe/StartTrial/cancel happen once per subscription, so its ID deduplicates
            # them; a renewal is a new purchase each period and is identified by its charge.
            "event_id": "subscription_id",
            "record_types": {"renewed": {"event_id": "order_id"}},
            "custom_data": {
                "value": "amount",
                "currency": "currency",
                "order_id": "order_id",
                "content_ids": "plan_id",
            },
        }
    raise ValueError(f"kind {kind} has no built-in mapping")
