"""Decoded Avro record -> Conversions API server event (pure: no I/O, clock injectable).

One mapping engine serves every topic. A `custom` topic brings its mapping in the config file
(`topics.<t>.mapping`, see `MappingSpec`); the canonical `order` and `subscription` kinds use the
built-in mappings below, expressed in the same language, so both are checked the same way: at
start-up every field path is resolved against the topic's reader schema, and a path that does not
exist or has an unusable type is a `ConfigError` naming the key, the path, the schema and the topic.

`Mapper.map(topic, record)` returns exactly one of:
- `Mapped`: the JSON-ready server event and its destination (plus identifiers the Normalizer left out);
- `Filtered`: deliberately not sent (an event type that is not configured to be sent, a filter);
  the record is settled without sending;
- `Rejected`: the record cannot become a valid event (`stage="map"`) or the event fails Meta's rules
  (`stage="validate"`, via `consumer.validate.validate_event`); it belongs in the dead-letter topic.
  `detail` names fields and types, never values: records carry personal data.

Each topic's checked plan is turned at start-up into a Python function that maps its records (see
"generated mapping functions"); `Mapper.interpret` reads the plan field by field instead and is the
reference the generated functions are tested against. `map(..., raw_logical=True)` takes records of
`consumer.decode.Decoder.decode_lean`, whose timestamps, dates and decimals are still raw: the
generated function converts the ones it reads, to the very values fastavro would have produced.

Built-in mappings (event types are the schemas' enum symbols):

| kind | event type | event_name (default) | event_id | sent by default |
|---|---|---|---|---|
| order | placed | Purchase | order_id | yes |
| order | completed | Purchase | order_id | no |
| order | refunded | OrderRefunded | order_id | no |
| subscription | started | Subscribe | subscription_id | yes |
| subscription | trial_started | StartTrial | subscription_id | yes |
| subscription | renewed | Purchase | order_id (the renewal charge) | yes |
| subscription | cancelled | SubscriptionCancelled | subscription_id | no |

All use `action_source=system_generated`, `event_time` = occurred_at in whole seconds, user_data from
the customer record and web context (hashed by the Normalizer; `subscription_id` unhashed),
`event_source_url` from `web_context.page_url`, `opt_out` and Limited Data Use from `consent`.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from fastavro.read import LOGICAL_READERS

from consumer.avro_json import RAW_LOGICAL_TYPES, SchemaIndex, raw_logical_key
from consumer.canonical import builtin_mapping
from consumer.codegen import Code
from consumer.config import (
    TENANT_PREFIX,
    AppConfig,
    ConfigError,
    ContentsSpec,
    FilterSpec,
    MappingSpec,
    TopicConfig,
)
from consumer.normalize import MEMO_FIELDS, Memoized, Normalizer, Omission
from consumer.validate import (
    BROAD_KEYS,
    CHECKED_BY_SOURCE,
    MAX_FUTURE_S,
    currency_codes,
    is_http_url,
    max_event_age_s,
    validate_event,
    validate_mapped_event,
)

__all__ = [
    "EVENT_TYPE_NOT_SENT",
    "FILTERED_BY_CONFIG",
    "INVALID_EVENT_TIME",
    "INVALID_URL",
    "MISSING_EVENT_ID",
    "MISSING_EVENT_NAME",
    "MISSING_EVENT_TIME",
    "Filtered",
    "MapResult",
    "Mapped",
    "Mapper",
    "Rejected",
    "canonical_mapping",
    "currency_minor_units",
]

# Filtered reasons
EVENT_TYPE_NOT_SENT = "event_type_not_sent"
"""The record's type is not in the set that is sent (e.g. refunded, cancelled by default)."""
FILTERED_BY_CONFIG = "filtered_by_config"
"""A `mapping.filters` entry did not match."""

# Rejected (stage "map") reasons
MISSING_EVENT_NAME = "missing_event_name"
MISSING_EVENT_ID = "missing_event_id"
MISSING_TENANT_ID = "missing_tenant_id"
MISSING_EVENT_TIME = "missing_event_time"
INVALID_EVENT_TIME = "invalid_event_time"

INVALID_URL = "invalid_url"
"""Omission reason: event_source_url is not an http(s) URL (left out of non-website events)."""


@dataclass(slots=True)  # not frozen: a frozen dataclass is three times as slow to make (one per record)
class Mapped:
    """A server event ready to batch for `destination`; `omitted` lists identifiers left out."""

    destination: str
    event: dict[str, Any]
    omitted: tuple[Omission, ...] = ()


@dataclass(frozen=True, slots=True)
class Filtered:
    """Deliberately not sent; the record is settled (counted by `reason`)."""

    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Rejected:
    """Cannot be sent: goes to the dead-letter topic. `detail` never contains record values."""

    stage: Literal["map", "validate"]
    reason: str
    detail: str


MapResult = Mapped | Filtered | Rejected

# --- currencies -------------------------------------------------------------------------------------

# ISO 4217 minor units that differ from 2 (the rest of the list uses 2).
_ZERO_DECIMAL = ("BIF", "CLP", "DJF", "GNF", "ISK", "JPY", "KMF", "KRW", "PYG", "RWF", "UGX", "UYI", "VND")
_MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys((*_ZERO_DECIMAL, "VUV", "XAF", "XOF", "XPF"), 0),
    **dict.fromkeys(("BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"), 3),
    **dict.fromkeys(("CLF", "UYW"), 4),
}
_MONEY_KEYS = frozenset({"value", "predicted_ltv", "net_revenue"})
_TEXT_KEYS = frozenset(
    {"order_id", "item_number", "content_name", "content_category", "search_string", "status"}
)


def currency_minor_units(currency: str | None) -> int:
    """Decimal places of an ISO 4217 currency (JPY 0, USD 2, KWD 3); 2 when unknown."""
    return _MINOR_UNITS.get((currency or "").upper(), 2)


_QUANTA = {places: Decimal(1).scaleb(-places) for places in range(5)}


def _money(value: Any, places: int) -> Any:
    """A monetary amount as a JSON number rounded to the currency's minor units (half up)."""
    if isinstance(value, Decimal):
        return _round_decimal(value, places)
    if isinstance(value, float):
        return round(value, places)
    return value


@functools.lru_cache(maxsize=4096)
def _round_decimal(value: Decimal, places: int) -> float:
    # Prices and totals repeat (a catalogue), and quantize + float costs more than the cache lookup.
    quantum = _QUANTA.get(places) or Decimal(1).scaleb(-places)
    return float(value.quantize(quantum, rounding=ROUND_HALF_UP))


def _json_value(value: Any) -> Any:
    """Decoded Avro value -> JSON-ready value (Decimal -> float, dates -> ISO strings, UUID -> str)."""
    if type(value) is str or type(value) is int:
        return value
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.date):  # datetime is a date too
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, list):
        return [_json_value(v) for v in value]
    return value


# --- built-in mappings ------------------------------------------------------------------------------


def canonical_mapping(topic: TopicConfig) -> MappingSpec:
    """The built-in mapping of an `order` or `subscription` topic, in the custom-mapping language."""
    names = topic.effective_event_names()
    sent = {t: names[t] for t in topic.effective_send_event_types()}
    return MappingSpec.model_validate(builtin_mapping(topic.kind, sent))


# --- schema checking --------------------------------------------------------------------------------

