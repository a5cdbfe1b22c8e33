"""Fixtures of the integration tests (the broker and registry are session fixtures in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from capi_emulator import start_in_thread
from capi_emulator.server import RunningEmulator


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    """A CAPI emulator with its default tokens, on a free loopback port, for one test (test modules
    that need other tokens define their own)."""
    with start_in_thread() as emu:
        yield emu
