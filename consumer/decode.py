"""Decode stage: Confluent wire format (magic byte 0 + 4-byte schema ID + Avro) or schemaless Avro.

Writer schemas come from the Schema Registry through confluent-kafka's client (which caches by ID);
records are resolved with fastavro into the project's reader schema, so a producer on an older or
newer compatible writer schema still decodes into the shape the mapping was checked against.

The run loop never lets `decode` wait for the registry: it asks `schema_to_fetch` which records carry
a schema ID not loaded yet, fetches those with `fetch_schema` in a worker thread (retrying while the
registry is unreachable, the loop serving everything else meanwhile) and hands them over with `learn`.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from typing import Any

import fastavro
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.error import SchemaRegistryError
from fastavro.schema import to_parsing_canonical_form

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
    ) -> None:
        """`writer_schemas`: topics in schemaless mode (plain Avro binary with a fixed writer schema)."""
        self._readers = dict(reader_schemas)
        self._reader_forms = {t: to_parsing_canonical_form(s) for t, s in self._readers.items()}
        self._schemaless = dict(writer_schemas or {})
        self._registry = registry
        # (topic, schema id) -> (writer schema, reader schema or None when identical)
        self._resolved: dict[tuple[str, int], tuple[Schema, Schema | None]] = {}
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
        if not value:
            raise _fail(EMPTY_VALUE, "record has no value (tombstone or empty)")
        reader = self._readers[topic]
        writer = self._schemaless.get(topic)
        if writer is not None:
            return self._read(value, 0, writer, reader)
        if len(value) < HEADER_SIZE or value[0] != MAGIC_BYTE:
            raise _fail(NOT_CONFLUENT_WIRE_FORMAT, "value does not start with magic byte 0 + schema ID")
        schema_id = int.from_bytes(value[1:HEADER_SIZE], "big")
        resolved = self._resolved.get((topic, schema_id))
        if resolved is None:
            resolved = self._resolve(topic, schema_id)
        return self._read(value, HEADER_SIZE, resolved[0], resolved[1])

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

    def _resolve(self, topic: str, schema_id: int) -> tuple[Schema, Schema | None]:
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
        if to_parsing_canonical_form(writer) == self._reader_forms[topic]:
            reader = None
        resolved = (writer, reader)
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