_ID_KINDS = frozenset({"string", "enum", "int", "long", "uuid"})
_SCALAR_KINDS = frozenset(
    {"string", "enum", "int", "long", "float", "double", "boolean", "decimal", "date", "uuid"}
    | {"timestamp-millis", "timestamp-micros"}
)
_USER_DATA_KINDS = frozenset({"string", "enum", "int", "long", "date", "uuid"})
_NUMBER_KINDS = frozenset({"int", "long", "float", "double", "decimal"})
_TIME_KINDS = {
    "auto": frozenset({"timestamp-millis", "timestamp-micros"}),
    "seconds": frozenset({"int", "long"}),
    "millis": frozenset({"long"}),
    "micros": frozenset({"long"}),
    "iso8601": frozenset({"string"}),
}


def _with_arrays(kinds: frozenset[str]) -> frozenset[str]:
    return kinds | {f"array:{k}" for k in kinds}


@dataclass(frozen=True, slots=True)
class _Path:
    """A checked field path: the keys to follow in a decoded record and the leaf's Avro kinds."""

    text: str
    keys: tuple[str, ...]
    kinds: frozenset[str]
    symbols: tuple[str, ...] = ()  # when the leaf is an enum
    raw: tuple[tuple[str, dict[str, Any]], ...] = ()
    """The leaf's logical types that lean decoding leaves raw: (fastavro key, type node) per branch."""
    raw_items: tuple[tuple[str, dict[str, Any]], ...] = ()
    """The same for the items of an array leaf."""

    def get(self, record: Mapping[str, Any]) -> Any:
        """The value at this path, None when it or any record on the way is null/absent."""
        keys = self.keys
        if len(keys) == 1:
            return record.get(keys[0])
        value: Any = record.get(keys[0])
        if len(keys) == 2:
            return None if value is None else value.get(keys[1])
        for key in keys[1:]:
            if value is None:
                return None
            value = value.get(key)
        return value


class _PathError(Exception):
    pass


class _Checker:
    """Resolves field paths against one reader schema and collects `<key path>: <reason>` problems."""

    def __init__(self, topic: str, schema: dict[str, Any], key_prefix: str, builtin: bool) -> None:
        self.topic = topic
        self.index = SchemaIndex(schema)
        self.root = schema
        self.schema_name = self.index.full_name(schema, None)
        self.key_prefix = key_prefix
        self.builtin = builtin
        self.problems: list[str] = []

    def problem(self, key: str, reason: str) -> None:
        if self.builtin:
            # The built-in mapping's keys are not in the file: point at the schema instead.
            self.problems.append(f"{self.key_prefix}: built-in mapping ({key}): {reason}")
        else:
            self.problems.append(f"{self.key_prefix}.{key}: {reason}")

    def where(self) -> str:
        return f"schema {self.schema_name} (topic '{self.topic}')"

    def _kind(self, t: Any, ns: str | None) -> tuple[str, Any, str | None]:
        t, ns = self.index.resolve(t, ns)
        if isinstance(t, str):
            return t, t, ns
        if isinstance(t, list):
            return "union", t, ns
        logical = t.get("logicalType")
        kind = t["type"]
        if logical == "decimal" and kind in ("bytes", "fixed"):
            return "decimal", t, ns
        if logical in ("date", "uuid", "time-millis", "time-micros") or (
            isinstance(logical, str) and "timestamp" in logical
        ):
            return str(logical), t, ns
        if kind == "array":
            item_kinds = {self._kind(b, ns)[0] for b in self._non_null(t["items"], ns)}
            return ("array:" + item_kinds.pop()) if len(item_kinds) == 1 else "array:union", t, ns
        return str(kind), t, ns

    def _non_null(self, t: Any, ns: str | None) -> list[Any]:
        resolved, _ = self.index.resolve(t, ns)
        branches = resolved if isinstance(resolved, list) else [t]
        return [b for b in branches if self.index.resolve(b, ns)[0] != "null"]

    def walk(self, text: str, root: Any = None, root_ns: str | None = None) -> tuple[list[Any], str | None]:
        """The non-null leaf type branches of a dotted path (from `root`, default the top record)."""
        t: Any = self.root if root is None else root
        ns = root_ns
        parts = text.split(".")
        for i, part in enumerate(parts):
            branches = self._non_null(t, ns)
            kinds = [self._kind(b, ns) for b in branches]
            if len(kinds) != 1 or kinds[0][0] not in ("record", "error"):
                prefix = ".".join(parts[:i]) or "(top level)"
                raise _PathError(f"'{prefix}' is not a record (or a union of null and one record)")
            _, record, ns = kinds[0]
            field = next((f for f in record["fields"] if f["name"] == part), None)
            if field is None:
                record_name = self.index.full_name(record, ns)
                raise _PathError(f"record {record_name} has no field '{part}'")
            t = field["type"]
        return self._non_null(t, ns), ns

    def path(
        self,
        key: str,
        text: str | None,
        allowed: frozenset[str],
        *,
        root: Any = None,
        root_ns: str | None = None,
    ) -> _Path | None:
        """Check `text` exists and has one of the `allowed` kinds; None (and a problem) otherwise."""
        if text is None:
            return None
        try:
            branches, ns = self.walk(text, root, root_ns)
        except _PathError as exc:
            self.problem(key, f"field '{text}' does not exist in {self.where()}: {exc}")
            return None
        kinds = [self._kind(b, ns) for b in branches]
        names = frozenset(k for k, _, _ in kinds)
        if not names or not names <= allowed:
            found = ", ".join(sorted(names)) or "null"
            wanted = ", ".join(sorted(allowed))
            self.problem(key, f"field '{text}' in {self.where()} is {found}; expected {wanted}")
            return None
        symbols = tuple(s for k, t, _ in kinds if k == "enum" for s in t["symbols"])
        raw: list[tuple[str, dict[str, Any]]] = []
        raw_items: list[tuple[str, dict[str, Any]]] = []
        for kind, t, t_ns in kinds:
            if kind.startswith("array:"):
                for item in self._non_null(t["items"], t_ns):
                    node, _ = self.index.resolve(item, t_ns)
                    if (logical := raw_logical_key(node)) is not None:
                        raw_items.append((logical, node))
            elif (logical := raw_logical_key(t)) is not None:
                raw.append((logical, t))
        return _Path(text, tuple(text.split(".")), names, symbols, tuple(raw), tuple(raw_items))

    def array_item(self, key: str, text: str) -> tuple[_Path, Any, str | None] | None:
        """Check `text` is an array of records; returns its path and the item record to walk from."""
        try:
            branches, ns = self.walk(text)
        except _PathError as exc:
            self.problem(key, f"field '{text}' does not exist in {self.where()}: {exc}")
            return None
        kinds = [self._kind(b, ns) for b in branches]
        if len(kinds) == 1 and kinds[0][0] == "array:record":
            _, array, ns = kinds[0]
            return _Path(text, tuple(text.split(".")), frozenset({"array:record"})), array["items"], ns
        self.problem(key, f"field '{text}' in {self.where()} is not an array of records")
        return None

    def check_values(self, key: str, path: _Path, values: list[Any]) -> None:
        """Values compared with an enum/string/number/boolean field must have a matching type."""
        for value in values:
            if path.symbols and value not in path.symbols:
                self.problem(
                    key, f"'{value}' is not a symbol of enum field '{path.text}' ({', '.join(path.symbols)})"
                )
            elif path.kinds <= {"string", "enum"} and not isinstance(value, str | None):
                self.problem(key, f"field '{path.text}' is a string; compare it with strings")
            elif path.kinds <= {"int", "long"} and (
                isinstance(value, bool) or not isinstance(value, int | None)
            ):
                self.problem(key, f"field '{path.text}' is an integer; compare it with integers")
            elif path.kinds == {"boolean"} and not isinstance(value, bool | None):
                self.problem(key, f"field '{path.text}' is a boolean; compare it with true/false")


