"""Generated Avro readers read exactly what fastavro reads, and refuse what they cannot read plainly."""

from __future__ import annotations

import io
import json
import math
import struct
import time
from typing import Any

import fastavro
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.workload import ORDER_SCHEMA_PATH, avro_bytes, order_schema, orders
from consumer.avro_reader import Unreadable, compile_reader
from consumer.decode import Decoder, parse_schema
from consumer.errors import PipelineError

EVERY_TYPE = fastavro.parse_schema(
    {
        "type": "record",
        "name": "test.Everything",
        "fields": [
            {"name": "n", "type": "null"},
            {"name": "flag", "type": "boolean"},
            {"name": "i", "type": "int"},
            {"name": "l", "type": "long"},
            {"name": "f", "type": "float"},
            {"name": "d", "type": "double"},
            {"name": "raw", "type": "bytes"},
            {"name": "s", "type": "string"},
            {
                "name": "colour",
                "type": {"type": "enum", "name": "test.Colour", "symbols": ["RED", "GREEN", "BLUE"]},
            },
            {"name": "md5", "type": {"type": "fixed", "name": "test.MD5", "size": 4}},
            {"name": "tags", "type": {"type": "array", "items": "string"}},
            {"name": "counts", "type": {"type": "map", "values": "long"}},
            {
                "name": "address",
                "type": [
                    "null",
                    {
                        "type": "record",
                        "name": "test.Address",
                        "fields": [
                            {"name": "city", "type": ["null", "string"]},
                            {"name": "colour", "type": "test.Colour"},
                        ],
                    },
                ],
            },
            {"name": "addresses", "type": {"type": "array", "items": "test.Address"}},
            {
                "name": "choice",
                "type": ["null", "int", "string", "test.MD5", {"type": "map", "values": "double"}],
            },
            {
                "name": "nested",
                "type": {"type": "array", "items": {"type": "map", "values": ["null", "boolean"]}},
            },
        ],
    }
)

text = st.text(max_size=80)
ints = st.integers(-(2**31), 2**31 - 1)
longs = st.integers(-(2**63), 2**63 - 1)
floats32 = st.floats(width=32, allow_nan=False)
colours = st.sampled_from(["RED", "GREEN", "BLUE"])
fixed4 = st.binary(min_size=4, max_size=4)
address = st.fixed_dictionaries({"city": st.none() | text, "colour": colours})
records = st.fixed_dictionaries(
    {
        "n": st.none(),
        "flag": st.booleans(),
        "i": ints,
        "l": longs,
        "f": floats32,
        "d": st.floats(allow_nan=False),
        "raw": st.binary(max_size=200),
        "s": text,
        "colour": colours,
        "md5": fixed4,
        "tags": st.lists(text, max_size=70),
        "counts": st.dictionaries(text, longs, max_size=5),
        "address": st.none() | address,
        "addresses": st.lists(address, max_size=3),
        "choice": st.none()
        | ints
        | text
        | fixed4
        | st.dictionaries(text, st.floats(allow_nan=False), max_size=3),
        "nested": st.lists(st.dictionaries(text, st.none() | st.booleans(), max_size=3), max_size=3),
    }
)


def write(schema: Any, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


def fastavro_read(schema: Any, value: bytes, start: int = 0) -> Any:
    buf = io.BytesIO(value)
    buf.seek(start)
    return fastavro.schemaless_reader(buf, schema, None)


READ_EVERY_TYPE = compile_reader(EVERY_TYPE)
READ_ERRORS = (Unreadable, IndexError, UnicodeDecodeError, struct.error)
"""What a generated reader raises on a value it cannot read plainly (the decode stage catches them all)."""


@settings(max_examples=400, deadline=None)
@given(record=records, prefix=st.binary(max_size=6))
def test_a_generated_reader_reads_every_type_as_fastavro_does(record: dict[str, Any], prefix: bytes) -> None:
    assert READ_EVERY_TYPE is not None
    value = prefix + write(EVERY_TYPE, record)
    ours = READ_EVERY_TYPE(value, len(prefix))
    theirs = fastavro_read(EVERY_TYPE, value, len(prefix))
    assert ours == theirs
    assert list(ours) == list(theirs)  # the same key order, too
    # Floats compare bit for bit (a -0.0 or a rounded float32 must not differ).
    assert math.copysign(1, ours["f"]) == math.copysign(1, theirs["f"])
    assert [type(v) for v in ours.values()] == [type(v) for v in theirs.values()]


@settings(max_examples=100, deadline=None)
@given(record=records, data=st.data())
def test_a_truncated_value_is_never_read_as_a_record(record: dict[str, Any], data: st.DataObject) -> None:
    assert READ_EVERY_TYPE is not None
    value = write(EVERY_TYPE, record)
    cut = data.draw(st.integers(0, len(value) - 1))
    with pytest.raises(READ_ERRORS):
        READ_EVERY_TYPE(value[:cut], 0)


def test_what_it_does_not_read_plainly_it_refuses() -> None:
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "test.Small",
            "fields": [
                {"name": "u", "type": ["null", "string"]},
                {"name": "e", "type": {"type": "enum", "name": "test.E", "symbols": ["A", "B"]}},
                {"name": "s", "type": "string"},
            ],
        }
    )
    read = compile_reader(schema)
    assert read is not None
    assert read(b"\x02\x02x\x02\x02y", 0) == {"u": "x", "e": "B", "s": "y"}
    for value in (
        b"\x04\x02x\x02\x02y",  # union index 2 of a two-branch union
        b"\x00\x04\x02y",  # enum index 2 of two symbols
        b"\x00\x00\x03y",  # a negative length
        b"\x00\x00\x02\xff",  # invalid UTF-8
        b"\x00\x00" + b"\xff" * 11,  # a varint of more than ten bytes
        b"\x00\x00\x04y",  # the value ends inside the string
    ):
        with pytest.raises(READ_ERRORS):
            read(value, 0)


