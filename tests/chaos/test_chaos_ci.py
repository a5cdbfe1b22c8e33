"""The CI subset of the fault scenarios (`make chaos` runs them all): broker kill and restart, clean and
hard consumer bounces, the registry down at start-up, Graph answers slower than the request timeout.

Each asserts the harness's invariants (nothing lost, only poison records dead-lettered, committed
offsets never past an unsettled record, done within the bound) and the scenario's own (no duplicates
after clean bounces; not ready and no exit while the registry is down)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.harness import ChaosStack, Run
from tests.chaos.run import details, table
from tests.chaos.scenarios import SCENARIOS, Scenario

pytestmark = pytest.mark.integration

CI = [s for s in SCENARIOS if s.ci]


@pytest.mark.timeout(420)
@pytest.mark.parametrize("scenario", CI, ids=[s.name for s in CI])
def test_fault_scenario_keeps_every_event(
    chaos_stack: ChaosStack, scenario: Scenario, tmp_path: Path
) -> None:
    result = Run(chaos_stack, scenario, tmp_path / "run").execute()
    report = f"\n{table([result])}\n{details([result])}\nlogs: {tmp_path / 'run'}"
    assert result.events > 0, report
    assert result.lost == 0, report
    assert result.violations == [], report