# --- compiled mapping -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Contents:
    array: _Path
    id: _Path
    quantity: _Path | None
    item_price: _Path | None
    delivery_category: _Path | None
    num_items: bool
    content_type: str | None


@dataclass(frozen=True, slots=True)
class _Parts:
    """The parts of a mapping that `record_types` can replace per record type."""

    event_id: _Path
    event_source_url: _Path | None
    action_source: str
    custom_data: dict[str, _Path]
    constants: dict[str, Any]
    contents: _Contents | None


@dataclass(frozen=True, slots=True)
class _Filter:
    path: _Path
    operator: str
    values: tuple[Any, ...]

    def keeps(self, record: Mapping[str, Any]) -> bool:
        value = self.path.get(record)
        if self.operator == "equals":
            return bool(value == self.values[0])
        if self.operator == "not_equals":
            return bool(value != self.values[0])
        if self.operator == "in":
            return value in self.values
        return value not in self.values


@dataclass(frozen=True, slots=True)
class _Plan:
    destination: str | None
    """The fixed destination, or None: the tenant named by `tenant` (platform mode)."""
    tenant: _Path | None
    spec: MappingSpec
    name_constant: str | None
    name_path: _Path | None
    name_values: dict[str, str] | None
    event_time: _Path
    time_unit: str
    filters: tuple[_Filter, ...]
    user_data: tuple[tuple[str, tuple[_Path, ...]], ...]
    user_data_runs: tuple[_UserDataRun, ...]
    """`user_data` as runs of consecutive keys that read the same parent record (see _raw_user_data)."""
    opt_out: _Path | None
    ldu: tuple[_Path, _Path | None, _Path | None] | None
    base: _Parts
    per_type: dict[str, _Parts]


def _compile(
    topic: str, config: TopicConfig, spec: MappingSpec, schema: dict[str, Any], builtin: bool
) -> tuple[_Plan | None, list[str]]:
    prefix = f"topics.{topic}.reader_schema" if builtin else f"topics.{topic}.mapping"
    c = _Checker(topic, schema, prefix, builtin)

    name_path = None
    if spec.event_name.field is not None:
        name_path = c.path(
            "event_name.field", spec.event_name.field, frozenset({"string", "enum", "int", "long"})
        )
        if name_path is not None:
            c.check_values("event_name.values", name_path, list(spec.event_name.values or {}))
            c.check_values("record_types", name_path, list(spec.record_types))

    time_allowed = _TIME_KINDS[spec.event_time.unit]
    event_time = c.path("event_time", spec.event_time.field, time_allowed)

    filters = []
    for i, f in enumerate(spec.filters):
        path = c.path(f"filters.{i}.field", f.field, _SCALAR_KINDS)
        if path is not None:
            values = _filter_values(f)
            c.check_values(f"filters.{i}", path, list(values))
            filters.append(_Filter(path, f.operator, values))

    user_data = []
    for key, texts in spec.user_data.items():
        paths = [c.path(f"user_data.{key}", t, _with_arrays(_USER_DATA_KINDS)) for t in texts]
        user_data.append((key, tuple(p for p in paths if p is not None)))

    opt_out = c.path("opt_out", spec.opt_out, frozenset({"boolean"}))
    ldu = None
    if spec.limited_data_use is not None:
        lspec = spec.limited_data_use
        flag = c.path("limited_data_use.field", lspec.field, frozenset({"boolean"}))
        ints = frozenset({"int", "long"})
        country = c.path("limited_data_use.country", lspec.country, ints)
        state = c.path("limited_data_use.state", lspec.state, ints)
        if flag is not None:
            ldu = (flag, country, state)

    base = _compile_parts(c, "", spec, None)
    per_type = {}
    for type_name, override in spec.record_types.items():
        per_type[type_name] = _compile_parts(c, f"record_types.{type_name}.", override, base)

    tenant = None
    if config.tenant_field is not None:
        # Reported under the topic's own key, also for the built-in kinds.
        t = _Checker(topic, schema, f"topics.{topic}", builtin=False)
        tenant = t.path("tenant_field", config.tenant_field, _ID_KINDS)
        c.problems += t.problems

    if c.problems or event_time is None or base is None or any(p is None for p in per_type.values()):
        return None, c.problems
    plan = _Plan(
        destination=config.destination,
        tenant=tenant,
        spec=spec,
        name_constant=spec.event_name.constant,
        name_path=name_path,
        name_values=spec.event_name.values,
        event_time=event_time,
        time_unit=spec.event_time.unit,
        filters=tuple(filters),
        user_data=tuple(user_data),
        user_data_runs=_user_data_runs(tuple(user_data)),
        opt_out=opt_out,
        ldu=ldu,
        base=base,
        per_type={k: v for k, v in per_type.items() if v is not None},
    )
    return plan, []


def _filter_values(f: FilterSpec) -> tuple[Any, ...]:
    op = f.operator
    if op in ("equals", "not_equals"):
        return (getattr(f, op),)
    return tuple((f.in_ if op == "in" else f.not_in) or ())


def _compile_parts(c: _Checker, key: str, spec: Any, base: _Parts | None) -> _Parts | None:
    """Compile the replaceable parts of `spec` (a MappingSpec, or a RecordTypeOverride over `base`)."""
    event_id = c.path(f"{key}event_id", spec.event_id, _ID_KINDS) if spec.event_id else None
    url = c.path(f"{key}event_source_url", spec.event_source_url, frozenset({"string"}))
    custom = {}
    for name, text in spec.custom_data.items():
        allowed = _NUMBER_KINDS if name in _MONEY_KEYS else _with_arrays(_SCALAR_KINDS)
        path = c.path(f"{key}custom_data.{name}", text, allowed)
        if path is not None:
            custom[name] = path
    contents = _compile_contents(c, f"{key}contents", spec.contents) if spec.contents else None
    if base is None:
        if event_id is None:
            return None
        return _Parts(
            event_id=event_id,
            event_source_url=url,
            action_source=spec.action_source,
            custom_data=custom,
            constants=dict(spec.custom_data_constants),
            contents=contents,
        )
    return _Parts(
        event_id=event_id or base.event_id,
        event_source_url=url or base.event_source_url,
        action_source=spec.action_source or base.action_source,
        custom_data={**base.custom_data, **custom},
        constants={**base.constants, **spec.custom_data_constants},
        contents=contents or base.contents,
    )


def _compile_contents(c: _Checker, key: str, spec: ContentsSpec) -> _Contents | None:
    found = c.array_item(f"{key}.field", spec.field)
    if found is None:
        return None
    array, item, ns = found

    def item_path(name: str, text: str | None, allowed: frozenset[str]) -> _Path | None:
        return c.path(f"{key}.{name}", text, allowed, root=item, root_ns=ns)

    item_id = item_path("id", spec.id, _ID_KINDS)
    if item_id is None:
        return None
    return _Contents(
        array=array,
        id=item_id,
        quantity=item_path("quantity", spec.quantity, frozenset({"int", "long"})),
        item_price=item_path("item_price", spec.item_price, _NUMBER_KINDS),
        delivery_category=item_path(
            "delivery_category", spec.delivery_category, frozenset({"string", "enum"})
        ),
        num_items=spec.num_items,
        content_type=spec.content_type,
    )


