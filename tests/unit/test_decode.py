import copy
import datetime as dt
import io
import json
import random
import socket
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

from capi_devstack.samples import order
from consumer.config import AppConfig
from consumer.decode import Decoder, parse_schema
from consumer.errors import PipelineError

READER = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "order_event.avsc").read_text())


def test_schemaless_mode_reads_plain_avro_with_the_configured_writer_schema() -> None:
    record = order(3, now_ms=1_700_000_000_000, rng=random.Random(3))
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(READER), record)
    decoder = Decoder({"orders": parse_schema(READER)}, writer_schemas={"orders": parse_schema(READER)})
    decoded = decoder.decode("orders", buf.getvalue())
    assert decoded["order_id"] == record["order_id"] and decoded["total"] == record["total"]


@pytest.mark.parametrize(
    ("value", "reason"),
    [(b"", "empty_value"), (None, "empty_value"), (b"\x01\x00\x00\x00\x01x", "not_confluent_wire_format")],
)
def test_undecodable_values_fail_before_any_registry_lookup(value: bytes | None, reason: str) -> None:
    # Nothing listens on port 9: these must be recognised without asking the registry.
    registry = SchemaRegistryClient({"url": "http://127.0.0.1:9"})
    decoder = Decoder({"orders": parse_schema(READER)}, registry=registry)
    with pytest.raises(PipelineError) as err:
        decoder.decode("orders", value)
    assert err.value.failure.reason == reason
    assert str(err.value.failure.error_class) == "permanent"


def test_corrupt_schemaless_bytes_are_an_avro_decode_error() -> None:
    decoder = Decoder({"orders": parse_schema(READER)}, writer_schemas={"orders": parse_schema(READER)})
    with pytest.raises(PipelineError) as err:
        decoder.decode("orders", b"\xff\xff\xff\xff\xff\xff")
    assert err.value.failure.reason == "avro_decode_error" and str(err.value.failure.stage) == "decode"


class _Refusing:
    """A registry client whose every answer is HTTP `status`."""

    def __init__(self, status: int) -> None:
        self.status = status

    def get_schema(self, schema_id: int) -> object:
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        raise SchemaRegistryError(self.status, 40101, "refused")

    get_subjects = get_schema


@pytest.mark.parametrize("status", [401, 403, 500])
def test_a_registry_refusing_credentials_or_failing_makes_records_wait_not_fail(status: int) -> None:
    from consumer.decode import RegistryUnavailable

    decoder = Decoder({"t": parse_schema(READER)}, registry=_Refusing(status))  # type: ignore[arg-type]
    with pytest.raises(RegistryUnavailable):
        decoder.fetch_schema(7)
    with pytest.raises(RegistryUnavailable):
        decoder.ping()


def test_a_schema_id_the_registry_does_not_know_fails_its_records() -> None:
    decoder = Decoder({"t": parse_schema(READER)}, registry=_Refusing(404))  # type: ignore[arg-type]
    assert decoder.fetch_schema(7) is None
    with pytest.raises(PipelineError) as failed:
        decoder.decode("t", b"\0" + (7).to_bytes(4, "big") + b"\x02")
    assert failed.value.failure.reason == "unknown_schema_id"


# --- lean decoding (logical types left raw) ------------------------------------------------------------

TS = {"type": "long", "logicalType": "timestamp-millis"}


def _record_schema(*fields: tuple[str, Any], name: str = "R") -> dict[str, Any]:
    return {"type": "record", "name": name, "fields": [{"name": n, "type": t} for n, t in fields]}


def _encode(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(copy.deepcopy(schema)), record)
    return buf.getvalue()


class _Registry:
    """A registry client that knows some schemas by ID."""

    def __init__(self, schemas: dict[int, dict[str, Any]]) -> None:
        self.schemas = schemas

    def get_schema(self, schema_id: int) -> Any:
        return Schema(json.dumps(self.schemas[schema_id]), "AVRO")


def _framed(schema_id: int, payload: bytes) -> bytes:
    return b"\0" + schema_id.to_bytes(4, "big") + payload


def test_lean_decoding_leaves_timestamps_dates_and_decimals_raw() -> None:
    record = order(3, now_ms=1_700_000_000_123, rng=random.Random(3))
    value = _encode(READER, record)
    decoder = Decoder({"orders": parse_schema(READER)}, writer_schemas={"orders": parse_schema(READER)})
    lean, raw_logical = decoder.decode_lean("orders", value)
    assert raw_logical
    assert lean["occurred_at"] == record["occurred_at"]  # epoch milliseconds
    assert type(lean["total"]) is bytes and type(lean["line_items"][0]["unit_price"]) is bytes
    converted = decoder.decode("orders", value)
    assert converted["total"] == record["total"] and isinstance(converted["occurred_at"], dt.datetime)
    # Everything else is what `decode` returns.
    for key in ("order_id", "event_type", "shop_id", "currency", "web_context", "consent"):
        assert lean[key] == converted[key]


def _decoded_both_ways(
    reader: dict[str, Any], writer: dict[str, Any], record: dict[str, Any]
) -> tuple[tuple[dict[str, Any], bool], dict[str, Any]]:
    decoder = Decoder({"t": parse_schema(reader)}, registry=_Registry({7: writer}))  # type: ignore[arg-type]
    value = _framed(7, _encode(writer, record))
    return decoder.decode_lean("t", value), decoder.decode("t", value)


