"""Generated Avro readers: one Python function per writer schema, the decode stage's fast path.

fastavro's Cython reader pulls every byte through a file object (`read(1)` per varint byte) and picks
each value's reader by comparing type names; for the records this service reads (a few dozen short
strings in unions) that dispatch is most of its cost. `compile_reader` writes, once per schema, a
function that reads the same bytes straight from the `bytes` value with the schema's shape unrolled
into code, so the per-record work is the reading itself.

It covers exactly what it can read *identically* to `fastavro.schemaless_reader(fo, schema, None)`:
a writer schema read without resolution (the reader schema is the writer's) and without any logical
type left for fastavro to convert (the decode stage strips timestamps, dates and decimals first, see
`consumer.decode`). For any other schema `compile_reader` returns None and fastavro reads it.

A generated reader is strict: whatever it cannot read plainly (a truncated value, a union or enum
index out of range, a negative length, a varint over ten bytes, invalid UTF-8) raises `Unreadable`
or the Python error it hit, and the caller then lets fastavro read the value, so what a damaged record
decodes to (or fails with) is fastavro's verdict, unchanged. tests/unit/test_avro_reader.py holds the
two readers equal on valid data for every Avro type.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from consumer.codegen import Code

Position = tuple[str, ...]
"""Where a value sits in a record: field names, `[]` for an array's items, `{}` for a map's values."""
Reader = Callable[[bytes, int], dict[str, Any]]
"""(value, start) -> the record; raises on anything it cannot read plainly."""

_PRIMITIVES: Final = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_MAX_VARINT_BYTES: Final = 10
_MAX_ONE_BYTE_BRANCHES: Final = 64
_FLOAT: Final = struct.Struct("<f").unpack_from
_DOUBLE: Final = struct.Struct("<d").unpack_from


class Unreadable(Exception):
    """A value a generated reader does not read plainly (fastavro decides what it is)."""


class _Unsupported(Exception):
    """A schema shape `compile_reader` does not generate code for."""


def _unrolled_long() -> Callable[[bytes, int], tuple[int, int]]:
    """`_long` with its loop over up to ten bytes written out (a timestamp in milliseconds takes six
    bytes, which a loop reads in about twice the time)."""
    code = Code({"Unreadable": Unreadable})
    code(0, "def _long(data, pos):")
    for k in range(_MAX_VARINT_BYTES):
        code(1, f"b = data[pos + {k}]")
        code(1, f"n |= (b & 0x7F) << {7 * k}" if k else "n = b & 0x7F")
        code(1, "if not b & 0x80:")
        if k == _MAX_VARINT_BYTES - 1:
            code(2, "if n >> 64:")
            code(3, 'raise Unreadable("varint over 64 bits")')
        code(2, f"return (n >> 1) ^ -(n & 1), pos + {k + 1}")
    code(1, 'raise Unreadable("varint longer than ten bytes")')
    long: Callable[[bytes, int], tuple[int, int]] = code.run("<avro varint>")["_long"]
    return long


_long: Final = _unrolled_long()
"""A zig-zag varint starting at `pos` (any length): (value, position after it). fastavro reads
varints into 64 bits, so a longer one is not read plainly."""


def _count(data: bytes, pos: int) -> tuple[int, int]:
    """A length or index: a varint that must not be negative."""
    n, pos = _long(data, pos)
    if n < 0:
        raise Unreadable("negative length or index")
    return n, pos


class _Generator:
    def __init__(self, code: Code, int_ranges: Mapping[Position, Iterable[tuple[int, int]]]) -> None:
        self.int_ranges = {path: tuple(ranges) for path, ranges in int_ranges.items()}
        self.code = code
        self.names: dict[str, Any] = {}
        self.open_records: set[str] = set()

    def resolve(self, schema: Any) -> Any:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            if schema in self.open_records:
                raise _Unsupported("recursive schema")
            if schema not in self.names:
                raise _Unsupported(f"unknown named type {schema}")
            return self.names[schema]
        return schema

    def value(self, schema: Any, target: str, indent: int, path: Position = ()) -> None:
        """Emit code that reads one value of `schema` at `pos` into the variable `target`; `path`: where
        the value sits (field names, `[]` for array items, `{}` for map values)."""
        c = self.code
        schema = self.resolve(schema)
        if isinstance(schema, list):
            self.union(schema, target, indent, path)
            return
        if isinstance(schema, dict):
            if "logicalType" in schema:
                raise _Unsupported("logical type left for fastavro to convert")
            kind = schema.get("type")
            if kind in _PRIMITIVES:
                self.value(kind, target, indent, path)
                return
            name = schema.get("name")
            if kind in ("record", "enum", "fixed") and isinstance(name, str):
                self.names[name] = schema
            if kind == "record":
                self.record(schema, target, indent, path)
            elif kind == "enum":
                symbols = c.const(tuple(schema["symbols"]))
                index = c.var("i")
                self.count(index, indent)
                c(indent, f"{target} = {symbols}[{index}] if {index} < {len(schema['symbols'])} else _bad()")
            elif kind == "fixed":
                width = int(schema["size"])
                c(indent, f"{target} = data[pos:pos + {width}]")
                c(indent, f"pos += {width}")
            elif kind == "array":
                self.array(schema["items"], target, indent, path)
            elif kind == "map":
                self.map(schema["values"], target, indent, path)
            else:
                raise _Unsupported(f"type {kind!r}")
            return
        if schema == "null":
            c(indent, f"{target} = None")
        elif schema == "boolean":
            c(indent, f"{target} = data[pos] != 0")
            c(indent, "pos += 1")
        elif schema in ("int", "long"):
            c(indent, "b = data[pos]")
            c(indent, "if b < 128:")
            c(indent + 1, f"{target} = (b >> 1) ^ -(b & 1)")
            c(indent + 1, "pos += 1")
            c(indent, "else:")
            c(indent + 1, f"{target}, pos = _long(data, pos)")
            for low, high in self.int_ranges.get(path, ()):
                c(indent, f"if not {low} <= {target} <= {high}:")
                c(indent + 1, "_out_of_range()")
        elif schema == "float":
            c(indent, f"{target} = _float(data, pos)[0]")
            c(indent, "pos += 4")
        elif schema == "double":
            c(indent, f"{target} = _double(data, pos)[0]")
            c(indent, "pos += 8")
        elif schema in ("bytes", "string"):
            size = c.var("n")
            self.count(size, indent)
            decode = ".decode()" if schema == "string" else ""
            # The slice's start is read before the assignment expression moves `pos` past the value.
            c(indent, f"{target} = data[pos:(pos := pos + {size})]{decode}")
        else:
            raise _Unsupported(f"type {schema!r}")

    def count(self, target: str, indent: int) -> None:
        """A non-negative varint (length, index): one byte when even and below 128."""
        c = self.code
        c(indent, f"{target} = data[pos]")
        c(indent, f"if {target} & 0x81:  # negative, or more than one byte")
        c(indent + 1, f"{target}, pos = _count(data, pos)")
        c(indent, "else:")
        c(indent + 1, f"{target} >>= 1")
        c(indent + 1, "pos += 1")

    def union(self, branches: list[Any], target: str, indent: int, path: Position) -> None:
        # The branch index as its one-byte zig-zag encoding (2 * index): a longer or unusual encoding
        # of a valid index is left to fastavro like any other surprise.
        if len(branches) > _MAX_ONE_BYTE_BRANCHES:
            raise _Unsupported("union of more than 64 branches")
        c = self.code
        index = c.var("u")
        c(indent, f"{index} = data[pos]")
        c(indent, "pos += 1")
        for i, branch in enumerate(branches):
            c(indent, f"{'if' if i == 0 else 'elif'} {index} == {2 * i}:")
            self.value(branch, target, indent + 1, path)
        c(indent, "else:")
        c(indent + 1, "_bad()")

    def record(self, schema: dict[str, Any], target: str, indent: int, path: Position) -> None:
        c = self.code
        name = schema.get("name")
        if isinstance(name, str):
            self.open_records.add(name)
        fields = [(f["name"], c.var("f")) for f in schema["fields"]]
        for field, (_, var) in zip(schema["fields"], fields, strict=True):
            self.value(field["type"], var, indent, (*path, field["name"]))
        items = ", ".join(f"{name!r}: {var}" for name, var in fields)
        c(indent, f"{target} = {{{items}}}")
        if isinstance(name, str):
            self.open_records.discard(name)

    def blocks(self, indent: int, body: Callable[[int], None]) -> None:
        """Emit the block loop of an array or map; `body` emits the reading of one item."""
        c = self.code
        count = c.var("c")
        c(indent, "while True:")
        c(indent + 1, f"{count} = data[pos]")
        c(indent + 1, f"if {count} & 0x81:  # negative, or more than one byte")
        c(indent + 2, f"{count}, pos = _long(data, pos)")
        c(indent + 2, f"if {count} < 0:")
        c(indent + 3, f"{count} = -{count}")
        c(indent + 3, "_, pos = _long(data, pos)  # the block's size in bytes, not needed")
        c(indent + 1, "else:")
        c(indent + 2, f"{count} >>= 1")
        c(indent + 2, "pos += 1")
        c(indent + 1, f"if {count} == 0:")
        c(indent + 2, "break")
        c(indent + 1, f"for _ in range({count}):")
        body(indent + 2)

    def array(self, items: Any, target: str, indent: int, path: Position) -> None:
        c = self.code
        item = c.var("a")
        c(indent, f"{target} = []")

        def body(inner: int) -> None:
            self.value(items, item, inner, (*path, "[]"))
            c(inner, f"{target}.append({item})")

        self.blocks(indent, body)

    def map(self, values: Any, target: str, indent: int, path: Position) -> None:
        c = self.code
        key = c.var("m")
        item = c.var("v")
        c(indent, f"{target} = {{}}")

        def body(inner: int) -> None:
            self.value("string", key, inner)
            self.value(values, item, inner, (*path, "{}"))
            c(inner, f"{target}[{key}] = {item}")

        self.blocks(indent, body)


def _bad() -> Any:
    raise Unreadable("union or enum index out of range")


def _out_of_range() -> None:
    raise Unreadable("an int outside the range its logical type converts")


def compile_reader(
    schema: Any, int_ranges: Mapping[Position, Iterable[tuple[int, int]]] | None = None
) -> Reader | None:
    """A reader for records of the fastavro-parsed `schema` (a record), or None when the schema has a
    shape this module leaves to fastavro (see the module docstring). `int_ranges`: positions (as
    `consumer.decode` names them) whose ints must lie in every given [low, high] (raw timestamps and
    dates the mapping converts); an int outside is not read plainly."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    code = Code(
        {
            "_long": _long,
            "_count": _count,
            "_float": _FLOAT,
            "_double": _DOUBLE,
            "_bad": _bad,
            "_out_of_range": _out_of_range,
            "_Unreadable": Unreadable,
        }
    )
    generator = _Generator(code, int_ranges or {})
    code(0, "def read(data, pos):")
    try:
        generator.value(schema, "record", 1)
    except (_Unsupported, KeyError, TypeError, ValueError):
        return None
    code(1, "if pos > len(data):")
    code(2, "raise _Unreadable('value ends inside the record')")
    code(1, "return record")
    reader: Reader = code.run("<generated avro reader>")["read"]
    return reader
