"""`capi-consumer check` against the emulator: one test event per pixel, Meta's answer in words.

Four tenants set up as a platform meets them: one that works, one whose token expired, one whose
token lacks the permission, one whose pixel does not exist. No Kafka: the registry is a file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from capi_emulator import EmulatorConfig, TokenConfig, start_in_thread
from capi_emulator.server import RunningEmulator
from consumer.check import CHECK_EVENT_NAME

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    tokens = {
        "tok-good": TokenConfig(pixels=["9001"]),
        "tok-expired": TokenConfig(pixels=["9002"], expired=True),
        "tok-noperm": TokenConfig(pixels=["9003"], missing_permission=True),
        "tok-ghost": TokenConfig(pixels=["9004"]),
        "tok-fixed": TokenConfig(pixels=["1234567890"]),
    }
    with start_in_thread(EmulatorConfig(tokens=tokens)) as emu:
        yield emu


def _config(tmp_path: Path, base_url: str) -> Path:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for tenant, token in (("good", "tok-good"), ("expired", "tok-expired"), ("noperm", "tok-noperm")):
        (secrets / tenant).write_text(token + "\n")
    (secrets / "ghost-token").write_text("tok-ghost\n")
    tenants = {
        "good": {"pixel_id": "9001", "test_event_code": "TEST111"},
        "expired": {"pixel_id": "9002"},
        "noperm": {"pixel_id": "9003"},
        "ghost": {"pixel_id": "9999", "token_file": "ghost-token"},  # a pixel no one has
        "leaky": {"pixel_id": "9005", "access_token": "EAAB-must-not-leak"},
    }
    (tmp_path / "tenants.yaml").write_text(yaml.safe_dump(tenants))
    config = {
        "kafka": {"bootstrap_servers": "127.0.0.1:1"},
        "topics": {
            "shop-orders": {
                "kind": "order",
                "reader_schema": str(REPO / "schemas" / "order_event.avsc"),
                "writer_schema": str(REPO / "schemas" / "order_event.avsc"),
                "tenant_field": "shop_id",
            },
        },
        "destinations": {"main": {"pixel_id": "1234567890", "access_token_env": "CHECK_TOKEN"}},
        "platform": {
            "partner_agent": "plshop-2.0-1.1",
            "tenants": {"file": "tenants.yaml"},
            "secrets_dir": "secrets",
        },
        "capi": {"base_url": base_url, "timeout_s": 5},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _check(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "check", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CHECK_TOKEN": "tok-fixed"},
    )


def _get(emu: RunningEmulator, path: str) -> Any:
    with urllib.request.urlopen(f"{emu.base_url}/_emulator/{path}", timeout=10) as resp:
        return json.loads(resp.read())


def _requests(emu: RunningEmulator) -> list[dict[str, Any]]:
    data = _get(emu, "requests")
    entries: list[dict[str, Any]] = data["requests"] if isinstance(data, dict) else data
    return entries


def test_check_all_reports_each_tenant_in_words_and_fails(tmp_path: Path, emulator: RunningEmulator) -> None:
    config = _config(tmp_path, emulator.base_url)
    done = _check(config, "--all")
    assert done.returncode == 1, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines()}
    assert "ok" in lines["good"].split("  ")[2] and "FAILED" not in lines["good"]
    assert "ok" in lines["main"]
    assert "FAILED expired_token" in lines["expired"] and "[code 190/463" in lines["expired"]
    assert "fbtrace_id" in lines["expired"]
    assert "FAILED missing_permission" in lines["noperm"] and "[code 200" in lines["noperm"]
    assert "FAILED unknown_pixel" in lines["ghost"] and "[code 100/33" in lines["ghost"]
    assert "FAILED invalid_entry" in lines["leaky"] and "plaintext token refused" in lines["leaky"]
    assert "EAAB-must-not-leak" not in done.stdout + done.stderr
    assert "2 ok, 4 failed" in done.stderr
    # The test event is a clearly named custom event, with the tenant's test event code and the
    # platform's partner_agent; never a conversion.
    sent = _requests(emulator)
    assert len(sent) == 5
    assert {r.get("partner_agent") for r in sent} == {"plshop-2.0-1.1"}
    good = [r for r in sent if r.get("pixel_id") == "9001"]
    assert good and good[0].get("test_event_code") == "TEST111"
    events = _get(emulator, "events")["events"]
    assert {e["event"]["event_name"] for e in events} == {CHECK_EVENT_NAME}


def test_check_json_and_exit_codes(tmp_path: Path, emulator: RunningEmulator) -> None:
    config = _config(tmp_path, emulator.base_url)
    done = _check(config, "--tenant", "good", "--json", "--test-event-code", "TEST999")
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert (result["name"], result["pixel_id"], result["verdict"], result["ok"]) == (
        "good",
        "9001",
        "ok",
        True,
    )
    assert _requests(emulator)[-1].get("test_event_code") == "TEST999"
    one_bad = _check(config, "--tenant", "good", "--tenant", "expired", "--json")
    assert one_bad.returncode == 1
    verdicts = {r["name"]: (r["verdict"], r["code"], r["subcode"]) for r in json.loads(one_bad.stdout)}
    assert verdicts == {"good": ("ok", None, None), "expired": ("expired_token", 190, 463)}
    assert _check(config, "--destination", "nope").returncode == 2
    assert _check(config).returncode == 2