# --- generated mapping functions --------------------------------------------------------------------
# `Mapper.map` runs one Python function per topic (and decoding mode) generated at start-up from the
# checked plan, so that a record costs straight-line dict lookups instead of a walk over the plan per
# field. `Mapper.interpret` is the plan's direct reading, kept as the reference that tests hold the
# generated functions to (same results, same JSON bytes). Generated code names every configured value
# through its namespace (`Code.const`); only field names (Avro names, checked against the schema)
# and the key names of this module appear in the source, as `repr()` literals.


def _raw_converter(path: _Path) -> Callable[[Any], Any] | None:
    """For a lean-decoded record: the raw value at `path` -> what fastavro would have decoded."""
    if not path.raw and not path.raw_items:
        return None
    leaf = tuple((RAW_LOGICAL_TYPES[key], LOGICAL_READERS[key], node) for key, node in path.raw)
    items = tuple((RAW_LOGICAL_TYPES[key], LOGICAL_READERS[key], node) for key, node in path.raw_items)
    if len(leaf) == 1 and not items:
        # The common case (one logical type, no array): one call.
        ((raw_type, read, node),) = leaf

        def convert_one(value: Any) -> Any:
            return read(value, node, node) if type(value) is raw_type else value

        return convert_one

    def one(value: Any, branches: tuple[tuple[type, Callable[..., Any], dict[str, Any]], ...]) -> Any:
        kind = type(value)
        for raw_type, read, node in branches:
            if kind is raw_type:
                return read(value, node, node)
        return value

    def convert(value: Any) -> Any:
        if type(value) is list:
            return [one(item, items) for item in value] if items else value
        return one(value, leaf) if leaf else value

    return convert


@functools.lru_cache(maxsize=4096)
def _money_from_raw(raw: bytes, key: str, precision: int, scale: int, places: int) -> float:
    """`_money` of the Decimal fastavro decodes from unscaled bytes (amounts repeat: cached)."""
    return _round_decimal(LOGICAL_READERS[key](raw, {"precision": precision, "scale": scale}, None), places)


def _put_raw(raw: dict[str, object], key: str, value: Any) -> None:
    """Put the value of a one-field user_data key into `raw`: nothing for None, null items dropped from
    a list, a one-item list as its item."""
    if value is None:
        return
    if type(value) is list:
        items = [v for v in value if v is not None]
        if items:
            raw[key] = items[0] if len(items) == 1 else items
    else:
        raw[key] = value


class _Body:
    """Generates one function body: reads share the parent records they go through (looked up once)."""

    def __init__(self, code: Code, lean: bool) -> None:
        self.code = code
        self.lean = lean
        self.parents: dict[tuple[str, ...], str] = {}

    def parent(self, keys: tuple[str, ...]) -> str:
        """The variable holding the record at `keys` (from the top record), emitting its lookup at the
        body's top level the first time (so `prefetch` must have asked for it before any branch)."""
        if not keys:
            return "record"
        var = self.parents.get(keys)
        if var is None:
            above = self.parent(keys[:-1])
            var = self.code.var("p")
            get = f"{above}.get({keys[-1]!r})"
            self.code(
                1,
                f"{var} = {get}" if above == "record" else f"{var} = {get} if {above} is not None else None",
            )
            self.parents[keys] = var
        return var

    def read(
        self, indent: int, target: str, path: _Path, *, base: str = "record", convert: bool = True
    ) -> None:
        """`target = <value at path>` (from `base`, the top record or an array item); converted from
        its raw form in lean mode unless `convert` is False."""
        code = self.code
        if base == "record":
            source = self.parents.get(path.keys[:-1], "record") if len(path.keys) > 1 else "record"
            assert len(path.keys) == 1 or path.keys[:-1] in self.parents, "prefetch() first"
            leaf = path.keys[-1]
            code(
                indent,
                f"{target} = {source}.get({leaf!r})"
                if source == "record"
                else f"{target} = {source}.get({leaf!r}) if {source} is not None else None",
            )
        else:
            code(indent, f"{target} = {base}.get({path.keys[0]!r})")
            for key in path.keys[1:]:
                code(indent, f"if {target} is not None:")
                code(indent + 1, f"{target} = {target}.get({key!r})")
        converter = _raw_converter(path) if self.lean and convert else None
        if converter is not None:
            code(indent, f"if {target} is not None:")
            code(indent + 1, f"{target} = {code.const(converter)}({target})")

    def prefetch(self, paths: list[_Path]) -> None:
        """Emit the parent lookups of `paths` up front (so that reads inside branches can share them)."""
        for path in paths:
            self.parent(path.keys[:-1])


def _reject(code: Code, indent: int, reason: str, detail: str) -> None:
    code(indent, f"raise _Reject({code.const(reason)}, {code.const(detail)})")


def _record_paths(plan: _Plan, parts: _Parts) -> list[_Path]:
    """Every top-record path a body reads (for `_Body.prefetch`)."""
    paths = [plan.event_time, parts.event_id]
    paths += [p for p in (parts.event_source_url, plan.opt_out, plan.tenant) if p is not None]
    paths += [p for _, group in plan.user_data for p in group]
    paths += list(parts.custom_data.values())
    if parts.contents is not None:
        paths.append(parts.contents.array)
    if plan.ldu is not None:
        paths += [p for p in plan.ldu if p is not None]
    return paths


def _memo_runs(plan: _Plan) -> tuple[tuple[str, ...], ...] | None:
    """The runs of memoized user_data keys (`Normalizer.memo`), or None when the mapping's user_data
    does not allow the memo: a key read from several fields, an array or a deeper path (every key must
    be a plain value: the memo's key, and `country`, the hint of the others, must be memoized)."""
    keys = [key for key, _ in plan.user_data]
    for _, paths in plan.user_data:
        if len(paths) != 1 or len(paths[0].keys) > 2 or any(k.startswith("array:") for k in paths[0].kinds):
            return None
    memoized = [key in MEMO_FIELDS for key in keys]
    if not any(memoized):
        return None
    runs: list[list[str]] = []
    previous = False
    for key, memo in zip(keys, memoized, strict=True):
        if memo:
            if previous:
                runs[-1].append(key)
            else:
                runs.append([key])
        previous = memo
    return tuple(tuple(run) for run in runs)


