import io
import json
import random
from pathlib import Path

import fastavro
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient

from capi_devstack.samples import order
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
