"""The `capi-emulator` command and the config file: one JSON line when listening, clean exit on signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from capi_emulator import EmulatorConfig, load_config
from tests.emulator.emulator_helpers import Client, error_of, make_event

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "deploy" / "emulator.example.yaml"


def _launch(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _first_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, proc.stderr.read() if proc.stderr else ""
    return line


@pytest.mark.parametrize(
    ("command", "sig"),
    [
        ([sys.executable, "-m", "capi_emulator.cli"], signal.SIGTERM),
        ([str(Path(sys.executable).parent / "capi-emulator")], signal.SIGINT),
    ],
)
def test_cli_prints_base_url_serves_and_exits_cleanly(command: list[str], sig: signal.Signals) -> None:
    proc = _launch([*command, "--host", "127.0.0.1", "--port", "0", "--config", str(EXAMPLE)])
    try:
        line = _first_line(proc)
        announced = json.loads(line)
        assert list(announced) == ["capi_base_url"]
        base = announced["capi_base_url"]
        assert base.startswith("http://127.0.0.1:") and int(base.rsplit(":", 1)[1]) > 0

        resp = requests.post(
            f"{base}/v26.0/1234567890/events",
            params={"access_token": "test-token"},
            json={"data": [make_event()]},
        )
        assert resp.json()["events_received"] == 1
        expired = requests.post(
            f"{base}/v26.0/1234567890/events",
            params={"access_token": "expired-token"},
            json={"data": [make_event()]},
        )
        assert error_of(expired)["error_subcode"] == 463
    finally:
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert out == ""  # exactly one line on stdout, already read


def test_cli_on_a_fixed_port() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = _launch([sys.executable, "-m", "capi_emulator.cli", "--port", str(port)])
    try:
        assert json.loads(_first_line(proc)) == {"capi_base_url": f"http://127.0.0.1:{port}"}
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_cli_rejects_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tokens:\n  t: {pixels: [1], colour: blue}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "capi_emulator.cli", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=REPO,
    )
    assert proc.returncode == 2
    assert "colour" in proc.stderr
    assert proc.stdout == ""


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.tokens["secured-token"].require_appsecret_proof
    assert cfg.latest_version == "v26.0"


def test_default_config_is_documented_one() -> None:
    cfg = EmulatorConfig()
    assert cfg.tokens["test-token"].pixels == ["1234567890", "2234567890"]
    assert cfg.accepted_versions == ["v23.0", "v24.0", "v25.0", "v26.0"]
    assert cfg.strict_hashing and cfg.max_events_per_request == 1000


def test_json_config_with_unquoted_ids(tmp_path: Path, make_client: Callable[..., Client]) -> None:
    path = tmp_path / "emu.json"
    path.write_text(json.dumps({"tokens": {"tok": {"pixels": [42]}}, "accepted_versions": ["v26.0"]}))
    cfg = load_config(path)
    assert cfg.tokens["tok"].pixels == ["42"]
    c = make_client(cfg)
    assert c.send([make_event()], token="tok", pixel="42").status_code == 200
    assert error_of(c.send([make_event()], token="tok", pixel="42", version="v25.0"))["code"] == 2635


def test_empty_config_file_means_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_config(path) == EmulatorConfig()