def _generate(
    plan: _Plan,
    normalizer: Normalizer,
    clock: Callable[[], float],
    memo: Callable[..., Memoized] | None,
    *,
    lean: bool,
) -> Callable[[Mapping[str, Any]], MapResult]:
    """The mapping function of `plan` (for lean-decoded records when `lean`); `memo` is the plan's
    memo of repeat customers (`Normalizer.memo` over `_memo_runs(plan)`), shared by its functions."""
    namespace: dict[str, Any] = {
        "_Reject": _Reject,
        "Filtered": Filtered,
        "Rejected": Rejected,
        "Mapped": Mapped,
        "Omission": Omission,
        "is_http_url": is_http_url,
        "validate_mapped_event": validate_mapped_event,
        "_BROAD_KEYS": BROAD_KEYS,
        "_CURRENCIES": currency_codes(),
        "_clock": clock,
        "_event_time_of": _event_time_of,
        "_money": _money,
        "_money_from_raw": _money_from_raw,
        "_json_value": _json_value,
        "_MINOR_UNITS": _MINOR_UNITS,
        "_put_raw": _put_raw,
        "_UUID": uuid.UUID,
        "_user_data": normalizer.user_data,
    }
    code = Code(namespace)
    _generate_body(code, "_body", plan, plan.base, normalizer, memo, lean)
    per_type = {}
    for i, (type_key, parts) in enumerate(plan.per_type.items()):
        per_type[type_key] = _generate_body(code, f"_body_{i}", plan, parts, normalizer, memo, lean)

    code(0, "def _map(record):")
    if plan.name_path is not None:
        name_text = plan.name_path.text
        body = _Body(code, lean)
        body.prefetch([plan.name_path, *(f.path for f in plan.filters)])
        body.read(1, "raw_name", plan.name_path)
        code(1, "if raw_name is None or raw_name == '':")
        _reject(code, 2, MISSING_EVENT_NAME, f"{name_text} is null or empty")
        code(1, "type_key = str(raw_name)")
        if plan.name_values is None:
            code(1, "event_name = type_key")
        else:
            names = code.const(plan.name_values)
            code(1, f"event_name = {names}.get(type_key)")
            code(1, "if event_name is None:")
            not_sent, prefix = code.const(EVENT_TYPE_NOT_SENT), code.const(name_text + "=")
            code(2, f"return Filtered({not_sent}, {prefix} + type_key)")
    else:
        assert plan.name_constant is not None
        body = _Body(code, lean)
        body.prefetch([f.path for f in plan.filters])
        code(1, f"event_name = {code.const(plan.name_constant)}")
    for i, rule in enumerate(plan.filters):
        body.read(1, "value", rule.path)
        verdict = Filtered(FILTERED_BY_CONFIG, f"filters[{i}]: {rule.path.text} {rule.operator}")
        values = code.const(rule.values)
        test = {
            "equals": f"not bool(value == {values}[0])",
            "not_equals": f"not bool(value != {values}[0])",
            "in": f"value not in {values}",
            "not_in": f"value in {values}",
        }[rule.operator]
        code(1, f"if {test}:")
        code(2, f"return {code.const(verdict)}")
    if per_type and plan.name_path is not None:
        code(1, "return _per_type.get(type_key, _body)(record, event_name)")
    else:
        code(1, "return _body(record, event_name)")
    code.run("<generated mapping>")
    namespace["_per_type"] = {key: namespace[name] for key, name in per_type.items()}
    function: Callable[[Mapping[str, Any]], MapResult] = namespace["_map"]
    function.__doc__ = code.source  # the code that runs, for a debugger or a curious reader
    return function


def _generate_body(
    code: Code,
    name: str,
    plan: _Plan,
    parts: _Parts,
    normalizer: Normalizer,
    memo: Callable[..., Memoized] | None,
    lean: bool,
) -> str:
    """Emit `def <name>(record, event_name)`: the event of a record whose name and filters passed."""
    body = _Body(code, lean)
    code(0, f"def {name}(record, event_name):")
    body.prefetch(_record_paths(plan, parts))

    # event_time, event_id, in the interpreter's order (its rejections win in that order)
    time_path, unit = plan.event_time, plan.time_unit
    raw_millis = lean and unit == "auto" and [k for k, _ in time_path.raw] == ["long-timestamp-millis"]
    body.read(1, "value", time_path, convert=not raw_millis)
    code(1, "if value is None:")
    _reject(code, 2, MISSING_EVENT_TIME, f"{time_path.text} is null")
    if raw_millis:
        # floor(datetime.timestamp()) of fastavro's datetime, exactly, for every value it can decode.
        code(1, "if type(value) is int:")
        code(2, "event_time = value // 1000")
        code(1, "else:")
        code(
            2,
            f"event_time = _event_time_of({code.const(_raw_converter(time_path))}(value), "
            f"{code.const(time_path.text)}, {code.const(unit)})",
        )
    else:
        code(1, f"event_time = _event_time_of(value, {code.const(time_path.text)}, {code.const(unit)})")
    body.read(1, "value", parts.event_id)
    code(1, "event_id = '' if value is None else str(value).strip()")
    code(1, "if not event_id:")
    _reject(code, 2, MISSING_EVENT_ID, f"{parts.event_id.text} is null or empty")
    code(
        1,
        "event = {'event_name': event_name, 'event_time': event_time, 'event_id': event_id, "
        f"'action_source': {code.const(parts.action_source)}}}",
    )

    # event_source_url
    code(1, "url_omitted = ()")
    if parts.event_source_url is not None:
        body.read(1, "url", parts.event_source_url)
        code(1, "if isinstance(url, str):")
        code(2, "url = url.strip()")
        code(2, "if url:")
        if parts.action_source == "website":
            code(3, "event['event_source_url'] = url")
        else:
            code(3, "if is_http_url(url):")
            code(4, "event['event_source_url'] = url")
            code(3, "else:")
            code(4, f"url_omitted = ({code.const(Omission('event_source_url', INVALID_URL))},)")

    _generate_user_data(code, body, plan, normalizer, memo)
    code(1, "event['user_data'] = user_data")
    _generate_custom_data(code, body, parts)
    code(1, "if custom_data:")
    code(2, "event['custom_data'] = custom_data")

    if plan.opt_out is not None:
        body.read(1, "value", plan.opt_out)
        code(1, "if value is True:")
        code(2, "event['opt_out'] = True")
    if plan.ldu is not None:
        flag, country, state = plan.ldu
        body.read(1, "value", flag)
        code(1, "if value is True:")
        code(2, "event['data_processing_options'] = ['LDU']")
        # 0 asks Meta to geolocate the event from its IP address.
        for key, path in (("country", country), ("state", state)):
            if path is None:
                code(2, f"event['data_processing_options_{key}'] = 0")
            else:
                body.read(2, "value", path)
                code(2, f"event['data_processing_options_{key}'] = value or 0")

    _generate_validation(code, parts.action_source)
    code(1, "if rejection is not None:")
    code(2, "return Rejected('validate', rejection.reason, rejection.detail)")
    if plan.destination is not None:
        code(1, f"return Mapped({code.const(plan.destination)}, event, user_data_omitted + url_omitted)")
    else:
        assert plan.tenant is not None
        body.read(1, "value", plan.tenant)
        code(1, "tenant = '' if value is None else str(value).strip()")
        code(1, "if not tenant:")
        _reject(code, 2, MISSING_TENANT_ID, f"{plan.tenant.text} is null or empty")
        code(
            1, f"return Mapped({code.const(TENANT_PREFIX)} + tenant, event, user_data_omitted + url_omitted)"
        )
    return name


def _generate_validation(code: Code, action_source: str) -> None:
    """Emit code leaving `rejection`: what `validate_mapped_event` returns for `event`. An event that
    plainly passes its checks (event_time within the window, a user_data key outside the broad
    combinations, a finite number or no value and an ISO currency or none, where the event name allows
    none) is accepted without the call; anything else gets the call, which finds the reason. Events
    of the action sources with requirements of their own always get the call."""
    if action_source in CHECKED_BY_SOURCE:
        code(1, "rejection = validate_mapped_event(event, now=_clock())")
        return
    limit = max_event_age_s(action_source)
    code(1, "now = _clock()")
    code(1, "v_value = custom_data.get('value')")
    code(1, "v_currency = custom_data.get('currency')")
    code(1, "if (")
    code(2, f"event_time - now <= {MAX_FUTURE_S} and now - event_time <= {limit}")
    code(2, "and not user_data.keys() <= _BROAD_KEYS")
    code(2, "and (type(v_value) is float and v_value - v_value == 0.0 or type(v_value) is int")
    code(3, "or v_value is None and event_name != 'Purchase')")
    code(2, "and (type(v_currency) is str and v_currency in _CURRENCIES")
    code(3, "or v_currency is None and event_name != 'Purchase')")
    code(1, "):")
    code(2, "rejection = None")
    code(1, "else:")
    code(2, "rejection = validate_mapped_event(event, now=now)")