def test_an_evolved_writer_with_the_same_logical_types_is_read_lean() -> None:
    reader = _record_schema(("at", TS), ("note", ["null", "string"]))
    reader["fields"][1]["default"] = None
    writer = _record_schema(("extra", "string"), ("at", TS))  # a field more, one less (default)
    (lean, raw_logical), converted = _decoded_both_ways(
        reader, writer, {"extra": "x", "at": 1_700_000_000_999}
    )
    assert raw_logical and lean == {"at": 1_700_000_000_999, "note": None}
    assert converted["at"] == dt.datetime.fromtimestamp(1_700_000_000.999, dt.UTC)


@pytest.mark.parametrize(
    ("writer_type", "reader_type"),
    [
        ("long", TS),  # the writer never declared a timestamp: fastavro hands over the int
        ({"type": "long", "logicalType": "timestamp-micros"}, TS),  # a different unit
        (TS, "long"),  # the writer's datetime where the reader expects a plain long
        (
            {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 3},
            {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
        ),
    ],
)
def test_a_writer_declaring_other_logical_types_is_decoded_converted(
    writer_type: Any, reader_type: Any
) -> None:
    reader = _record_schema(("v", reader_type))
    writer = _record_schema(("v", writer_type))
    value: Any = 1_700_000_000_000
    if isinstance(writer_type, dict) and writer_type.get("logicalType") == "decimal":
        value = Decimal("1.234")
    elif writer_type == TS:
        value = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    (record, raw_logical), converted = _decoded_both_ways(reader, writer, {"v": value})
    assert not raw_logical and record == converted


def test_a_reader_default_for_a_logical_field_the_writer_lacks_is_decoded_converted() -> None:
    reader = _record_schema(("a", "string"), ("at", ["null", TS]))
    reader["fields"][1]["default"] = None
    writer = _record_schema(("a", "string"))
    (record, raw_logical), converted = _decoded_both_ways(reader, writer, {"a": "x"})
    assert not raw_logical and record == converted == {"a": "x", "at": None}


def test_a_union_where_a_raw_value_would_be_ambiguous_is_decoded_converted() -> None:
    schema = _record_schema(("v", ["null", "long", {"type": "int", "logicalType": "date"}]))
    (record, raw_logical), converted = _decoded_both_ways(schema, schema, {"v": dt.date(2026, 1, 2)})
    assert not raw_logical and record == converted == {"v": dt.date(2026, 1, 2)}


@pytest.mark.parametrize(
    ("logical", "good", "bad"),
    [
        (TS, 253_402_300_799_999, 253_402_300_800_000),
        ({"type": "long", "logicalType": "timestamp-millis"}, -62_135_596_800_000, -62_135_596_800_001),
        ({"type": "long", "logicalType": "local-timestamp-micros"}, 253_402_300_799_999_999, 2**62),
        ({"type": "int", "logicalType": "date"}, 2_932_896, 2_932_897),
    ],
)
def test_raw_values_fastavro_cannot_convert_fail_as_decode_fails(logical: Any, good: int, bad: int) -> None:
    schema = _record_schema(("v", logical), ("w", ["null", {"type": "array", "items": logical}]))
    plain = _record_schema(
        ("v", logical["type"]), ("w", ["null", {"type": "array", "items": logical["type"]}])
    )
    decoder = Decoder({"t": parse_schema(schema)}, writer_schemas={"t": parse_schema(schema)})
    ok = _encode(plain, {"v": good, "w": [good]})
    assert decoder.decode_lean("t", ok) == ({"v": good, "w": [good]}, True)
    for broken in ({"v": bad, "w": None}, {"v": good, "w": [good, bad]}):
        assert_lean_fails_alike(decoder, "t", _encode(plain, broken))


def test_corrupt_values_fail_lean_decoding_as_decode_fails() -> None:
    decoder = Decoder({"orders": parse_schema(READER)}, writer_schemas={"orders": parse_schema(READER)})
    good = _encode(READER, order(3, now_ms=1_700_000_000_000, rng=random.Random(3)))
    for value in (b"\xff\xff\xff\xff\xff\xff", good[:-7], b"\x00" + good):
        assert_lean_fails_alike(decoder, "orders", value)


def assert_lean_fails_alike(decoder: Decoder, topic: str, value: bytes) -> None:
    """`decode_lean` fails `value` with the same failure (stage, reason, message) as `decode`."""
    with pytest.raises(PipelineError) as expected:
        decoder.decode(topic, value)
    with pytest.raises(PipelineError) as lean:
        decoder.decode_lean(topic, value)
    assert lean.value.failure == expected.value.failure


def test_a_registry_that_never_answers_makes_records_wait_within_the_request_timeout() -> None:
    from consumer.decode import RegistryUnavailable

    # Accepts connections (the backlog does) and never answers: a hung registry.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        conf = AppConfig.model_validate(
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
                "schema_registry": {"url": url, "properties": {"timeout": 0.3, "max.retries": 0}},
                "topics": {"t": {"kind": "order", "reader_schema": "order_event.avsc", "destination": "d"}},
                "destinations": {"d": {"pixel_id": "1", "access_token_env": "T"}},
            }
        ).schema_registry_conf()
        assert conf is not None
        decoder = Decoder({"t": parse_schema(READER)}, registry=SchemaRegistryClient(conf))
        started = time.monotonic()
        with pytest.raises(RegistryUnavailable, match="Timeout"):
            decoder.fetch_schema(7)
        assert time.monotonic() - started < 5
