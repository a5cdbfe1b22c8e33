"""`capi-consumer hash FIELD VALUE`, run through the real CLI dispatch."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from consumer.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    code = main(["hash", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def test_phone_with_country_hint(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, "ph", "(650)555-1212", "--country", "US")
    assert code == 0
    assert lines == ["16505551212", hashlib.sha256(b"16505551212").hexdigest()]
    assert err == ""


def test_default_phone_region(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "ph", "020 7946 0018", "--default-phone-region", "GB")
    assert (code, lines[0]) == (0, "442079460018")


def test_state_with_country_name(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "st", "Georgia", "--country", "Georgia")
    assert (code, lines[0]) == (0, "georgia")


def test_omitted_value_prints_the_reason_and_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, err = run(capsys, "ph", "555-1212")
    assert code == 1
    assert lines == []
    assert err.strip() == "omitted: invalid_phone"
    assert "555" not in err


def test_unhashed_field_prints_the_value_sent(capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(capsys, "client_ip_address", " 2001:db8::1 ")
    assert (code, lines) == (0, ["2001:db8::1"])


@pytest.mark.parametrize(
    "argv",
    [
        ("email", "a@b.co"),
        ("ph", "1", "--country", "Atlantis"),
        ("ph", "1", "--default-phone-region", "Atlantis"),
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]) -> None:
    code, lines, err = run(capsys, *argv)
    assert code == 2
    assert lines == []
    assert err.startswith("capi-consumer hash:")


def test_module_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "consumer", "hash", "em", " John_Smith@gmail.com "],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "john_smith@gmail.com",
        "62a14e44f765419d10fea99367361a727c12365e2520f32218d505ed9aa0f62f",
    ]
