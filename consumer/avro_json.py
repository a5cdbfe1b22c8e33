"""Avro schema helpers shared by the mapper, and JSON -> decoded-Avro coercion for the `map` dry run.

`SchemaIndex` resolves named-type references (records, enums and fixed types defined once and used
by name elsewhere, with Avro's namespace rules). `record_from_json()` turns a JSON object shaped like
an Avro record into exactly the Python values fastavro produces when it decodes that record, so a
dry run exercises the same mapping code as the consumer:

| Avro type | JSON input accepted | Python value |
|---|---|---|
| timestamp-millis / -micros | epoch ms / µs (int) or ISO-8601 with offset | `datetime`, tz UTC |
| local-timestamp-millis / -micros | epoch ms / µs or ISO-8601 without offset | naive `datetime` |
| date | days since 1970-01-01 or `YYYY-MM-DD` | `datetime.date` |
| time-millis / -micros | ms / µs since midnight or `HH:MM:SS[.ffffff]` | `datetime.time` |
| decimal (bytes or fixed) | string (recommended) or number | `Decimal` with exactly `scale` places |
| uuid | string | `uuid.UUID` |
| enum | symbol | `str` |
| bytes / fixed | string of code points 0-255 (Avro JSON encoding) | `bytes` |
| union | the value, or Avro's `{"<branch type>": value}` form | the branch's value |

Missing fields take their schema default; unknown fields are errors (they are usually typos). Error
messages name the field path and the expected type, never the value (it may be personal data).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final

__all__ = [
    "PRIMITIVES",
    "RAW_LOGICAL_TYPES",
    "AvroJsonError",
    "SchemaIndex",
    "raw_logical_key",
    "record_from_json",
]

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
_NAMED = frozenset({"record", "error", "enum", "fixed"})
_INT_RANGE = {"int": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}
_EPOCH_UTC = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_EPOCH_LOCAL = dt.datetime(1970, 1, 1)
_EPOCH_DATE = dt.date(1970, 1, 1)


class AvroJsonError(ValueError):
    """A JSON value does not fit the Avro schema. `path` is like `$.customer.date_of_birth`."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class SchemaIndex:
    """Named types of one Avro schema, so that references by name can be followed."""

    def __init__(self, schema: Any) -> None:
        self.schema = schema
        self._named: dict[str, tuple[dict[str, Any], str | None]] = {}
        self._register(schema, None)

    def _register(self, t: Any, ns: str | None) -> None:
        if isinstance(t, list):
            for branch in t:
                self._register(branch, ns)
            return
        if not isinstance(t, dict):
            return
        kind = t.get("type")
        if kind in _NAMED:
            full, ns = self._full_name(t, ns)
            self._named[full] = (t, ns)
            for field in t.get("fields", []) if kind in ("record", "error") else []:
                self._register(field.get("type"), ns)
        elif kind == "array":
            self._register(t.get("items"), ns)
        elif kind == "map":
            self._register(t.get("values"), ns)
        elif isinstance(kind, dict | list):
            self._register(kind, ns)

    @staticmethod
    def _full_name(t: Mapping[str, Any], ns: str | None) -> tuple[str, str | None]:
        name = str(t["name"])
        if "." in name:
            return name, name.rsplit(".", 1)[0]
        own_ns = t.get("namespace", ns) or None
        return (f"{own_ns}.{name}" if own_ns else name), own_ns

    def full_name(self, t: Mapping[str, Any], ns: str | None) -> str:
        """The full name of a named type definition found in namespace `ns`."""
        return self._full_name(t, ns)[0]

    def resolve(self, t: Any, ns: str | None) -> tuple[Any, str | None]:
        """Follow a reference by name; returns the definition and the namespace for its children."""
        if isinstance(t, str) and t not in PRIMITIVES:
            for candidate in ((f"{ns}.{t}" if ns and "." not in t else t), t):
                if candidate in self._named:
                    return self._named[candidate]
            raise KeyError(f"unknown Avro type name {t!r}")
        if isinstance(t, dict):
            if isinstance(t.get("type"), dict | list):  # {"type": {...}} wraps another schema
                return self.resolve(t["type"], ns)
            if t.get("type") in PRIMITIVES and "logicalType" not in t:
                return t["type"], ns
            if t.get("type") in _NAMED:
                return t, self._full_name(t, ns)[1]
            if isinstance(t.get("type"), str) and t["type"] not in PRIMITIVES | {"array", "map"}:
                return self.resolve(t["type"], ns)
        return t, ns

    def branch_name(self, t: Any, ns: str | None) -> str:
        """The name a union branch has in Avro's JSON encoding (`{"<name>": value}`)."""
        t, ns = self.resolve(t, ns)
        if isinstance(t, str):
            return t
        kind = t["type"]
        return self.full_name(t, ns) if kind in _NAMED else str(kind)

    def from_json(self, value: Any) -> Any:
        """Convert a JSON value of the index's root schema to fastavro's decoded Python value."""
        return _Coercer(self).convert(value, self.schema, None, "$")