def _generate_user_data(
    code: Code, body: _Body, plan: _Plan, normalizer: Normalizer, memo: Callable[..., Memoized] | None
) -> None:
    """Emit code leaving `user_data` (a dict) and `user_data_omitted` (a tuple)."""
    runs = _memo_runs(plan)
    if memo is None or runs is None:
        _generate_raw_user_data(code, body, plan, 1)
        code(1, "result = _user_data(raw)")
        code(1, "user_data = result.user_data")
        code(1, "user_data_omitted = result.omitted")
        return
    memoized = [key for run in runs for key in run]
    values = {key: code.var("u") for key, _ in plan.user_data}
    # Keys read from the same record: one test of whether it is there, then plain lookups.
    by_parent: dict[tuple[str, ...], list[tuple[str, _Path]]] = {}
    for key, (path,) in plan.user_data:
        by_parent.setdefault(path.keys[:-1], []).append((key, path))
    # A birthday read raw as a day count stays one for the memo's path (`Normalizer.days_adder`), and
    # is converted only for the path without the memo.
    raw_days: dict[str, Callable[[Any], Any]] = {}
    for parent, keys in by_parent.items():
        source = body.parent(parent)
        indent = 1
        if parent:
            code(1, f"if {source} is None:")
            code(2, " = ".join(values[key] for key, _ in keys) + " = None")
            code(1, "else:")
            indent = 2
        for key, path in keys:
            code(indent, f"{values[key]} = {source}.get({path.keys[-1]!r})")
            converter = _raw_converter(path) if body.lean else None
            if converter is None:
                continue
            if key == "db" and [k for k, _ in path.raw] == ["int-date"] and not path.raw_items:
                raw_days[key] = converter
                continue
            code(indent, f"if {values[key]} is not None:")
            code(indent + 1, f"{values[key]} = {code.const(converter)}({values[key]})")
    code(1, "try:")
    code(2, f"memo = {code.const(memo)}({', '.join(values[k] for k in memoized)})")
    code(1, "except TypeError:  # an unhashable value (a list where the schema has a scalar)")
    code(2, "memo = None")
    code(1, "if memo is None:")
    for key, converter in raw_days.items():
        code(2, f"if {values[key]} is not None:")
        code(3, f"{values[key]} = {code.const(converter)}({values[key]})")
    code(2, "raw = {}")
    for key, _ in plan.user_data:
        code(2, f"_put_raw(raw, {key!r}, {values[key]})")
    code(2, "result = _user_data(raw)")
    code(2, "user_data = result.user_data")
    code(2, "user_data_omitted = result.omitted")
    code(1, "else:")
    # The memo's parts are shared: copied into this event's dict, never handed out.
    code(2, "hint = memo.hint")
    code(2, "parts = memo.parts")
    code(2, "omitted = []")
    run_index = 0
    started = False
    previous_memoized = False
    for key, _ in plan.user_data:
        if key in MEMO_FIELDS:
            if not previous_memoized:
                if started:
                    code(2, f"user_data.update(parts[{run_index}])")
                else:
                    code(2, f"user_data = parts[{run_index}].copy()")
                    started = True
                code(2, f"if memo.omitted[{run_index}]:")
                code(3, f"omitted.extend(memo.omitted[{run_index}])")
                run_index += 1
            previous_memoized = True
            continue
        previous_memoized = False
        if not started:
            code(2, "user_data = {}")
            started = True
        adder = normalizer.days_adder() if key in raw_days else normalizer.adder(key)
        code(2, f"if {values[key]} is not None:")
        code(3, f"{code.const(adder)}({values[key]}, hint, user_data, omitted)")
    code(2, "user_data_omitted = tuple(omitted)")


def _generate_raw_user_data(code: Code, body: _Body, plan: _Plan, indent: int) -> None:
    """Emit what `_raw_user_data` does: `raw`, user_data key -> raw value(s)."""
    code(indent, "raw = {}")
    for run in plan.user_data_runs:
        if run.paths is not None:
            key, paths = run.paths
            code(indent, "values = []")
            for path in paths:
                body.read(indent, "value", path)
                code(indent, "if isinstance(value, list):")
                code(indent + 1, "values.extend(v for v in value if v is not None)")
                code(indent, "elif value is not None:")
                code(indent + 1, "values.append(value)")
            code(indent, "if values:")
            code(indent + 1, f"raw[{key!r}] = values[0] if len(values) == 1 else values")
            continue
        for key, _leaf in run.fields:
            (path,) = dict(plan.user_data)[key]
            body.read(indent, "value", path)
            code(indent, f"_put_raw(raw, {key!r}, value)")


def _generate_custom_data(code: Code, body: _Body, parts: _Parts) -> None:
    """Emit what `_custom_data` does, leaving `custom_data` (a dict, maybe empty)."""
    constants = parts.constants
    if set(parts.custom_data) & set(constants):
        # A record type's paths over the base's constants (or the reverse): which wins and where it
        # lands depends on the record, so this rare shape runs the interpreter's function.
        converters = {
            key: _raw_converter(path) if body.lean else None for key, path in parts.custom_data.items()
        }
        code(
            1, f"custom_data, places = _custom_fields({code.const(parts)}, record, {code.const(converters)})"
        )
        code.namespace["_custom_fields"] = _custom_fields
        if parts.contents is not None:
            _generate_contents(code, body, parts.contents)
        return
    names = {key: code.var("c") for key in parts.custom_data}
    money_raw: dict[str, tuple[str, int, int]] = {}
    for key, path in parts.custom_data.items():
        var = names[key]
        decimals = [(k, node) for k, node in path.raw if k.endswith("-decimal")]
        if (
            body.lean
            and key in _MONEY_KEYS
            and len(decimals) == 1
            and len(path.raw) == 1
            and not path.raw_items
        ):
            # Left raw: `_money_from_raw` converts and rounds in one cached step.
            k, node = decimals[0]
            money_raw[key] = (k, int(node["precision"]), int(node.get("scale", 0)))
            body.read(1, var, path, convert=False)
        else:
            body.read(1, var, path)
        if key == "content_ids":
            code(1, f"if {var} is not None:")
            code(
                2,
                f"{var} = [str(v) for v in ({var} if isinstance({var}, list) else [{var}]) if v is not None]",
            )
        elif key == "currency":
            code(1, f"if isinstance({var}, str):")
            code(2, f"{var} = {var}.strip().upper()")
        elif key in _TEXT_KEYS:
            code(1, f"if isinstance({var}, (int, _UUID)):")
            code(2, f"{var} = str({var})")
    if "currency" in names:
        # currency_minor_units() inlined: a currency's minor units (2 unless listed).
        var = names["currency"]
        code(1, f"places = _MINOR_UNITS.get({var}.upper(), 2) if isinstance({var}, str) else 2")
    else:
        currency = constants.get("currency")
        code(1, f"places = {currency_minor_units(currency if isinstance(currency, str) else None)}")
    code(1, "custom_data = {}")
    for key, var in names.items():
        code(1, f"if {var} is not None:")
        if key in money_raw:
            k, precision, scale = money_raw[key]
            code(2, f"if type({var}) is bytes:")
            code(3, f"custom_data[{key!r}] = _money_from_raw({var}, {k!r}, {precision}, {scale}, places)")
            code(2, "else:")
            code(3, f"custom_data[{key!r}] = _money({var}, places)")
        elif key in _MONEY_KEYS:
            code(2, f"custom_data[{key!r}] = _money({var}, places)")
        else:
            code(2, f"custom_data[{key!r}] = {var} if type({var}) is str else _json_value({var})")
    for key, value in constants.items():
        if key in _MONEY_KEYS:
            code(1, f"custom_data[{key!r}] = _money({code.const(value)}, places)")
        else:
            # Constants are JSON scalars: what the interpreter converts them to, worked out once.
            code(
                1, f"custom_data[{key!r}] = {code.const(value if type(value) is str else _json_value(value))}"
            )
    if parts.contents is not None:
        _generate_contents(code, body, parts.contents)


