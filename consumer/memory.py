"""Process memory: the garbage collector's thresholds and glibc's allocator.

A catch-up after a broker outage holds up to `limits.max_in_flight_events` events and librdkafka's
prefetch at once; once it is over, glibc keeps most of the freed memory in its arenas (one per thread
that allocates: librdkafka's threads, the poll thread, the event loop), so the process's RSS stays at
the high-water mark of its largest backlog. Measured in the soak (docs/operations.md, "Faults,
measured"): the memory in use came back to 20-70 MB after each catch-up while the arenas' free part
grew to over 100 MB. So the service caps glibc at two arenas and hands free pages back to the system
(`malloc_trim`) when a catch-up ends and every 15 s while it is not catching up. Both are no-ops
where the C library is not glibc.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import gc
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

GC_YOUNG_THRESHOLD = 20_000
MALLOC_ARENAS = 2
TRIM_INTERVAL_S = 15.0
_M_ARENA_MAX = -8  # glibc's mallopt parameter number


def tune_gc() -> None:
    """Garbage-collector settings for a long-running consumer, called once start-up is done.

    Every record allocates a few dozen container objects that die young; the default threshold of
    700 allocations runs a young collection every few records and a full one (which walks the
    normalization cache and everything in flight) every few thousand. The pipeline makes no reference
    cycles per record, so rarer young collections cost no memory; freezing moves the start-up objects
    (modules, schemas, the country index) out of every later collection. See docs/performance.md,
    "Optimisations".
    """
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


_LIBC = _glibc()


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's arenas; call before any thread starts (the Kafka clients). True when applied."""
    return _LIBC is not None and bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def release_free_memory() -> bool:
    """Hand the allocator's free pages back to the system. True when some were released."""
    return _LIBC is not None and bool(_LIBC.malloc_trim(0))


async def trim_periodically(
    stop: asyncio.Event,
    busy: Callable[[], bool],
    interval_s: float = TRIM_INTERVAL_S,
    check_s: float = 1.0,
) -> None:
    """Until `stop`: release free memory as soon as a catch-up ends (`busy()` turned false) and every
    `interval_s` while not `busy()` (during a catch-up the pages would only be asked for again)."""
    if _LIBC is None:
        return
    was_busy = False
    since = 0.0
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=check_s)
        if stop.is_set():
            return
        since += check_s
        if busy():
            was_busy = True
        elif was_busy or since >= interval_s:
            was_busy = False
            since = 0.0
            await asyncio.to_thread(release_free_memory)
