"""consumer.memory: glibc's free pages go back to the system; the periodic trim skips catch-ups."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from consumer import memory


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_release_free_memory_hands_fragmented_free_pages_back() -> None:
    assert memory._LIBC is not None, "glibc expected on the test machines (Debian)"
    # 200 MB of 4 KB blocks (malloc, not pymalloc), one in 64 kept: the free ones sit between kept
    # ones, so glibc cannot shrink its heap by itself.
    blocks = [bytes(4000) + bytes([i % 251]) for i in range(50_000)]
    kept = blocks[::64]
    del blocks
    before = _rss_mb()
    memory.release_free_memory()
    after = _rss_mb()
    assert len(kept) == 782
    assert before - after > 100, (before, after)


def test_trim_runs_when_a_catch_up_ends_and_not_during_it(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    def release() -> bool:
        calls.append(True)
        return True

    monkeypatch.setattr(memory, "release_free_memory", release)
    busy = [True]

    async def scenario() -> None:
        stop = asyncio.Event()
        trim = memory.trim_periodically(stop, busy=lambda: busy[0], interval_s=3600, check_s=0.01)
        task = asyncio.create_task(trim)
        await asyncio.sleep(0.1)
        assert calls == []  # catching up: the pages would only be asked for again
        busy[0] = False
        await asyncio.sleep(0.1)
        assert calls == [True]  # once, as the catch-up ended (the interval is an hour)
        stop.set()
        await asyncio.wait_for(task, 1)

    asyncio.run(scenario())
