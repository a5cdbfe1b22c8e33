"""`capi-consumer map`: the offline dry run over JSON lines."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import pytest

from consumer import cli
from consumer.commands import map_cmd

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def write_config(tmp_path: Path, **topic: Any) -> Path:
    path = tmp_path / "config.yaml"
    orders = {
        "kind": "order",
        "reader_schema": str(SCHEMAS / "order_event.avsc"),
        "destination": "main",
        **topic,
    }
    path.write_text(
        json.dumps(  # JSON is valid YAML
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:1"},  # nothing listens: a dry run never connects
                "schema_registry": {"url": "http://127.0.0.1:1"},
                "topics": {"orders": orders},
                "destinations": {
                    "main": {"pixel_id": "1", "access_token_env": "CAPI_TOKEN_NOT_SET_IN_TESTS"}
                },
            }
        )
    )
    return path


def order_line(**overrides: Any) -> str:
    record = {
        "order_id": "o-1",
        "event_type": "placed",
        "occurred_at": int(time.time() * 1000) - 60_000,
        "shop_id": "s",
        "total": "19.99",
        "currency": "usd",
        "customer": {"email": "a@example.com"},
        **overrides,
    }
    return json.dumps(record)


def run(config: Path, lines: list[str], topic: str = "orders") -> tuple[int, list[Any], list[Any], str]:
    out, err = io.StringIO(), io.StringIO()
    code = map_cmd.run(str(config), topic, io.StringIO("\n".join(lines) + "\n"), out, err)
    stdout = [json.loads(line) for line in out.getvalue().splitlines()]
    stderr_text = err.getvalue()
    stderr = [json.loads(line) for line in stderr_text.splitlines()] if code != 2 else []
    return code, stdout, stderr, stderr_text


@pytest.fixture(autouse=True)
def _no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAPI_TOKEN_NOT_SET_IN_TESTS", raising=False)


def test_mapped_records_are_printed_as_server_events(tmp_path: Path) -> None:
    code, events, problems, _ = run(write_config(tmp_path), [order_line(), "", order_line(order_id="o-2")])
    assert code == 0 and problems == []
    assert [e["event_id"] for e in events] == ["o-1", "o-2"]
    assert events[0]["event_name"] == "Purchase"
    assert events[0]["custom_data"]["value"] == 19.99 and events[0]["custom_data"]["currency"] == "USD"
    assert len(events[0]["user_data"]["em"]) == 64  # hashed


def test_filtered_and_rejected_lines_go_to_stderr_with_their_reason(tmp_path: Path) -> None:
    lines = [
        order_line(event_type="refunded"),
        "{not json",
        order_line(total="1.23456"),
        order_line(occurred_at=0),
        "[1, 2]",
        order_line(),
    ]
    code, events, problems, _ = run(write_config(tmp_path), lines)
    assert code == 1
    assert [e["event_id"] for e in events] == ["o-1"]
    assert [(p["line"], p["result"], p.get("stage"), p["reason"]) for p in problems] == [
        (1, "filtered", None, "event_type_not_sent"),
        (2, "rejected", "input", "invalid_json"),
        (3, "rejected", "input", "invalid_record"),
        (4, "rejected", "validate", "event_too_old"),
        (5, "rejected", "input", "invalid_record"),
    ]
    assert problems[2]["detail"].startswith("$.total: more than 3 decimal places")


def test_only_filtered_records_exit_zero(tmp_path: Path) -> None:
    code, events, problems, _ = run(write_config(tmp_path), [order_line(event_type="completed")])
    assert (code, events, [p["result"] for p in problems]) == (0, [], ["filtered"])


def test_bad_config_exits_2_with_the_problems(tmp_path: Path) -> None:
    config = write_config(tmp_path, destination="nowhere")
    code, events, _, text = run(config, [order_line()])
    assert code == 2 and events == []
    assert "topics.orders.destination: unknown destination 'nowhere'" in text


def test_bad_mapping_path_exits_2(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        kind="custom",
        mapping={"event_name": "Lead", "event_id": "order_idd", "event_time": "occurred_at"},
    )
    code, _, _, text = run(config, [order_line()])
    assert code == 2
    assert "topics.orders.mapping.event_id: field 'order_idd' does not exist" in text


def test_unknown_topic_exits_2(tmp_path: Path) -> None:
    code, _, _, text = run(write_config(tmp_path), [], topic="payments")
    assert code == 2 and "--topic: 'payments' is not configured (topics: orders)" in text


def test_cli_dispatches_to_the_map_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(order_line() + "\n"))
    code = cli.main(["map", "--config", str(write_config(tmp_path)), "--topic", "orders"])
    out = capsys.readouterr()
    assert code == 0 and out.err == ""
    assert json.loads(out.out)["event_id"] == "o-1"
