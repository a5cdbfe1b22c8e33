"""Route stage: which destination (pixel + token) an event goes to.

A mapped event names a fixed destination of the configuration or, in platform mode, a tenant
(`tenant:<id>`). The router turns that name into a `Destination` with the token as it is now (a
rotated token file is picked up by the registry), or says why the event cannot be routed: the tenant
is unknown to the registry (or its entry was refused), or it is disabled.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from consumer.config import TENANT_PREFIX
from consumer.deliver import Destination
from consumer.errors import TENANT_DISABLED, UNKNOWN_TENANT
from consumer.tenants import TenantRegistry

TENANT_METRIC_LABEL = "tenants"
"""The `pixel` metric label shared by every tenant not in `platform.status_tenants`."""


@dataclass(frozen=True, slots=True)
class Unroutable:
    """An event that cannot be sent: `action` says whether it is dead-lettered or filtered."""

    action: Literal["dead_letter", "filter"]
    reason: str
    detail: str
    """PII-free: the tenant id and what the registry says of it."""
    tenant: str
    unknown: bool = False
    """The registry has no entry for the tenant at all."""


class Router:
    def __init__(
        self,
        fixed: dict[str, Destination],
        registry: TenantRegistry | None = None,
        *,
        partner_agent: str | None = None,
        unknown_tenant: Literal["dead_letter", "filter"] = "dead_letter",
        status_tenants: frozenset[str] = frozenset(),
        park_tenants: bool = True,
    ) -> None:
        """`park_tenants`: tenants' destinations fail at once when Meta refuses them, for the loop to
        park their events (live platform mode); replay instead waits for them like fixed ones."""
        self.fixed = fixed
        self.registry = registry
        self._partner_agent = partner_agent
        self._unknown = unknown_tenant
        self._status_tenants = status_tenants
        self._park = park_tenants
        self._cache: dict[str, tuple[int, Destination | Unroutable]] = {}

    def resolve(self, name: str) -> Destination | Unroutable:
        fixed = self.fixed.get(name)
        if fixed is not None:
            return fixed
        registry = self.registry
        if registry is None or not name.startswith(TENANT_PREFIX):
            raise KeyError(f"no destination {name!r}")
        cached = self._cache.get(name)
        if cached is not None and cached[0] == registry.version:
            return cached[1]
        result = self._resolve_tenant(name, name[len(TENANT_PREFIX) :], registry)
        self._cache[name] = (registry.version, result)
        return result

    def _resolve_tenant(
        self, name: str, tenant_id: str, registry: TenantRegistry
    ) -> Destination | Unroutable:
        resolved = registry.resolve(tenant_id)
        if resolved.state == "ok":
            assert resolved.entry is not None and resolved.token is not None
            return Destination(
                name=name,
                pixel_id=resolved.entry.pixel_id,
                token=resolved.token.value,
                test_event_code=resolved.entry.test_event_code,
                partner_agent=self._partner_agent,
                parks=self._park,
                metric_label=resolved.entry.pixel_id
                if tenant_id in self._status_tenants
                else TENANT_METRIC_LABEL,
            )
        if resolved.state == "disabled":
            return Unroutable("filter", TENANT_DISABLED, f"tenant {tenant_id} is disabled", tenant_id)
        if resolved.state == "unknown":
            detail = f"tenant {tenant_id} is not in the registry"
        else:
            detail = f"tenant {tenant_id} cannot be used: {resolved.problem}"
        return Unroutable(self._unknown, UNKNOWN_TENANT, detail, tenant_id, resolved.state == "unknown")
