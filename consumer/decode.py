"""Decode stage: Confluent wire format (magic byte 0 + 4-byte schema ID + Avro) or schemaless Avro.

Writer schemas come from the Schema Registry through confluent-kafka's client (which caches by ID);
records are resolved with fastavro into the project's reader schema, so a producer on an older or
newer compatible writer schema still decodes into the shape the mapping was checked against.

The run loop never lets `decode` wait for the registry: it asks `schema_to_fetch` which records carry
a schema ID not loaded yet, fetches those with `fetch_schema` in a worker thread (retrying while the
registry is unreachable, the loop serving everything else meanwhile) and hands them over with `learn`.

`decode_lean` is what the pipeline uses: the same records, except that timestamps, dates and decimals
(`consumer.avro_json.RAW_LOGICAL_TYPES`) keep their Avro base values (epoch units, days, unscaled
bytes) for the mapping to convert the few it reads. It does so only when the writer schema declares
exactly the reader schema's logical types wherever the reader has a field (so a raw value means what
the reader schema says) and no value could fail its conversion; otherwise it decodes like `decode`
and says so. When the writer schema is the reader schema, it reads with a reader generated for the
schema (`consumer.avro_reader`, about 2.5 x faster than fastavro on the benchmark's orders), and lets
fastavro read whatever that one does not read plainly.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.schema import to_parsing_canonical_form

from consumer.avro_json import RAW_LOGICAL_TYPES, SchemaIndex, raw_logical_key
from consumer.avro_reader import Position, Reader, compile_reader
from consumer.errors import (
    AVRO_DECODE_ERROR,
    EMPTY_VALUE,
    NOT_CONFLUENT_WIRE_FORMAT,
    REGISTRY_UNAVAILABLE,
    SCHEMA_RESOLUTION_ERROR,
    UNKNOWN_SCHEMA_ID,
    ErrorClass,
    Failure,
    PipelineError,
    Stage,
)

MAGIC_BYTE = 0
HEADER_SIZE = 5
REGISTRY_ATTEMPTS = 5
REGISTRY_BACKOFF_S = 0.5

Schema = Any  # a fastavro parsed schema


def parse_schema(schema: Mapping[str, Any] | str) -> Schema:
    """Parse an Avro schema given as JSON text or a dict."""
    raw = json.loads(schema) if isinstance(schema, str) else dict(schema)
    return fastavro.parse_schema(raw)


# --- lean decoding: logical types left raw ----------------------------------------------------------

_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN_US = (dt.datetime.min.replace(tzinfo=dt.UTC) - _EPOCH_UTC) // dt.timedelta(microseconds=1)
_MAX_US = (dt.datetime.max.replace(tzinfo=dt.UTC) - _EPOCH_UTC) // dt.timedelta(microseconds=1)
_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_INT_RANGES: dict[str, tuple[int, int]] = {
    # The raw values fastavro converts without raising (OverflowError / ValueError beyond them).
    "long-timestamp-millis": (-(-_MIN_US // 1000), _MAX_US // 1000),
    "long-local-timestamp-millis": (-(-_MIN_US // 1000), _MAX_US // 1000),
    "long-timestamp-micros": (_MIN_US, _MAX_US),
    "long-local-timestamp-micros": (_MIN_US, _MAX_US),
    "int-date": (1 - _EPOCH_ORDINAL, dt.date.max.toordinal() - _EPOCH_ORDINAL),
}
_MAX_LEAN_VALUE_BYTES = 400_000
"""Longer values decode converted: a decimal of more than about 415,000 bytes would overflow the
decimal context's exponent while being converted (a decode error), so below this no decimal can."""
_PRIMITIVE_CLASS = {
    "null": "null",
    "boolean": "bool",
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "bytes": "bytes",
    "string": "str",
}
_COMPLEX_CLASS = {
    "record": "dict",
    "error": "dict",
    "map": "dict",
    "array": "list",
    "enum": "str",
    "fixed": "bytes",
}

_Position = Position
"""Field names from the top record; "[]" steps into array items, "{}" into map values."""
_Annotation = tuple[str, Any, Any]
"""A logical type left raw: (fastavro key, precision, scale)."""