def _generate_contents(code: Code, body: _Body, spec: _Contents) -> None:
    """Emit what `_add_contents` does (into `custom_data`, with `places`)."""
    body.read(1, "items", spec.array)
    code(1, "contents = []")
    code(1, "count = 0")
    code(1, "for item in items or ():")
    code(2, "if item is None:")
    code(3, "continue")
    body.read(2, "value", spec.id, base="item")
    code(2, "text_id = '' if value is None else str(value).strip()")
    code(2, "if not text_id:")
    code(3, "continue  # Meta needs an id per content; an item without one cannot be described")
    code(2, "entry = {'id': text_id}")
    if spec.quantity is not None:
        body.read(2, "quantity", spec.quantity, base="item")
        code(2, "if quantity is not None:")
        code(3, "entry['quantity'] = quantity")
    if spec.item_price is not None:
        path = spec.item_price
        decimals = [(k, node) for k, node in path.raw if k.endswith("-decimal")]
        raw = body.lean and len(decimals) == 1 and len(path.raw) == 1 and not path.raw_items
        body.read(2, "price", path, base="item", convert=not raw)
        code(2, "if price is not None:")
        if raw:
            k, node = decimals[0]
            precision, scale = int(node["precision"]), int(node.get("scale", 0))
            code(3, "if type(price) is bytes:")
            code(4, f"entry['item_price'] = _money_from_raw(price, {k!r}, {precision}, {scale}, places)")
            code(3, "else:")
            code(4, "entry['item_price'] = _money(price, places)")
        else:
            code(3, "entry['item_price'] = _money(price, places)")
    if spec.delivery_category is not None:
        body.read(2, "category", spec.delivery_category, base="item")
        code(2, "if category is not None:")
        code(3, "entry['delivery_category'] = category")
    code(2, "contents.append(entry)")
    code(
        2,
        "count += quantity if isinstance(quantity, int) else 1"
        if spec.quantity is not None
        else "count += 1",
    )
    code(1, "if contents:")
    code(2, "custom_data['contents'] = contents")
    if spec.num_items:
        code(2, "custom_data['num_items'] = count")
    if spec.content_type is not None:
        code(2, f"custom_data['content_type'] = {code.const(spec.content_type)}")


# --- the mapper -------------------------------------------------------------------------------------


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail


