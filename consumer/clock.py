"""Time as a dependency: the loop, the batcher and delivery read the clock and sleep through this,
so tests run retries, backoffs and lingers in virtual time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Clock:
    wall: Callable[[], float] = time.time
    """Unix seconds (event ages, Meta's windows)."""
    monotonic: Callable[[], float] = time.monotonic
    """Seconds for intervals (linger, backoff, deadlines)."""
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


SYSTEM_CLOCK = Clock()