def _schema_dict(schema: Schema) -> Any:
    """The JSON form of a fastavro-parsed schema (without fastavro's bookkeeping keys)."""
    if isinstance(schema, dict):
        return {k: _schema_dict(v) for k, v in schema.items() if not k.startswith("__")}
    if isinstance(schema, list):
        return [_schema_dict(v) for v in schema]
    return schema


def _without_raw_logical(schema: Any) -> Any:
    """`schema` (JSON form) without the logicalType of every node `raw_logical_key` accepts."""
    if isinstance(schema, dict):
        drop = raw_logical_key(schema) is not None
        return {k: _without_raw_logical(v) for k, v in schema.items() if not (drop and k == "logicalType")}
    if isinstance(schema, list):
        return [_without_raw_logical(v) for v in schema]
    return schema


class _Recursive(Exception):
    pass


def _value_classes(schema: Schema) -> dict[_Position, set[tuple[str, _Annotation | None]]]:
    """Every position of a record schema -> the (Python class, raw logical annotation) its values can
    have there, over all union branches. Raises _Recursive for a recursive schema."""
    index = SchemaIndex(schema)
    found: dict[_Position, set[tuple[str, _Annotation | None]]] = {}

    def walk(t: Any, ns: str | None, path: _Position, stack: frozenset[str]) -> None:
        t, ns = index.resolve(t, ns)
        if isinstance(t, list):
            for branch in t:
                walk(branch, ns, path, stack)
            return
        entries = found.setdefault(path, set())
        if isinstance(t, str):
            entries.add((_PRIMITIVE_CLASS.get(t, t), None))
            return
        kind = t.get("type")
        key = raw_logical_key(t)
        if key is not None:
            entries.add((RAW_LOGICAL_TYPES[key].__name__, (key, t.get("precision"), t.get("scale", 0))))
            return
        logical = t.get("logicalType")
        if isinstance(logical, str) and f"{kind}-{logical}" in fastavro.read.LOGICAL_READERS:
            entries.add((f"converted {kind}-{logical}", None))
            return
        entries.add((_COMPLEX_CLASS.get(kind, _PRIMITIVE_CLASS.get(kind, str(kind))), None))
        if kind in ("record", "error"):
            name = index.full_name(t, ns)
            if name in stack:
                raise _Recursive(name)
            for field in t["fields"]:
                walk(field["type"], ns, (*path, field["name"]), stack | {name})
        elif kind == "array":
            walk(t["items"], ns, (*path, "[]"), stack)
        elif kind == "map":
            walk(t["values"], ns, (*path, "{}"), stack)

    walk(schema, None, (), frozenset())
    return found


def _annotations(classes: set[tuple[str, _Annotation | None]]) -> set[_Annotation] | None:
    """The raw logical annotations at one position; None when a raw value there would be ambiguous (a
    raw int or bytes that another branch also produces, e.g. a union of long and a timestamp)."""
    annotations: set[_Annotation] = set()
    for cls, annotation in classes:
        if annotation is None:
            continue
        if any(c == cls and a != annotation for c, a in classes):
            return None
        annotations.add(annotation)
    return annotations


@dataclass(frozen=True, slots=True)
class _Lean:
    """How to decode one writer schema into one reader schema with raw logical values."""

    writer: Schema
    reader: Schema | None
    int_ranges: tuple[tuple[_Position, int, int], ...]
    """Positions of raw timestamps and dates, with the raw values fastavro converts without error."""
    has_decimals: bool
    read: Reader | None = None
    """The generated reader of `writer` (`consumer.avro_reader`) when no resolution is needed; it
    refuses ints outside `int_ranges`, so what it reads is `convertible`."""

    def convertible(self, record: dict[str, Any]) -> bool:
        """Whether fastavro would convert every raw timestamp and date of `record` without error."""
        for path, low, high in self.int_ranges:
            value: Any = record
            for i, step in enumerate(path):
                if step == "[]" or step == "{}":
                    if not _in_range(value, path, i, low, high):
                        return False
                    break
                value = value.get(step) if type(value) is dict else None
                if value is None:
                    break
            else:
                if type(value) is int and not low <= value <= high:
                    return False
        return True


