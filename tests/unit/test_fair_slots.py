"""FairSlots: request slots shared out in turn between destinations."""

from __future__ import annotations

import asyncio

from consumer.deliver import FairSlots


async def _use(slots: FairSlots, key: str, order: list[str], gate: asyncio.Event) -> None:
    async with slots.slot(key):
        order.append(key)
        await gate.wait()


def test_a_quiet_destination_gets_the_next_slot_before_a_noisy_ones_backlog() -> None:
    async def scenario() -> None:
        slots = FairSlots(2)
        gate = asyncio.Event()
        order: list[str] = []
        noisy = [asyncio.create_task(_use(slots, "noisy", order, gate)) for _ in range(10)]
        await asyncio.sleep(0)
        quiet = asyncio.create_task(_use(slots, "quiet", order, gate))
        await asyncio.sleep(0)
        assert order == ["noisy", "noisy"] and slots.queued == 9  # 8 noisy + 1 quiet wait
        gate.set()
        await asyncio.gather(*noisy, quiet)
        # Turns alternate between destinations: the quiet request goes out in the first round of
        # freed slots (noisy queued first, so it may take one turn), not after the noisy backlog of 8.
        assert "quiet" in order[2:4], order

    asyncio.run(scenario())


def test_slots_bound_concurrency_and_come_back() -> None:
    async def scenario() -> None:
        slots = FairSlots(3)
        running = 0
        peak = 0

        async def work(key: str) -> None:
            nonlocal running, peak
            async with slots.slot(key):
                running += 1
                peak = max(peak, running)
                await asyncio.sleep(0.001)
                running -= 1

        await asyncio.gather(*(work(f"d{i % 5}") for i in range(40)))
        assert peak == 3 and slots.queued == 0
        # All three slots are free again: three more enter at once.
        gate = asyncio.Event()
        order: list[str] = []
        tasks = [asyncio.create_task(_use(slots, "x", order, gate)) for _ in range(3)]
        await asyncio.sleep(0)
        assert len(order) == 3
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())


def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    async def scenario() -> None:
        slots = FairSlots(1)
        gate = asyncio.Event()
        order: list[str] = []
        first = asyncio.create_task(_use(slots, "a", order, gate))
        await asyncio.sleep(0)
        cancelled = asyncio.create_task(_use(slots, "b", order, gate))
        waiting = asyncio.create_task(_use(slots, "c", order, gate))
        await asyncio.sleep(0)
        cancelled.cancel()
        gate.set()
        await asyncio.gather(first, waiting)
        assert order == ["a", "c"] and slots.queued == 0

    asyncio.run(scenario())