def test_negative_block_counts_are_read_like_fastavro() -> None:
    # Writers may prefix an array block with a negative count and the block's size in bytes.
    schema = fastavro.parse_schema(
        {
            "type": "record",
            "name": "test.A",
            "fields": [{"name": "xs", "type": {"type": "array", "items": "int"}}],
        }
    )
    read = compile_reader(schema)
    assert read is not None
    value = b"\x03\x04\x02\x04" + b"\x02\x06" + b"\x00"  # -2 items (2 bytes), then 1 item, then the end
    assert read(value, 0) == fastavro_read(schema, value) == {"xs": [1, 2, 3]}


@pytest.mark.parametrize(
    "schema",
    [
        {
            "type": "record",
            "name": "test.T",
            "fields": [{"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}}],
        },
        {
            "type": "record",
            "name": "test.U",
            "fields": [{"name": "id", "type": {"type": "string", "logicalType": "uuid"}}],
        },
        {"type": "record", "name": "test.Node", "fields": [{"name": "next", "type": ["null", "test.Node"]}]},
        {
            "type": "record",
            "name": "test.Wide",
            "fields": [
                {
                    "name": "w",
                    "type": ["null"]
                    + [{"type": "fixed", "name": f"test.F{i}", "size": 1} for i in range(64)],
                }
            ],
        },
    ],
    ids=["logical type", "uuid", "recursive", "65-branch union"],
)
def test_schemas_it_cannot_read_identically_are_left_to_fastavro(schema: dict[str, Any]) -> None:
    assert compile_reader(fastavro.parse_schema(schema)) is None


def test_the_decode_stage_reads_the_benchmark_orders_as_fastavro_does() -> None:
    reader = parse_schema(json.loads(ORDER_SCHEMA_PATH.read_text()))
    decoder = Decoder({"orders": reader}, writer_schemas={"orders": reader})
    lean = decoder._lean_schemaless["orders"]
    assert lean is not None and lean.read is not None  # the generated reader is in use
    schema = order_schema()
    for record in orders(300, now_ms=int(time.time() * 1000)):
        value = avro_bytes(schema, record)
        got, raw = decoder.decode_lean("orders", value)
        assert raw
        assert got == fastavro_read(lean.writer, value)


def test_a_record_the_generated_reader_refuses_fails_as_fastavro_decides() -> None:
    reader = parse_schema(json.loads(ORDER_SCHEMA_PATH.read_text()))
    decoder = Decoder({"orders": reader}, writer_schemas={"orders": reader})
    value = avro_bytes(order_schema(), next(orders(1, now_ms=int(time.time() * 1000))))
    for cut in (1, len(value) // 2, len(value) - 1):
        with pytest.raises(PipelineError) as lean_error:
            decoder.decode_lean("orders", value[:cut])
        with pytest.raises(PipelineError) as plain_error:
            decoder.decode("orders", value[:cut])
        assert lean_error.value.failure == plain_error.value.failure


def test_varints_are_read_in_64_bits_like_fastavro_or_not_at_all() -> None:
    schema = fastavro.parse_schema(
        {"type": "record", "name": "test.L", "fields": [{"name": "l", "type": "long"}]}
    )
    read = compile_reader(schema)
    assert read is not None
    widest = b"\xff" * 9 + b"\x01"  # ten bytes, 64 bits: the most fastavro reads
    assert read(widest, 0) == fastavro_read(schema, widest) == {"l": -(2**63)}
    with pytest.raises(Unreadable):
        read(b"\xff" * 9 + b"\x03", 0)  # 65 bits: fastavro would drop the top bit
    with pytest.raises(Unreadable):
        read(b"\xff" * 10 + b"\x01", 0)  # eleven bytes