def _lean(
    writer: Schema, reader: Schema | None, reader_for_meaning: Schema, *, generate: bool = True
) -> _Lean | None:
    """The lean way to read `writer` (resolved into `reader`, None when identical), or None when raw
    values would not mean what `reader_for_meaning` (the topic's reader schema) declares. `generate`:
    with a generated reader where one applies."""
    try:
        return _lean_reading(writer, reader, reader_for_meaning, generate)
    except Exception:  # a schema shape this analysis does not follow: decode converted, as always
        return None


def _lean_reading(
    writer: Schema, reader: Schema | None, reader_for_meaning: Schema, generate: bool
) -> _Lean | None:
    try:
        wanted = _value_classes(reader_for_meaning)
        written = _value_classes(writer)
    except _Recursive:
        return None
    int_ranges: list[tuple[_Position, int, int]] = []
    has_decimals = False
    for path, classes in wanted.items():
        reader_annotations = _annotations(classes)
        writer_annotations = _annotations(written.get(path, set()))
        if reader_annotations is None or writer_annotations is None:
            return None
        if reader_annotations != writer_annotations:
            return None
        for key, _precision, _scale in reader_annotations:
            if key in _INT_RANGES:
                low, high = _INT_RANGES[key]
                int_ranges.append((path, low, high))
            else:
                has_decimals = True
    if not has_decimals and not int_ranges:
        return None  # nothing to leave raw
    lean_writer = fastavro.parse_schema(_without_raw_logical(_schema_dict(writer)))
    lean_reader = (
        None if reader is None else fastavro.parse_schema(_without_raw_logical(_schema_dict(reader)))
    )
    ranges: dict[_Position, list[tuple[int, int]]] = {}
    for path, low, high in int_ranges:
        ranges.setdefault(path, []).append((low, high))
    # The generated reader checks the ranges itself: what it returns is convertible.
    read = compile_reader(lean_writer, ranges) if generate and lean_reader is None else None
    return _Lean(lean_writer, lean_reader, tuple(int_ranges), has_decimals, read)


def _in_range(value: Any, path: _Position, i: int, low: int, high: int) -> bool:
    """Whether every raw int at `path` (from step `i`) of `value` lies in [low, high]."""
    while i < len(path):
        if value is None:
            return True
        step = path[i]
        if step == "[]" or step == "{}":
            items = value if type(value) is list else value.values() if type(value) is dict else ()
            return all(_in_range(item, path, i + 1, low, high) for item in items)
        if type(value) is not dict:
            return True  # another branch of a union: nothing of this path here
        value = value.get(step)
        i += 1
    return type(value) is not int or low <= value <= high


class RegistryUnavailable(Exception):
    """The registry could not be asked (connection, timeout, 5xx): worth asking again later."""


def _fail(reason: str, message: str, cls: ErrorClass = ErrorClass.PERMANENT) -> PipelineError:
    return PipelineError(Failure(Stage.DECODE, reason, cls, message))


