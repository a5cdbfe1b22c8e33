"""Parking (platform mode): a tenant Meta refuses waits apart, so the others keep flowing.

When Meta refuses a tenant's token, permission or pixel, that tenant is *parked*: its events are
copied to the parked topic of their source topic (`<topic>.parked`, durable, acknowledged by Kafka
before the source offset is committed) instead of holding up the partitions they share with every
other tenant, and memory holds nothing of them. Parked topics are read in *passes*: a pass opens each
parked partition up to its end at that moment; a parked tenant's events go out again when its probe
is due (the first batch that goes out is the probe), the rest are parked again at the end of the
topic. A probe that Meta accepts releases the tenant; one it refuses doubles the tenant's wait (up to
`max_backoff_s`). A changed registry entry or token makes the tenant's probe due at once, so a
replaced token releases its events within a pass. Events that pass Meta's 7-day window while parked
fail validation when read again and go to the dead-letter topic as `event_too_old`.

This module keeps who is parked, since when, why, and when to look again; the loop does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from consumer.config import TENANT_PREFIX


@dataclass
class ParkedTenant:
    since: float
    """Monotonic seconds when it was parked."""
    reason: str
    """PII-free summary of Meta's answer (code, subcode)."""
    backoff_s: float
    next_probe_at: float
    """Monotonic seconds from when its events may go out again as a probe."""
    oldest_event_time: float | None = None
    """Unix seconds: event_time of the oldest event parked since it was parked (Meta's 7 days)."""


class ParkingLot:
    def __init__(self, *, initial_backoff_s: float = 30.0, max_backoff_s: float = 1800.0) -> None:
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s
        self.parked: dict[str, ParkedTenant] = {}

    def park(self, tenant_id: str, reason: str, now: float) -> bool:
        """Meta refused the tenant (again): wait before the next probe. True if newly parked."""
        current = self.parked.get(tenant_id)
        if current is None:
            self.parked[tenant_id] = ParkedTenant(
                now, reason, self.initial_backoff_s, now + self.initial_backoff_s
            )
            return True
        if current.next_probe_at <= now:
            # A probe failed: wait longer before the next one.
            current.backoff_s = min(self.max_backoff_s, current.backoff_s * 2)
            current.next_probe_at = now + current.backoff_s
        current.reason = reason
        return False

    def note_event(self, tenant_id: str, event_time: float) -> None:
        """An event of a parked tenant waits: remember the oldest (alerting before Meta's 7 days)."""
        current = self.parked.get(tenant_id)
        if current is not None and (
            current.oldest_event_time is None or event_time < current.oldest_event_time
        ):
            current.oldest_event_time = event_time

    def oldest_event_age(self, wall: float) -> float:
        """Seconds since the event_time of the oldest event any parked tenant has waiting (0: none)."""
        times = [t.oldest_event_time for t in self.parked.values() if t.oldest_event_time is not None]
        return max(0.0, wall - min(times)) if times else 0.0

    def release(self, tenant_id: str) -> bool:
        """Meta accepted the tenant's events: it is no longer parked. True if it was."""
        return self.parked.pop(tenant_id, None) is not None

    def probe_now(self, tenant_ids: Iterable[str], now: float) -> None:
        """The tenants' entry or token changed: let their next events go out at once."""
        for tenant_id in tenant_ids:
            current = self.parked.get(tenant_id)
            if current is not None:
                current.next_probe_at = now

    def holds(self, destination: str, now: float) -> bool:
        """True when events for `destination` must be parked rather than sent."""
        if not destination.startswith(TENANT_PREFIX):
            return False
        current = self.parked.get(destination[len(TENANT_PREFIX) :])
        return current is not None and current.next_probe_at > now

    def probe_due(self, now: float) -> bool:
        return any(t.next_probe_at <= now for t in self.parked.values())

    def postpone_unprobed(self, started: float, now: float) -> None:
        """After a pass that began at `started`: a tenant whose probe was due but sent nothing (none of
        its events were in the partitions read) waits its backoff again instead of being due forever."""
        for tenant in self.parked.values():
            if tenant.next_probe_at <= started:
                tenant.next_probe_at = now + tenant.backoff_s


@dataclass
class Activity:
    last_success: float | None = None
    """Unix seconds of the last batch Meta accepted."""
    last_error: str | None = None
    """The last refusal (PII-free summary)."""
    waiting: int = 0
    """Events this member parked minus those it read back (approximate across members)."""
    connection: str | None = None
    """The verdict of the last connection test (`consumer.check`): ok, expired_token, ..."""
    connection_checked_at: float | None = None


class TenantBook:
    """What this member saw of each tenant, for `/tenants`: bounded by the registry's tenants (the
    loop drops the others on each refresh) plus the `max_unknown` unknown ids seen most recently."""

    def __init__(self, max_unknown: int = 1000) -> None:
        self.activity: dict[str, Activity] = {}
        self.unknown: dict[str, float] = {}
        """Tenant ids events named but the registry did not know -> Unix seconds last seen."""
        self._max_unknown = max_unknown

    def _of(self, tenant_id: str) -> Activity:
        activity = self.activity.get(tenant_id)
        if activity is None:
            activity = self.activity[tenant_id] = Activity()
        return activity

    def accepted(self, tenant_id: str, wall: float) -> None:
        self._of(tenant_id).last_success = wall

    def refused(self, tenant_id: str, reason: str) -> None:
        self._of(tenant_id).last_error = reason

    def connection_tested(self, tenant_id: str, verdict: str, wall: float) -> None:
        activity = self._of(tenant_id)
        activity.connection, activity.connection_checked_at = verdict, wall

    def parked(self, tenant_id: str) -> None:
        self._of(tenant_id).waiting += 1

    def read_back(self, tenant_id: str) -> None:
        activity = self.activity.get(tenant_id)
        if activity is not None and activity.waiting > 0:
            activity.waiting -= 1

    def saw_unknown(self, tenant_id: str, wall: float) -> None:
        self.unknown.pop(tenant_id, None)
        self.unknown[tenant_id] = wall
        while len(self.unknown) > self._max_unknown:
            del self.unknown[next(iter(self.unknown))]

    def keep_only(self, tenant_ids: Iterable[str]) -> None:
        """Forget tenants that left the registry (their unknown-id entries stay until pushed out)."""
        keep = set(tenant_ids)
        for tenant_id in [t for t in self.activity if t not in keep]:
            del self.activity[tenant_id]
        for tenant_id in keep & set(self.unknown):
            del self.unknown[tenant_id]
