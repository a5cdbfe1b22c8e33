"""Fixtures of the deploy/ checks: promtool, built once from source through the Go module proxy."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "deploy" / "prometheus" / "capi-consumer.rules.yml"
RULES_TEST = REPO / "deploy" / "prometheus" / "capi-consumer.rules.test.yml"
DASHBOARD = REPO / "deploy" / "grafana" / "capi-consumer.json"
GET_PROMTOOL = REPO / "deploy" / "prometheus" / "get-promtool.sh"
# The first build downloads ~200 modules and compiles for ~6 minutes on 2 cores.
BUILD_TIMEOUT_S = 1500

_METRIC = re.compile(r"\bcapi_[a-z0-9_]+\b")


def metric_names(promql: str) -> set[str]:
    """The capi_* metric names a PromQL expression mentions."""
    return set(_METRIC.findall(promql))


@pytest.fixture(scope="session")
def promtool() -> Path:
    """Path of promtool; built by deploy/prometheus/get-promtool.sh into the cache when missing."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(GET_PROMTOOL)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"building promtool took longer than {BUILD_TIMEOUT_S}s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"get-promtool.sh failed ({done.returncode}):\n{done.stderr[-3000:]}", pytrace=False)
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.is_file(), done.stdout
    if time.monotonic() - started > 5:
        print(f"promtool built in {time.monotonic() - started:.0f}s: {path}")
    return path


def run_promtool(promtool: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(promtool), *args], capture_output=True, text=True, timeout=120, cwd=cwd, check=False
    )