class Mapper:
    """Maps decoded records of every configured topic; built once at start-up.

    The constructor checks every mapping against its topic's reader schema (`reader_schemas`: topic
    -> parsed Avro JSON) and raises ConfigError listing every problem. `clock` returns Unix seconds
    and is what `validate_event` compares event_time with.
    """

    def __init__(
        self,
        config: AppConfig,
        reader_schemas: Mapping[str, dict[str, Any]],
        normalizer: Normalizer,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._normalizer = normalizer
        self._clock = clock
        self._plans: dict[str, _Plan] = {}
        self._functions: dict[str, tuple[Callable[[Mapping[str, Any]], MapResult], ...]] = {}
        problems: list[str] = []
        for name, topic in config.topics.items():
            schema = reader_schemas.get(name)
            if schema is None:
                problems.append(f"topics.{name}.reader_schema: no reader schema given to the mapper")
                continue
            builtin = topic.mapping is None
            spec = canonical_mapping(topic) if builtin else topic.mapping
            assert spec is not None  # TopicConfig guarantees a mapping for kind custom
            plan, found = _compile(name, topic, spec, schema, builtin)
            problems += found
            if plan is not None:
                self._plans[name] = plan
        if problems:
            raise ConfigError(problems)
        for name, plan in self._plans.items():
            runs = _memo_runs(plan)
            memo = normalizer.memo(runs) if runs is not None else None
            self._functions[name] = tuple(
                _generate(plan, normalizer, clock, memo, lean=lean) for lean in (False, True)
            )

    @classmethod
    def from_config(cls, config: AppConfig, *, clock: Callable[[], float] = time.time) -> Mapper:
        """A mapper with the configured Normalizer and the reader schemas `load_config` loaded."""
        norm = config.normalization
        normalizer = Normalizer(
            default_phone_region=norm.default_phone_region,
            hash_external_id=norm.hash_external_id,
            cache_size=norm.cache_size,
        )
        return cls(config, config.reader_schemas(), normalizer, clock=clock)

    def mapping(self, topic: str) -> MappingSpec:
        """The effective mapping of `topic` (the built-in one for canonical kinds)."""
        return self._plans[topic].spec

    def map(self, topic: str, record: Mapping[str, Any], *, raw_logical: bool = False) -> MapResult:
        """Map one decoded record of `topic` (KeyError for a topic that is not configured).

        `raw_logical`: the record comes from `Decoder.decode_lean` with its timestamps, dates and
        decimals left raw (that method's True), to be read as the topic's reader schema declares.
        Runs the function generated for the topic (see "generated mapping functions").
        """
        function = self._functions[topic][raw_logical]
        try:
            return function(record)
        except _Reject as exc:
            return Rejected("map", exc.reason, exc.detail)

    def interpret(self, topic: str, record: Mapping[str, Any]) -> MapResult:
        """What `map` does for a record decoded with its logical types converted, by reading the plan
        field by field: the reference the generated functions are tested against (slower)."""
        plan = self._plans[topic]
        try:
            return self._map(plan, record)
        except _Reject as exc:
            return Rejected("map", exc.reason, exc.detail)

    def generated_source(self, topic: str, *, raw_logical: bool = False) -> str:
        """The Python source of `topic`'s generated mapping function (for debugging and tests)."""
        return self._functions[topic][raw_logical].__doc__ or ""

    def _map(self, plan: _Plan, record: Mapping[str, Any]) -> MapResult:
        type_key: str | None = None
        if plan.name_path is not None:
            raw_name = plan.name_path.get(record)
            if raw_name is None or raw_name == "":
                raise _Reject(MISSING_EVENT_NAME, f"{plan.name_path.text} is null or empty")
            type_key = str(raw_name)
            if plan.name_values is None:
                event_name = type_key
            elif type_key in plan.name_values:
                event_name = plan.name_values[type_key]
            else:
                # The event type is an enum symbol or type code, never personal data.
                return Filtered(EVENT_TYPE_NOT_SENT, f"{plan.name_path.text}={type_key}")
        else:
            assert plan.name_constant is not None
            event_name = plan.name_constant
        for i, rule in enumerate(plan.filters):
            if not rule.keeps(record):
                return Filtered(FILTERED_BY_CONFIG, f"filters[{i}]: {rule.path.text} {rule.operator}")

        parts = plan.per_type.get(type_key, plan.base) if type_key is not None else plan.base
        event: dict[str, Any] = {
            "event_name": event_name,
            "event_time": self._event_time(plan, record),
            "event_id": _event_id(parts.event_id, record),
            "action_source": parts.action_source,
        }
        omitted: tuple[Omission, ...] = ()
        if parts.event_source_url is not None:
            url = parts.event_source_url.get(record)
            url = url.strip() if isinstance(url, str) else ""
            if url and (is_http_url(url) or parts.action_source == "website"):
                event["event_source_url"] = url
            elif url:
                # Optional outside website events: a malformed page URL must not cost the whole event
                # (Meta rejects the request); website events keep it and fail validation instead.
                omitted = (Omission("event_source_url", INVALID_URL),)
        result = self._normalizer.user_data(_raw_user_data(plan, record))
        event["user_data"] = result.user_data
        omitted = result.omitted + omitted
        custom_data = _custom_data(parts, record)
        if custom_data:
            event["custom_data"] = custom_data
        if plan.opt_out is not None and plan.opt_out.get(record) is True:
            event["opt_out"] = True
        if plan.ldu is not None and plan.ldu[0].get(record) is True:
            _, country, state = plan.ldu
            event["data_processing_options"] = ["LDU"]
            # 0 asks Meta to geolocate the event from its IP address.
            event["data_processing_options_country"] = (country.get(record) if country else None) or 0
            event["data_processing_options_state"] = (state.get(record) if state else None) or 0

        rejection = validate_event(event, now=self._clock(), normalized=True)
        if rejection is not None:
            return Rejected("validate", rejection.reason, rejection.detail)
        destination = plan.destination
        if destination is None:
            assert plan.tenant is not None
            destination = TENANT_PREFIX + _required_text(plan.tenant, record, MISSING_TENANT_ID)
        return Mapped(destination, event, omitted)

    @staticmethod
    def _event_time(plan: _Plan, record: Mapping[str, Any]) -> int:
        """event_time in whole Unix seconds (floored) from the configured field and unit."""
        path = plan.event_time
        value = path.get(record)
        if value is None:
            raise _Reject(MISSING_EVENT_TIME, f"{path.text} is null")
        return _event_time_of(value, path.text, plan.time_unit)


def _event_time_of(value: Any, text: str, unit: str) -> int:
    """event_time in whole Unix seconds (floored) from the non-null value of field `text`."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise _Reject(INVALID_EVENT_TIME, f"{text} has no time zone")
        return math.floor(value.timestamp())
    if unit == "iso8601":
        try:
            parsed = dt.datetime.fromisoformat(str(value))
        except ValueError:
            raise _Reject(INVALID_EVENT_TIME, f"{text} is not ISO-8601") from None
        if parsed.tzinfo is None:
            raise _Reject(INVALID_EVENT_TIME, f"{text} has no UTC offset")
        return math.floor(parsed.timestamp())
    if isinstance(value, int) and not isinstance(value, bool):
        divisor = {"seconds": 1, "millis": 1000, "micros": 1_000_000}.get(unit)
        if divisor is not None:
            return value // divisor
    raise _Reject(INVALID_EVENT_TIME, f"{text} is not a {unit} timestamp")


def _event_id(path: _Path, record: Mapping[str, Any]) -> str:
    return _required_text(path, record, MISSING_EVENT_ID)


def _required_text(path: _Path, record: Mapping[str, Any], reason: str) -> str:
    value = path.get(record)
    text = "" if value is None else str(value).strip()
    if not text:
        raise _Reject(reason, f"{path.text} is null or empty")
    return text


@dataclass(frozen=True, slots=True)
class _UserDataRun:
    """Consecutive user_data keys each read from one field of the same record (`customer.email`,
    `customer.phone`, ...): the parent is looked up once. `parent` is () for top-level fields;
    `paths` is set instead of `fields` for a key with several paths or a deeper one."""

    parent: tuple[str, ...]
    fields: tuple[tuple[str, str], ...] = ()
    paths: tuple[str, tuple[_Path, ...]] | None = None


def _user_data_runs(user_data: tuple[tuple[str, tuple[_Path, ...]], ...]) -> tuple[_UserDataRun, ...]:
    runs: list[_UserDataRun] = []
    for key, paths in user_data:
        if len(paths) != 1 or len(paths[0].keys) > 2:
            runs.append(_UserDataRun((), paths=(key, paths)))
            continue
        *parent, leaf = paths[0].keys
        last = runs[-1] if runs else None
        if last is not None and last.paths is None and last.parent == tuple(parent):
            runs[-1] = _UserDataRun(last.parent, (*last.fields, (key, leaf)))
        else:
            runs.append(_UserDataRun(tuple(parent), ((key, leaf),)))
    return tuple(runs)


def _raw_user_data(plan: _Plan, record: Mapping[str, Any]) -> dict[str, object]:
    """user_data key -> raw value (or list of values from several paths / array fields), in the
    mapping's key order."""
    raw: dict[str, object] = {}
    for run in plan.user_data_runs:
        if run.paths is not None:
            key, paths = run.paths
            values: list[object] = []
            for path in paths:
                value = path.get(record)
                if isinstance(value, list):
                    values.extend(v for v in value if v is not None)
                elif value is not None:
                    values.append(value)
            if values:
                raw[key] = values[0] if len(values) == 1 else values
            continue
        source = record.get(run.parent[0]) if run.parent else record
        if source is None:
            continue
        for key, leaf in run.fields:
            _put_raw(raw, key, source.get(leaf))
    return raw


def _custom_data(parts: _Parts, record: Mapping[str, Any]) -> dict[str, Any]:
    out, places = _custom_fields(parts, record, {})
    if parts.contents is not None:
        # Added after the conversion in _custom_fields: the entries are built JSON-ready.
        _add_contents(out, parts.contents, record, places)
    return out


def _custom_fields(
    parts: _Parts, record: Mapping[str, Any], converters: Mapping[str, Callable[[Any], Any] | None]
) -> tuple[dict[str, Any], int]:
    """custom_data without contents, and the currency's minor units. `converters`: per key, what
    turns a raw value of a lean-decoded record into the decoded one."""
    data: dict[str, Any] = {}
    for key, path in parts.custom_data.items():
        value = path.get(record)
        if value is None:
            continue
        convert = converters.get(key)
        if convert is not None:
            value = convert(value)
        if key == "content_ids":
            # Meta takes content_ids as a list of strings; one plan or SKU field becomes a 1-element list.
            value = [str(v) for v in (value if isinstance(value, list) else [value]) if v is not None]
        elif key == "currency" and isinstance(value, str):
            value = value.strip().upper()
        elif key in _TEXT_KEYS and isinstance(value, int | uuid.UUID):
            value = str(value)  # Meta types these as strings; an order number may be a long
        data[key] = value
    data.update(parts.constants)
    currency = data.get("currency")
    places = currency_minor_units(currency if isinstance(currency, str) else None)
    out: dict[str, Any] = {}
    for k, v in data.items():
        if k in _MONEY_KEYS:
            out[k] = _money(v, places)
        elif type(v) is str:
            out[k] = v
        else:
            out[k] = _json_value(v)
    return out, places


def _add_contents(data: dict[str, Any], spec: _Contents, record: Mapping[str, Any], places: int) -> None:
    contents: list[dict[str, Any]] = []
    count = 0
    for item in spec.array.get(record) or ():
        item_id = spec.id.get(item) if item is not None else None
        text_id = "" if item_id is None else str(item_id).strip()
        if not text_id:
            continue  # Meta needs an id per content; an item without one cannot be described
        entry: dict[str, Any] = {"id": text_id}
        quantity = spec.quantity.get(item) if spec.quantity else None
        if quantity is not None:
            entry["quantity"] = quantity
        price = spec.item_price.get(item) if spec.item_price else None
        if price is not None:
            entry["item_price"] = _money(price, places)
        category = spec.delivery_category.get(item) if spec.delivery_category else None
        if category is not None:
            entry["delivery_category"] = category
        contents.append(entry)
        count += quantity if isinstance(quantity, int) else 1
    if not contents:
        return
    data["contents"] = contents
    if spec.num_items:
        data["num_items"] = count
    if spec.content_type is not None:
        data["content_type"] = spec.content_type
