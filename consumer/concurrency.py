"""Adaptive request concurrency: how many Graph requests each destination may have in flight.

Meta answers most requests within 600 ms, sometimes much slower, and throttles an app, a pixel or an
ad account that calls too often (codes 4, 17, 32, 613, 80004, ...). A fixed number of requests in
flight is too few when Meta is slow (throughput = requests in flight x events per request / latency)
and too many when it throttles. So each destination (a configured destination, or a tenant) has its
own limit, steered by AIMD, additive increase and multiplicative decrease, as in TCP's congestion
control:

- Answers are counted in windows of about one round trip (as many answers as the limit). A window
  whose median latency is normal raises the limit, if the destination used all of it in that window
  (a limit that is not used says nothing about whether more would work): doubling per window until
  the first sign of overload (slow start), by one per window after that.
- A sign of overload halves the limit (`decrease_factor`): a throttling answer or a timeout
  (`GraphError.overload`, consumer.errors), or a window whose median latency is a spike: above
  `latency_tolerance` x the baseline *and* above `latency_spike_floor_s` (latencies below the floor
  are normal whatever the baseline: at tens of milliseconds, what varies is the batch size and this
  process's own event loop, not Meta). Answers to requests sent before a decrease cannot decrease
  the limit again: at most one decrease per round trip.
- The baseline follows the fastest windows: it moves half-way down to a window median below it at
  once and only 5 % of the way up to one above it, so that a lasting change of Meta's latency becomes
  the new normal instead of a spike for ever. Medians, not means: one slow answer in a window (Meta's
  latency has a long tail) is not a spike; most of the window slowing down is.
- Answers that say nothing about load (a connection reset) change nothing.

`AimdLimit` is that arithmetic alone (latencies are passed in: no clock, no I/O). `AdaptiveSlots`
hands out request slots under those limits and under a process-wide cap (`capi.max_requests_in_flight`),
in turn between destinations (round-robin), so that a noisy or slow tenant cannot starve the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

BASELINE_RISE = 0.05
"""How far the baseline moves toward a window median above it..."""
BASELINE_FALL = 0.5
"""... and toward one below it."""
FORGET_CHECK_S = 60.0


@dataclass(frozen=True, slots=True)
class ConcurrencySettings:
    """Bounds and tuning of the per-destination limits (`capi.max_requests_in_flight`, `capi.concurrency`)."""

    max_in_flight: int = 64
    """Process-wide cap: requests in flight over all destinations."""
    min_limit: int = 1
    max_limit: int = 64
    initial_limit: int = 8
    adaptive: bool = True
    """False: every destination's limit is `max_limit`, fixed (the cap still applies)."""
    latency_tolerance: float = 2.0
    latency_spike_floor_s: float = 0.5
    decrease_factor: float = 0.5
    forget_after_s: float = 600.0
    """A destination without requests for this long is forgotten (it starts again at the initial limit)."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_limit <= self.initial_limit <= self.max_limit <= self.max_in_flight:
            raise ValueError(f"need 1 <= min <= initial <= max <= max_in_flight: {self}")
        if not 0 < self.decrease_factor < 1 or self.latency_tolerance <= 1:
            raise ValueError(f"need 0 < decrease_factor < 1 and latency_tolerance > 1: {self}")


class Signal(enum.Enum):
    """What one answer says about load."""

    NORMAL = "normal"
    """Meta answered (accepted or not): its latency is a sample."""
    OVERLOAD = "overload"
    """Throttled, timed out, or HTTP 429/503: send less at once."""
    NEUTRAL = "neutral"
    """No answer that tells anything about load (a connection reset, a cancelled request)."""


class AimdLimit:
    """One destination's limit. `on_send()` numbers each request; `record()` takes its answer."""

    __slots__ = (
        "_epoch",
        "_sent",
        "_settings",
        "_window",
        "_window_used",
        "baseline_s",
        "decreases",
        "increases",
        "last_active",
        "limit",
        "slow_start",
    )

    def __init__(self, settings: ConcurrencySettings, now: float = 0.0) -> None:
        self._settings = settings
        self.limit = settings.initial_limit if settings.adaptive else settings.max_limit
        self.slow_start = True
        self.baseline_s: float | None = None
        self.increases = 0
        self.decreases = 0
        self.last_active = now
        self._sent = 0
        self._epoch = 0
        """Requests numbered up to this were sent before the last decrease."""
        self._window: list[float] = []
        """Latencies of the current window's answers."""
        self._window_used = False

    def on_send(self, now: float = 0.0) -> int:
        """A request goes out; its number, to pass to `record`."""
        self._sent += 1
        self.last_active = now
        return self._sent

    def record(
        self, request: int, latency_s: float, signal: Signal, *, saturated: bool, now: float = 0.0
    ) -> bool:
        """The answer to request number `request`, `latency_s` after it was sent. `saturated`: the
        destination had its whole limit in flight when it was sent. True when the limit changed."""
        self.last_active = now
        if not self._settings.adaptive or request <= self._epoch or signal is Signal.NEUTRAL:
            return False
        if signal is Signal.OVERLOAD:
            return self._decrease()
        window = self._window
        window.append(latency_s)
        self._window_used = self._window_used or saturated
        if len(window) < self.limit:
            return False
        window.sort()
        median = window[len(window) // 2]
        used = self._window_used
        self._new_window()
        baseline = self.baseline_s
        if baseline is None:
            self.baseline_s = median
        else:
            step = BASELINE_FALL if median < baseline else BASELINE_RISE
            self.baseline_s = baseline + step * (median - baseline)
        s = self._settings
        if baseline is not None and median > max(s.latency_tolerance * baseline, s.latency_spike_floor_s):
            return self._decrease()
        if used:
            return self._increase()
        return False

    def _new_window(self) -> None:
        self._window = []
        self._window_used = False

    def _decrease(self) -> bool:
        s = self._settings
        old = self.limit
        self.limit = max(s.min_limit, math.floor(old * s.decrease_factor))
        self.slow_start = False
        self._epoch = self._sent
        self._new_window()
        self.decreases += 1
        return self.limit != old

    def _increase(self) -> bool:
        old = self.limit
        grown = old * 2 if self.slow_start else old + 1
        self.limit = min(self._settings.max_limit, grown)
        self.increases += 1
        return self.limit != old


@dataclass(slots=True)
class Slot:
    """A granted request slot. Report the answer with `answered`; an unanswered slot (cancelled,
    failed before sending) is released without changing the limit."""

    key: str
    request: int
    saturated: bool
    latency_s: float | None = None
    signal: Signal = Signal.NEUTRAL

    def answered(self, latency_s: float, signal: Signal) -> None:
        self.latency_s = latency_s
        self.signal = signal


@dataclass(slots=True)
class _Destination:
    key: str
    label: str
    limit: AimdLimit
    in_flight: int = 0


class AdaptiveSlots:
    """Request slots: at most `max_in_flight` in all, at most each destination's AIMD limit per
    destination. When requests queue, the destinations with room under their own limit get the next
    free slots in turn (round-robin), so a client with many batches, or a slow one, cannot starve the
    others.

    `on_limit(label, value)` reports a label's limit when it changes: the lowest limit among the
    destinations that share the label (platform mode: tenants share one), None once none is left.
    `on_in_flight(n)` reports the requests in flight."""

    def __init__(
        self,
        settings: ConcurrencySettings | None = None,
        *,
        monotonic: Callable[[], float] = lambda: 0.0,
        on_limit: Callable[[str, int | None], None] | None = None,
        on_in_flight: Callable[[int], None] | None = None,
    ) -> None:
        self.settings = settings = settings or ConcurrencySettings()
        self._free = settings.max_in_flight
        self._monotonic = monotonic
        self._on_limit = on_limit
        self._on_in_flight = on_in_flight
        self._destinations: dict[str, _Destination] = {}
        self._ready: dict[str, deque[asyncio.Future[Slot]]] = {}
        """Destinations with waiting requests and room under their own limit, in turn order."""
        self._blocked: dict[str, deque[asyncio.Future[Slot]]] = {}
        """Destinations with waiting requests that have their whole limit in flight."""
        self._labels: dict[str, Counter[int]] = {}
        """label -> how many of its destinations have each limit (its lowest is exported)."""
        self._next_forget = monotonic() + FORGET_CHECK_S

    # -- reading
    def limit(self, key: str) -> int:
        """A destination's current limit (the initial one for a destination not seen yet)."""
        dest = self._destinations.get(key)
        if dest is not None:
            return dest.limit.limit
        s = self.settings
        return s.initial_limit if s.adaptive else s.max_limit

    def in_flight(self, key: str | None = None) -> int:
        """Requests in flight, of one destination or of all."""
        if key is None:
            return self.settings.max_in_flight - self._free
        dest = self._destinations.get(key)
        return dest.in_flight if dest is not None else 0

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._ready.values()) + sum(len(q) for q in self._blocked.values())

    # -- slots
    @contextlib.asynccontextmanager
    async def slot(self, key: str, label: str = "") -> AsyncIterator[Slot]:
        dest = self._destinations.get(key) or self._add(key, label or key)
        if (
            self._free > 0
            and not self._ready
            and key not in self._blocked
            and dest.in_flight < dest.limit.limit
        ):
            granted = self._grant(dest)
        else:
            future: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
            queue = self._blocked.get(key)
            if queue is None:
                queue = self._ready.get(key)
            if queue is None:
                # At its own limit it waits apart, and does not hold up destinations with room.
                waiting = self._blocked if dest.in_flight >= dest.limit.limit else self._ready
                queue = waiting[key] = deque()
            queue.append(future)
            try:
                granted = await future
            except asyncio.CancelledError:
                if future.done() and not future.cancelled():
                    self._release(future.result())  # granted as we were cancelled: pass it on
                else:
                    self._forget_waiter(key, future)
                raise
        try:
            yield granted
        finally:
            self._release(granted)

    def _add(self, key: str, label: str) -> _Destination:
        dest = _Destination(key, label, AimdLimit(self.settings, self._monotonic()))
        self._destinations[key] = dest
        self._count_limit(label, None, dest.limit.limit)
        return dest

    def _grant(self, dest: _Destination) -> Slot:
        dest.in_flight += 1
        self._free -= 1
        request = dest.limit.on_send(self._monotonic())
        if self._on_in_flight is not None:
            self._on_in_flight(self.settings.max_in_flight - self._free)
        return Slot(dest.key, request, saturated=dest.in_flight >= dest.limit.limit)

    def _release(self, slot: Slot) -> None:
        dest = self._destinations[slot.key]
        dest.in_flight -= 1
        self._free += 1
        if slot.latency_s is not None:
            old = dest.limit.limit
            now = self._monotonic()
            limit = dest.limit
            if limit.record(slot.request, slot.latency_s, slot.signal, saturated=slot.saturated, now=now):
                self._count_limit(dest.label, old, limit.limit)
        blocked = self._blocked.get(slot.key)
        if blocked is not None and dest.in_flight < dest.limit.limit:
            del self._blocked[slot.key]
            self._ready[slot.key] = blocked  # back of the line
        self._dispatch()
        if self._on_in_flight is not None:
            self._on_in_flight(self.settings.max_in_flight - self._free)
        self._forget_idle()

    def _dispatch(self) -> None:
        while self._free > 0 and self._ready:
            key = next(iter(self._ready))
            queue = self._ready.pop(key)
            dest = self._destinations[key]
            if dest.in_flight >= dest.limit.limit:
                self._blocked[key] = queue  # its limit went down while it waited
                continue
            future = queue.popleft()
            if not future.done():
                future.set_result(self._grant(dest))
            if queue:
                target = self._ready if dest.in_flight < dest.limit.limit else self._blocked
                target[key] = queue  # back of the line: the others go first

    def _forget_waiter(self, key: str, future: asyncio.Future[Slot]) -> None:
        for waiting in (self._ready, self._blocked):
            queue = waiting.get(key)
            if queue is not None and future in queue:
                queue.remove(future)
                if not queue:
                    del waiting[key]

    # -- the exported limit per label
    def _count_limit(self, label: str, old: int | None, new: int | None) -> None:
        counts = self._labels.setdefault(label, Counter())
        before = min(counts) if counts else None
        if old is not None:
            counts[old] -= 1
            if counts[old] <= 0:
                del counts[old]
        if new is not None:
            counts[new] += 1
        after = min(counts) if counts else None
        if after is None:
            del self._labels[label]
        if after != before and self._on_limit is not None:
            self._on_limit(label, after)

    def _forget_idle(self) -> None:
        """Drop destinations idle for `forget_after_s` (a platform's registry changes over time)."""
        now = self._monotonic()
        if now < self._next_forget:
            return
        self._next_forget = now + FORGET_CHECK_S
        horizon = now - self.settings.forget_after_s
        for key, dest in list(self._destinations.items()):
            if (
                dest.in_flight == 0
                and dest.limit.last_active < horizon
                and key not in self._ready
                and key not in self._blocked
            ):
                del self._destinations[key]
                self._count_limit(dest.label, dest.limit.limit, None)