def record_from_json(obj: dict[str, Any], reader_schema: dict[str, Any]) -> dict[str, Any]:
    """Convert a JSON object shaped like an Avro record to what fastavro would decode (see module doc).

    Raises AvroJsonError naming the offending field path on invalid input.
    """
    if not isinstance(obj, dict):
        raise AvroJsonError("$", "expected a JSON object")
    result: dict[str, Any] = SchemaIndex(reader_schema).from_json(obj)
    return result


class _Coercer:
    def __init__(self, index: SchemaIndex) -> None:
        self.index = index

    def convert(self, value: Any, t: Any, ns: str | None, path: str) -> Any:
        t, ns = self.index.resolve(t, ns)
        if isinstance(t, list):
            return self._union(value, t, ns, path)
        if isinstance(t, str):
            return _primitive(value, t, path)
        kind = t["type"]
        if kind in ("record", "error"):
            return self._record(value, t, ns, path)
        if kind == "enum":
            if not isinstance(value, str) or value not in t["symbols"]:
                raise AvroJsonError(path, f"expected one of the symbols {', '.join(t['symbols'])}")
            return value
        if kind == "array":
            if not isinstance(value, list):
                raise AvroJsonError(path, "expected an array")
            return [self.convert(v, t["items"], ns, f"{path}[{i}]") for i, v in enumerate(value)]
        if kind == "map":
            if not isinstance(value, dict):
                raise AvroJsonError(path, "expected an object (Avro map)")
            return {k: self.convert(v, t["values"], ns, f"{path}.{k}") for k, v in value.items()}
        logical = t.get("logicalType")
        if logical == "decimal" and kind in ("bytes", "fixed"):
            return _decimal(value, t, path)
        if kind == "fixed":
            data = _primitive(value, "bytes", path)
            if len(data) != t["size"]:
                raise AvroJsonError(path, f"expected exactly {t['size']} bytes")
            return data
        return _logical(value, kind, logical, path)

    def _union(self, value: Any, branches: list[Any], ns: str | None, path: str) -> Any:
        if value is None:
            if any(self.index.resolve(b, ns)[0] == "null" for b in branches):
                return None
            raise AvroJsonError(path, "must not be null")
        if isinstance(value, dict) and len(value) == 1:
            ((key, inner),) = value.items()
            for branch in branches:
                if self.index.branch_name(branch, ns) == key:
                    return self.convert(inner, branch, ns, path)
        candidates = [b for b in branches if self.index.resolve(b, ns)[0] != "null"]
        if len(candidates) == 1:  # the common optional field: report the branch's own error
            return self.convert(value, candidates[0], ns, path)
        for branch in candidates:
            try:
                return self.convert(value, branch, ns, path)
            except AvroJsonError:
                continue
        names = ", ".join(self.index.branch_name(b, ns) for b in branches)
        raise AvroJsonError(path, f"matches no branch of the union ({names})")

    def _record(self, value: Any, t: dict[str, Any], ns: str | None, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise AvroJsonError(path, f"expected an object ({self.index.full_name(t, ns)})")
        fields = t["fields"]
        unknown = sorted(set(value) - {f["name"] for f in fields})
        if unknown:
            raise AvroJsonError(path, f"unknown field(s) {', '.join(unknown)}")
        out: dict[str, Any] = {}
        for field in fields:
            name = field["name"]
            where = f"{path}.{name}"
            if name in value:
                out[name] = self.convert(value[name], field["type"], ns, where)
            elif "default" in field:
                out[name] = self.convert(field["default"], field["type"], ns, where)
            else:
                raise AvroJsonError(where, "missing (the field has no default)")
        return out


def _primitive(value: Any, kind: str, path: str) -> Any:
    if kind == "null":
        if value is not None:
            raise AvroJsonError(path, "expected null")
        return None
    if kind == "boolean":
        if not isinstance(value, bool):
            raise AvroJsonError(path, "expected true or false")
        return value
    if kind in _INT_RANGE:
        low, high = _INT_RANGE[kind]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise AvroJsonError(path, f"expected an integer ({kind})")
        return value
    if kind in ("float", "double"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AvroJsonError(path, f"expected a number ({kind})")
        return float(value)
    if kind == "string":
        if not isinstance(value, str):
            raise AvroJsonError(path, "expected a string")
        return value
    if kind == "bytes":
        if not isinstance(value, str):
            raise AvroJsonError(path, "expected a string of code points 0-255 (Avro JSON bytes)")
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise AvroJsonError(path, "bytes must be code points 0-255 (Avro JSON encoding)") from None
    raise AvroJsonError(path, f"unsupported Avro type {kind}")


def _decimal(value: Any, t: Mapping[str, Any], path: str) -> Decimal:
    scale = int(t.get("scale", 0))
    precision = int(t["precision"])
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise AvroJsonError(path, 'expected a decimal as a string (e.g. "12.34") or a number')
    try:
        number = Decimal(value.strip() if isinstance(value, str) else str(value))
    except InvalidOperation:
        raise AvroJsonError(path, "not a decimal number") from None
    if not number.is_finite():
        raise AvroJsonError(path, "not a finite decimal number")
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and -exponent > scale:
        raise AvroJsonError(path, f"more than {scale} decimal places (decimal({precision},{scale}))")
    exact = number.quantize(Decimal(1).scaleb(-scale))
    if len(exact.as_tuple().digits) > precision:
        raise AvroJsonError(path, f"more than {precision} digits (decimal({precision},{scale}))")
    return exact


def _logical(value: Any, kind: str, logical: Any, path: str) -> Any:
    """Logical types over int/long/string; an unknown logical type decodes as its base type."""
    if kind == "long" and logical in (
        "timestamp-millis",
        "timestamp-micros",
        "local-timestamp-millis",
        "local-timestamp-micros",
    ):
        return _timestamp(value, str(logical), path)
    if kind == "int" and logical == "date":
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                raise AvroJsonError(
                    path, "expected an ISO date (YYYY-MM-DD) or days since 1970-01-01"
                ) from None
        return _EPOCH_DATE + dt.timedelta(days=_primitive(value, "int", path))
    if (kind, logical) in (("int", "time-millis"), ("long", "time-micros")):
        if isinstance(value, str):
            try:
                return dt.time.fromisoformat(value)
            except ValueError:
                raise AvroJsonError(path, "expected a time (HH:MM:SS[.ffffff])") from None
        units = _primitive(value, kind, path)
        micros = units * 1000 if logical == "time-millis" else units
        if not 0 <= micros < 86_400_000_000:
            raise AvroJsonError(path, "time of day out of range")
        return (dt.datetime.min + dt.timedelta(microseconds=micros)).time()
    if kind == "string" and logical == "uuid":
        try:
            return uuid.UUID(_primitive(value, "string", path))
        except ValueError:
            raise AvroJsonError(path, "expected a UUID") from None
    return _primitive(value, kind, path)


def _timestamp(value: Any, logical: str, path: str) -> dt.datetime:
    local = logical.startswith("local-")
    millis = logical.endswith("millis")
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            raise AvroJsonError(path, "expected an ISO-8601 timestamp or an epoch number") from None
        if local and parsed.tzinfo is not None:
            raise AvroJsonError(path, "a local timestamp has no UTC offset")
        if not local:
            if parsed.tzinfo is None:
                raise AvroJsonError(path, "the timestamp needs a UTC offset (e.g. 2026-01-31T12:00:00Z)")
            parsed = parsed.astimezone(dt.UTC)
        # fastavro keeps only what the encoding can hold: whole milliseconds for -millis.
        return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000) if millis else parsed
    units = _primitive(value, "long", path)
    delta = dt.timedelta(microseconds=units * 1000 if millis else units)
    try:
        return (_EPOCH_LOCAL if local else _EPOCH_UTC) + delta
    except OverflowError:
        raise AvroJsonError(path, "timestamp out of range") from None


# --- logical types left raw -------------------------------------------------------------------------
# Converting logical types costs fastavro a Python call per value (a Decimal per amount, a datetime per
# timestamp). The consumer decodes without the ones below (`consumer.decode.Decoder.decode_lean`) and
# the mapping converts only the values it reads, with exactly the function fastavro would have called
# (`fastavro.read.LOGICAL_READERS`), or an integer shortcut proven equal (event_time from epoch millis).

RAW_LOGICAL_TYPES: Final[dict[str, type]] = {
    "long-timestamp-millis": int,
    "long-timestamp-micros": int,
    "long-local-timestamp-millis": int,
    "long-local-timestamp-micros": int,
    "int-date": int,
    "bytes-decimal": bytes,
    "fixed-decimal": bytes,
}
"""fastavro's logical-type keys (`<base type>-<logicalType>`) that lean decoding leaves raw, with the
Python type of the raw value. uuid and time-of-day stay converted by fastavro: the first can fail on
bad text (a decode error), the mapping passes the second through."""

_MAX_DECIMAL_DIGITS: Final = 1000
"""Decimals with a larger (or an invalid) precision or scale stay converted by fastavro: within this
bound the conversion cannot raise for any value that fits in a Kafka record (see `decode`)."""


def raw_logical_key(t: Any) -> str | None:
    """fastavro's logical-type key of the type node `t` when lean decoding leaves its values raw."""
    if not isinstance(t, Mapping):
        return None
    base, logical = t.get("type"), t.get("logicalType")
    if not isinstance(base, str) or not isinstance(logical, str):
        return None
    key = f"{base}-{logical}"
    if key not in RAW_LOGICAL_TYPES:
        return None
    if logical == "decimal":
        precision, scale = t.get("precision"), t.get("scale", 0)
        if type(precision) is not int or type(scale) is not int:
            return None
        if not (1 <= precision <= _MAX_DECIMAL_DIGITS and 0 <= scale <= _MAX_DECIMAL_DIGITS):
            return None
    return key
