"""One fault-test stack (broker with a state dir, registry, emulator, toxiproxy) per session, for tests/chaos.

Not the shared `devstack` fixture: these tests kill, pause and restart the broker and the registry.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.chaos.harness import ChaosStack


@pytest.fixture(scope="session")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosStack]:
    chaos = ChaosStack(tmp_path_factory.mktemp("chaos"))
    try:
        yield chaos
    finally:
        chaos.stop()