class Decoder:
    """Decodes record values of configured topics into dicts shaped by each topic's reader schema."""

    def __init__(
        self,
        reader_schemas: Mapping[str, Schema],
        *,
        registry: SchemaRegistryClient | None = None,
        writer_schemas: Mapping[str, Schema] | None = None,
        generated_readers: bool = True,
    ) -> None:
        """`writer_schemas`: topics in schemaless mode (plain Avro binary with a fixed writer schema).
        `generated_readers=False`: fastavro reads every record (to measure the generated readers)."""
        self._generate = generated_readers
        self._readers = dict(reader_schemas)
        self._reader_forms = {t: to_parsing_canonical_form(s) for t, s in self._readers.items()}
        self._schemaless = dict(writer_schemas or {})
        self._registry = registry
        # (topic, schema id) -> (writer schema, reader schema or None when identical, lean reading)
        self._resolved: dict[tuple[str, int], tuple[Schema, Schema | None, _Lean | None]] = {}
        self._lean_schemaless = {
            t: _lean(
                w, None if self._same(w, t) else self._readers[t], self._readers[t], generate=self._generate
            )
            for t, w in self._schemaless.items()
        }
        self._fetched: dict[int, str] = {}
        """Schema ID -> writer schema text, loaded ahead by the run loop (`learn`)."""
        self._known_headers: set[tuple[str, bytes]] = set()
        self._refused: dict[int, PipelineError] = {}
        """Schema IDs the registry refused (4xx) or that are not Avro: their records fail at once."""
        missing = [t for t in self._readers if t not in self._schemaless and registry is None]
        if missing:
            raise ValueError(f"topics {missing} need a schema registry or a writer schema")

    def decode(self, topic: str, value: bytes | None) -> dict[str, Any]:
        """Decode one record value. Raises PipelineError(stage=decode) with a reason code."""
        start, writer, reader, _ = self._locate(topic, value)
        assert value is not None  # _locate refused it
        return self._read(value, start, writer, reader)

    def decode_lean(self, topic: str, value: bytes | None) -> tuple[dict[str, Any], bool]:
        """Like `decode`, and True when the record's timestamps, dates and decimals were left raw (see
        the module docstring; `Mapper.map(..., raw_logical=True)` reads them). Fails exactly as
        `decode` would, with the same reason and message."""
        start, writer, reader, lean = self._locate(topic, value)
        assert value is not None  # _locate refused it
        if lean is not None and not (lean.has_decimals and len(value) > _MAX_LEAN_VALUE_BYTES):
            if lean.read is not None:
                try:
                    fast: dict[str, Any] | None = lean.read(value, start)
                except Exception:
                    fast = None  # not plainly readable: fastavro reads it (and decides how it fails)
                if fast is not None:
                    return fast, True
            buf = io.BytesIO(value)
            buf.seek(start)
            try:
                record = fastavro.schemaless_reader(buf, lean.writer, lean.reader)
            except Exception:
                pass
            else:
                if type(record) is dict and lean.convertible(record):
                    return record, True
        # Nothing to leave raw, or a value the conversion refuses: decode (and fail) like `decode`.
        return self._read(value, start, writer, reader), False

    def _locate(self, topic: str, value: bytes | None) -> tuple[int, Schema, Schema | None, _Lean | None]:
        """Where the Avro body of `value` starts, its writer and reader schemas and their lean pair;
        fails empty values and values without the Confluent header (registry topics)."""
        if not value:
            raise _fail(EMPTY_VALUE, "record has no value (tombstone or empty)")
        writer = self._schemaless.get(topic)
        if writer is not None:
            return 0, writer, self._readers[topic], self._lean_schemaless[topic]
        if len(value) < HEADER_SIZE or value[0] != MAGIC_BYTE:
            raise _fail(NOT_CONFLUENT_WIRE_FORMAT, "value does not start with magic byte 0 + schema ID")
        schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
        resolved = self._resolved.get((topic, schema_id))
        if resolved is None:
            resolved = self._resolve(topic, schema_id)
        return HEADER_SIZE, resolved[0], resolved[1], resolved[2]

    def _same(self, writer: Schema, topic: str) -> bool:
        """Whether `writer` is `topic`'s reader schema (then fastavro needs no resolution)."""
        return bool(to_parsing_canonical_form(writer) == self._reader_forms[topic])

    def _read(self, value: bytes, start: int, writer: Schema, reader: Schema | None) -> dict[str, Any]:
        buf = io.BytesIO(value)
        buf.seek(start)
        try:
            record = fastavro.schemaless_reader(buf, writer, reader)
        except fastavro.read.SchemaResolutionError as exc:
            raise _fail(SCHEMA_RESOLUTION_ERROR, f"writer schema incompatible with reader: {exc}") from exc
        except Exception as exc:  # fastavro raises many types on corrupt bytes
            raise _fail(AVRO_DECODE_ERROR, f"{type(exc).__name__} while reading Avro") from exc
        if not isinstance(record, dict):
            raise _fail(AVRO_DECODE_ERROR, "Avro value is not a record")
        return record

    def schema_to_fetch(self, topic: str, value: bytes | None) -> int | None:
        """The schema ID of a Confluent-framed value whose writer schema is not loaded yet, else None
        (also for values `decode` refuses without the registry)."""
        if topic in self._schemaless or not value or len(value) < HEADER_SIZE or value[0] != MAGIC_BYTE:
            return None
        header = (topic, value[:HEADER_SIZE])
        if header in self._known_headers:
            return None
        schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
        if (topic, schema_id) in self._resolved or schema_id in self._fetched or schema_id in self._refused:
            self._known_headers.add(header)
            return None
        return schema_id

    def fetch_schema(self, schema_id: int) -> str | None:
        """One registry request (blocking: run it in a thread). Returns the schema text, None when the
        registry says the ID does not exist (404) or is not Avro (`decode` then fails the record with
        the reason); raises `RegistryUnavailable` when it cannot be asked or refuses to answer (5xx,
        401/403 credentials: records must wait for the fix, not be dead-lettered)."""
        assert self._registry is not None
        try:
            schema = self._registry.get_schema(schema_id)
        except SchemaRegistryError as exc:
            if exc.http_status_code == 404:
                self._refused[schema_id] = _fail(
                    UNKNOWN_SCHEMA_ID, f"schema ID {schema_id} is not in the registry"
                )
                return None
            raise RegistryUnavailable(f"{type(exc).__name__}: http {exc.http_status_code}") from exc
        except Exception as exc:  # connection refused, timeouts, TLS errors
            raise RegistryUnavailable(type(exc).__name__) from exc
        if schema.schema_type not in (None, "AVRO"):
            self._refused[schema_id] = _fail(
                SCHEMA_RESOLUTION_ERROR, f"schema {schema_id} is {schema.schema_type}"
            )
            return None
        return str(schema.schema_str)

    @property
    def uses_registry(self) -> bool:
        return self._registry is not None and any(t not in self._schemaless for t in self._readers)

    def ping(self) -> None:
        """One cheap registry request (blocking); raises `RegistryUnavailable` unless it succeeds (a
        refused credential counts: the registry cannot be used until it is fixed)."""
        assert self._registry is not None
        try:
            self._registry.get_subjects()
        except SchemaRegistryError as exc:
            raise RegistryUnavailable(f"{type(exc).__name__}: http {exc.http_status_code}") from exc
        except Exception as exc:  # connection refused, timeouts, TLS errors
            raise RegistryUnavailable(type(exc).__name__) from exc

    def learn(self, schema_id: int, schema_str: str) -> None:
        self._fetched[schema_id] = schema_str

    def _resolve(self, topic: str, schema_id: int) -> tuple[Schema, Schema | None, _Lean | None]:
        assert self._registry is not None
        refused = self._refused.get(schema_id)
        if refused is not None:
            raise PipelineError(refused.failure)  # a new one each time: a re-raise grows its traceback
        schema_str = self._fetched.get(schema_id) or self._fetch(schema_id)
        try:
            writer = parse_schema(schema_str)
        except Exception as exc:
            raise _fail(SCHEMA_RESOLUTION_ERROR, f"schema {schema_id} is not a valid Avro schema") from exc
        reader: Schema | None = self._readers[topic]
        # Resolution costs time on every record; skip it when writer and reader are the same schema.
        if self._same(writer, topic):
            reader = None
        resolved = (writer, reader, _lean(writer, reader, self._readers[topic], generate=self._generate))
        self._resolved[(topic, schema_id)] = resolved
        return resolved

    def _fetch(self, schema_id: int) -> str:
        """`fetch_schema` with a short blocking retry, for callers outside the run loop (which loads
        schemas ahead, see above)."""
        last: RegistryUnavailable | None = None
        for attempt in range(REGISTRY_ATTEMPTS):
            try:
                text = self.fetch_schema(schema_id)
            except RegistryUnavailable as exc:
                last = exc
            else:
                if text is None:
                    raise PipelineError(self._refused[schema_id].failure)
                return text
            time.sleep(REGISTRY_BACKOFF_S * (2**attempt))
        raise _fail(
            REGISTRY_UNAVAILABLE,
            f"schema registry unavailable after {REGISTRY_ATTEMPTS} attempts: {last}",
            ErrorClass.TRANSIENT,
        )
