"""Fixtures for the emulator tests: a real server on 127.0.0.1 (free port) per test, driven over HTTP."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from capi_emulator import EmulatorConfig, RunningEmulator, start_in_thread
from tests.emulator.emulator_helpers import Client, FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    started: list[RunningEmulator] = []

    def factory(config: EmulatorConfig | None = None, clock: Callable[[], float] | None = None) -> Client:
        running = start_in_thread(config, clock=clock)
        started.append(running)
        return Client(running)

    yield factory
    for running in started:
        running.stop()


@pytest.fixture
def client(make_client: Callable[..., Client]) -> Client:
    return make_client()
