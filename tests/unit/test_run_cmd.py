"""`capi-consumer run` refuses a bad configuration before connecting anywhere: exit 2, key named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def _config(tmp_path: Path, **changes: Any) -> Path:
    config: dict[str, Any] = {
        "kafka": {"bootstrap_servers": "127.0.0.1:9"},
        "schema_registry": {"url": "http://127.0.0.1:9"},
        "topics": {
            "orders": {
                "kind": "custom",
                "reader_schema": str(SCHEMAS / "order_event.avsc"),
                "destination": "main",
                "mapping": {
                    "event_name": "Purchase",
                    "event_id": "order_id",
                    "event_time": "occurred_at",
                    "user_data": {"em": "customer.email"},
                },
            }
        },
        "destinations": {"main": {"pixel_id": "123", "access_token_env": "CAPI_TEST_TOKEN"}},
    }
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split("__")
        for key in parents:
            node = node[key]
        node[leaf] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _run(config: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_wrong_field_path_names_path_topic_and_schema(tmp_path: Path) -> None:
    mapping = {"event_name": "Purchase", "event_id": "order_idd", "event_time": "occurred_at"}
    proc = _run(_config(tmp_path, topics__orders__mapping=mapping), {"CAPI_TEST_TOKEN": "t"})
    assert proc.returncode == 2
    assert "order_idd" in proc.stderr and "orders" in proc.stderr and "OrderEvent" in proc.stderr


def test_missing_token_names_the_key_and_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CAPI_TEST_TOKEN"}
    proc = subprocess.run(
        [sys.executable, "-m", "consumer", "run", "--config", str(_config(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 2
    assert "destinations.main" in proc.stderr and "CAPI_TEST_TOKEN" in proc.stderr


def test_unknown_key_is_named(tmp_path: Path) -> None:
    proc = _run(_config(tmp_path, kafka__bootstrap_servres="x"), {"CAPI_TEST_TOKEN": "t"})
    assert proc.returncode == 2
    assert "kafka.bootstrap_servres" in proc.stderr


def test_token_never_printed_on_a_config_error(tmp_path: Path) -> None:
    secret = "EAAB-super-secret-token-value"
    proc = _run(_config(tmp_path, kafka__bootstrap_servres="x"), {"CAPI_TEST_TOKEN": secret})
    assert proc.returncode == 2 and secret not in proc.stderr + proc.stdout
