"""The one home of configuration: typed model, YAML loading, environment overrides, secrets.

`load_config()` reads a YAML file, applies `CAPI__SECTION__KEY=value` environment overrides,
validates everything with pydantic (unknown keys are errors), resolves secrets from environment
variables or mounted files, and loads the Avro schema files the topics name. Every problem is
reported at once as `<key path>: <reason>` in a `ConfigError`.

Secrets never appear in the file: the file names where a secret comes from (`*_env` holds the name
of an environment variable, `*_file` a path such as `/run/secrets/capi_token`), the resolved value
is held as a `pydantic.SecretStr` so it never prints, and a literal secret in the file is an error.

`AppConfig.consumer_properties()` / `producer_properties()` / `schema_registry_conf()` are the only
place where configuration becomes librdkafka or Schema Registry client settings.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import fastavro
import pycountry
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from consumer.canonical import CANONICAL_EVENT_TYPES, DEFAULT_EVENT_NAMES, DEFAULT_SEND_EVENT_TYPES
from consumer.normalize import HASHED_FIELDS, UNHASHED_FIELDS
from consumer.validate import ACTION_SOURCES

__all__ = [
    "ACTION_SOURCES",
    "CANONICAL_EVENT_TYPES",
    "DEFAULT_EVENT_NAMES",
    "DEFAULT_SEND_EVENT_TYPES",
    "ENV_PREFIX",
    "USER_DATA_KEYS",
    "AppConfig",
    "BatchingConfig",
    "CapiConfig",
    "ConfigError",
    "ContentsSpec",
    "DestinationConfig",
    "DlqConfig",
    "EventNameSpec",
    "EventTimeSpec",
    "FilterSpec",
    "KafkaConfig",
    "LimitedDataUseSpec",
    "LimitsConfig",
    "MappingSpec",
    "MetricsConfig",
    "NormalizationConfig",
    "RecordTypeOverride",
    "SchemaRegistryConfig",
    "SecretRef",
    "ShutdownConfig",
    "TopicConfig",
    "load_config",
]

ENV_PREFIX = "CAPI__"
"""Environment variables starting with this override file keys; `__` separates nesting levels."""

LibrdkafkaValue = str | int | float | bool


def _check_action_source(value: str) -> str:
    if value not in ACTION_SOURCES:
        raise ValueError(f"must be one of {', '.join(sorted(ACTION_SOURCES))}")
    return value


def _check_user_data_key(value: str) -> str:
    if value not in USER_DATA_KEYS:
        raise ValueError(f"unknown user_data key {value!r}; known: {', '.join(USER_DATA_KEYS)}")
    return value


# Meta's vocabulary has one home each: action sources in consumer.validate, user_data keys in
# consumer.normalize; the configuration only checks against them.
ActionSource = Annotated[str, AfterValidator(_check_action_source)]
USER_DATA_KEYS: tuple[str, ...] = HASHED_FIELDS + UNHASHED_FIELDS
UserDataKey = Annotated[str, AfterValidator(_check_user_data_key)]

TopicKind = Literal["order", "subscription", "custom"]

# librdkafka keys that the typed configuration owns; setting them in a passthrough map would make the
# typed key a lie (or break the at-least-once contract), so they are errors with a pointer.
_OWNED_KAFKA_KEYS: dict[str, str] = {
    "bootstrap.servers": "use kafka.bootstrap_servers",
    "group.id": "use kafka.group_id",
    "group.protocol": "use kafka.group_protocol",
    "partition.assignment.strategy": "set by kafka.group_protocol (classic = cooperative-sticky)",
    "enable.auto.commit": "always true: stored offsets are committed in the background",
    "queued.max.messages.kbytes": "use limits.queued_max_messages_kbytes",
    "enable.idempotence": "always true for the dead-letter producer",
    "acks": "always all for the dead-letter producer",
    "transactional.id": "the dead-letter producer is not transactional",
    "group.instance.id": "use kafka.static_membership (and kafka.instance_id_env)",
}
# librdkafka: with the default enable.auto.offset.store=true an offset is stored as soon as
# consume() returns the record, so the background commit can commit records that were never
# delivered; a crash then loses them. We store offsets ourselves after a record is settled.
_AUTO_OFFSET_STORE = "enable.auto.offset.store"
# Resetting to the end would silently skip every unread record of a new group or an expired offset.
_SAFE_OFFSET_RESETS = frozenset({"earliest", "smallest", "beginning", "error"})
_SECRET_KAFKA_KEYS = frozenset({"ssl.key.pem", "sasl.oauthbearer.config", "ssl_engine_callback_data"})
# Kafka and registry settings that name files; relative values resolve against the config directory.
_PATH_PROPERTY_SUFFIXES = (".location", ".keytab")

# Keys people try to write a literal secret under, with the key to use instead.
_LITERAL_SECRET_HINTS: dict[str, str] = {
    "access_token": "use access_token_env or access_token_file",
    "app_secret": "use app_secret_env or app_secret_file",
    "sasl_password": "use kafka.sasl_password_env or kafka.sasl_password_file",
    "password": "use an *_env or *_file key",
    "basic_auth": "use schema_registry.basic_auth_env or basic_auth_file",
    "basic.auth.user.info": "use schema_registry.basic_auth_env or basic_auth_file",
    "bearer_token": "use schema_registry.bearer_token_env or bearer_token_file",
    "bearer.auth.token": "use schema_registry.bearer_token_env or bearer_token_file",
}

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELD_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_TOPIC_NAME = re.compile(r"^[A-Za-z0-9._-]{1,249}$")
_DEST_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class _Problems(ValueError):
    """Validation problems located below the model being validated: (relative key path, reason).

    Raised from validators so that each problem is reported at its own key path (pydantic would put
    a plain ValueError at the model's path); `_format_validation_error` expands it.
    """

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self.items = items
        super().__init__("; ".join(f"{k}: {r}" if k else r for k, r in items))


class ConfigError(Exception):
    """The configuration cannot be used. `problems` holds one `<key path>: <reason>` per problem."""

    def __init__(self, problems: list[str], source: str | Path | None = None) -> None:
        self.problems = list(problems)
        where = f" ({source})" if source is not None else ""
        lines = "".join(f"\n  {p}" for p in self.problems)
        super().__init__(f"invalid configuration{where}:{lines}")


# --- reusable field types -------------------------------------------------------------------------


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    """Resolve a relative path against the config file's directory (passed as validation context)."""
    base = (info.context or {}).get("base_dir")
    if base is not None and not value.is_absolute():
        return (Path(base) / value).resolve()
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError("not a valid environment variable name")
    return value


def _check_field_path(value: str) -> str:
    if not _FIELD_PATH.match(value):
        raise ValueError("not a dotted field path (e.g. customer.email)")
    return value


def _check_scalar(value: Any) -> Any:
    if value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError("must be a string, number or boolean")
    return value


def _one_or_many(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


def _int_to_str(value: Any) -> Any:
    # YAML reads an unquoted pixel ID as an int; a pixel ID is an opaque digit string.
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]
EnvName = Annotated[str, AfterValidator(_check_env_name)]
FieldPath = Annotated[str, AfterValidator(_check_field_path)]

PARTNER_AGENT_MAX = 22
_PARTNER_AGENT = re.compile(r"^[A-Za-z0-9_.]+-[A-Za-z0-9_.]+-[A-Za-z0-9_.]+$")


def _check_partner_agent(value: str | None) -> str | None:
    """Meta: under 23 characters, at least two letters; documented shape `pl<PARTNER>-<PLATFORM_VERSION>-
    <APP_VERSION>` (Meta's own plugins send `<platform>-<platform version>-<plugin version>`)."""
    if value is None:
        return None
    if len(value) > PARTNER_AGENT_MAX:
        raise ValueError(f"at most {PARTNER_AGENT_MAX} characters (Meta: under 23), got {len(value)}")
    if sum(c.isalpha() for c in value) < 2:
        raise ValueError("needs at least two letters")
    if not _PARTNER_AGENT.match(value):
        raise ValueError("expected pl<PARTNER>-<PLATFORM_VERSION>-<APP_VERSION>, e.g. plshopbuilder-3.2-1.4")
    return value


PartnerAgent = Annotated[str, AfterValidator(_check_partner_agent)]
Scalar = Annotated[Any, AfterValidator(_check_scalar)]
PositiveFloat = Annotated[float, Field(gt=0)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exactly_one(model: BaseModel, *names: str, required: bool = True) -> None:
    given = [n for n in names if getattr(model, n) is not None]
    if len(given) > 1 or (required and not given):
        raise ValueError(f"set exactly one of {' or '.join(names)}")


def _read_secret(env_name: str | None, file: Path | None, key: str, env: Mapping[str, str]) -> SecretStr:
    """Read a secret from the environment variable or file a config key names; ValueError names both."""
    if env_name is not None:
        value = env.get(env_name)
        if value is None:
            raise ValueError(f"{key}_env: environment variable {env_name} is not set")
        if not value.strip():
            raise ValueError(f"{key}_env: environment variable {env_name} is empty")
        return SecretStr(value.strip())
    if file is not None:
        try:
            # Mounted secrets usually end with a newline; no token contains surrounding whitespace.
            text = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"{key}_file: cannot read {file}: {exc.strerror or exc}") from None
        if not text:
            raise ValueError(f"{key}_file: {file} is empty")
        return SecretStr(text)
    raise ValueError(f"{key}: no secret source configured")


# --- kafka ------------------------------------------------------------------------------------------


class SecretRef(_Model):
    """Where one secret librdkafka property comes from: an environment variable or a file."""

    env: EnvName | None = None
    file: ConfigPath | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        _exactly_one(self, "env", "file")
        return self


def _check_librdkafka_map(props: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
    problems: list[tuple[str, str]] = []
    out: dict[str, Any] = {}
    for key, value in props.items():
        lowered = key.lower()
        if not isinstance(value, str | int | float | bool):
            problems.append((key, "must be a string, number or boolean"))
        elif lowered in _OWNED_KAFKA_KEYS:
            problems.append((key, f"cannot be set here: {_OWNED_KAFKA_KEYS[lowered]}"))
        elif lowered == _AUTO_OFFSET_STORE and str(value).lower() not in ("false", "0"):
            reason = "true is refused: offsets are stored only once a record is delivered or dead-lettered"
            problems.append((key, reason))
        elif lowered == "auto.offset.reset" and str(value).lower() not in _SAFE_OFFSET_RESETS:
            problems.append(
                (key, f"{value} is refused: it would skip unread records (use earliest or error)")
            )
        elif "password" in lowered or "secret" in lowered or lowered in _SECRET_KAFKA_KEYS:
            reason = "literal secrets are not allowed in the config file; use kafka.sasl_password_env/_file "
            problems.append((key, reason + "or kafka.secret_properties"))
        else:
            if isinstance(value, str) and lowered.endswith(_PATH_PROPERTY_SUFFIXES) and value != "probe":
                value = str(_resolve_path(Path(value), info))
            out[key] = value
    if problems:
        raise _Problems(problems)
    return out


class KafkaConfig(_Model):
    """Kafka connection and consumer group. `properties` applies to the consumer and the DLQ producer."""

    bootstrap_servers: Annotated[str, Field(min_length=1)]
    group_id: Annotated[str, Field(min_length=1)] = "capi-consumer"
    group_protocol: Literal["classic", "consumer"] = "classic"
    properties: dict[str, Any] = Field(default_factory=dict)
    consumer_properties: dict[str, Any] = Field(default_factory=dict)
    producer_properties: dict[str, Any] = Field(default_factory=dict)
    sasl_password_env: EnvName | None = None
    sasl_password_file: ConfigPath | None = None
    secret_properties: dict[str, SecretRef] = Field(default_factory=dict)
    static_membership: bool = False
    """Join as a static member (`group.instance.id` = the value of `instance_id_env`, the pod name):
    a member restarted within the session timeout gets its partitions back without a rebalance."""
    instance_id_env: EnvName = "POD_NAME"

    _sasl_password: SecretStr | None = PrivateAttr(default=None)
    _instance_id: str | None = PrivateAttr(default=None)
    _secret_values: dict[str, SecretStr] = PrivateAttr(default_factory=dict)

    @field_validator("properties", "consumer_properties", "producer_properties")
    @classmethod
    def _check_maps(cls, props: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        return _check_librdkafka_map(props, info)

    @model_validator(mode="after")
    def _check_secrets(self) -> Self:
        _exactly_one(self, "sasl_password_env", "sasl_password_file", required=False)
        problems = []
        for key in self.secret_properties:
            if key.lower() == "sasl.password":
                problems.append((f"secret_properties.{key}", "use sasl_password_env or sasl_password_file"))
            if key in self.properties or key in self.consumer_properties or key in self.producer_properties:
                problems.append((f"secret_properties.{key}", "also set as a literal property"))
        if problems:
            raise _Problems(problems)
        return self

    @property
    def instance_id(self) -> str | None:
        """`group.instance.id` of a static member (None when not static or not resolved)."""
        return self._instance_id

    @property
    def sasl_password(self) -> SecretStr | None:
        """The resolved SASL password (None when not configured or secrets were not resolved)."""
        return self._sasl_password

    def resolve_secrets(self, env: Mapping[str, str]) -> list[str]:
        """Read the SASL password, secret properties and the static member id; returns problems as
        `<key path>: <reason>`."""
        problems: list[str] = []
        if self.static_membership:
            self._instance_id = env.get(self.instance_id_env, "").strip() or None
            if self._instance_id is None:
                problems.append(
                    f"kafka.static_membership: environment variable {self.instance_id_env} is not set "
                    "(the member's stable id, e.g. the pod name from the downward API)"
                )
        if self.sasl_password_env is not None or self.sasl_password_file is not None:
            try:
                self._sasl_password = _read_secret(
                    self.sasl_password_env, self.sasl_password_file, "sasl_password", env
                )
            except ValueError as exc:
                problems.append(f"kafka.{exc}")
        values: dict[str, SecretStr] = {}
        for key, ref in self.secret_properties.items():
            try:
                values[key] = _read_secret(ref.env, ref.file, "", env)
            except ValueError as exc:
                problems.append(f"kafka.secret_properties.{key}.{str(exc).lstrip('_')}")
        self._secret_values = values
        return problems

    def _secret_properties(self) -> dict[str, LibrdkafkaValue]:
        out: dict[str, LibrdkafkaValue] = {k: v.get_secret_value() for k, v in self._secret_values.items()}
        if self._sasl_password is not None:
            out["sasl.password"] = self._sasl_password.get_secret_value()
        return out


# --- schema registry --------------------------------------------------------------------------------


def _check_registry_url(value: str | None) -> str | None:
    if value is None:
        return None
    for url in value.split(","):
        url = url.strip()
        if not re.match(r"^https?://[^/\s]+", url):
            raise ValueError("must be an http:// or https:// URL (several may be separated by commas)")
        if "@" in url.split("/")[2]:
            raise ValueError(
                "credentials in the URL are a literal secret; use basic_auth_env or basic_auth_file"
            )
    return value


REGISTRY_REQUEST_TIMEOUT_S = 10
"""Default `schema_registry.properties.timeout`: seconds one registry request may take."""


class SchemaRegistryConfig(_Model):
    """Confluent-API-compatible Schema Registry; optional when every topic has a `writer_schema`."""

    url: Annotated[str | None, AfterValidator(_check_registry_url)] = None
    basic_auth_env: EnvName | None = None
    basic_auth_file: ConfigPath | None = None
    bearer_token_env: EnvName | None = None
    bearer_token_file: ConfigPath | None = None
    bearer_logical_cluster: str | None = None
    bearer_identity_pool_id: str | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    _basic_auth: SecretStr | None = PrivateAttr(default=None)
    _bearer_token: SecretStr | None = PrivateAttr(default=None)

    @field_validator("properties")
    @classmethod
    def _check_properties(cls, props: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        problems: list[tuple[str, str]] = []
        out: dict[str, Any] = {}
        for key, value in props.items():
            lowered = key.lower()
            if lowered == "url":
                problems.append((key, "cannot be set here: use schema_registry.url"))
            elif lowered.startswith(("basic.auth.", "bearer.auth.")) or "password" in lowered:
                reason = "literal secrets are not allowed in the config file; use schema_registry."
                problems.append((key, reason + "basic_auth_env/_file or bearer_token_env/_file"))
            elif isinstance(value, str) and lowered.endswith(_PATH_PROPERTY_SUFFIXES):
                out[key] = str(_resolve_path(Path(value), info))
            else:
                out[key] = value
        if problems:
            raise _Problems(problems)
        return out

    @model_validator(mode="after")
    def _check_auth(self) -> Self:
        _exactly_one(
            self, "basic_auth_env", "basic_auth_file", "bearer_token_env", "bearer_token_file", required=False
        )
        bearer = self.bearer_token_env is not None or self.bearer_token_file is not None
        if bearer and not self.bearer_logical_cluster:
            raise _Problems(
                [("bearer_logical_cluster", "required with a bearer token (registry client rule)")]
            )
        return self

    def resolve_secrets(self, env: Mapping[str, str]) -> list[str]:
        """Read basic-auth credentials or the bearer token; returns problems as `<key path>: <reason>`."""
        try:
            if self.basic_auth_env is not None or self.basic_auth_file is not None:
                auth = _read_secret(self.basic_auth_env, self.basic_auth_file, "basic_auth", env)
                if ":" not in auth.get_secret_value():
                    return ["schema_registry.basic_auth: the secret must have the form user:password"]
                self._basic_auth = auth
            if self.bearer_token_env is not None or self.bearer_token_file is not None:
                self._bearer_token = _read_secret(
                    self.bearer_token_env, self.bearer_token_file, "bearer_token", env
                )
        except ValueError as exc:
            return [f"schema_registry.{exc}"]
        return []


# --- topics and mappings ----------------------------------------------------------------------------


class EventNameSpec(_Model):
    """`event_name` of a custom mapping: a constant, or a field (string or enum) with an optional value map.

    With `values`, only the listed field values are sent (as the mapped names); records with other
    values are filtered with reason `event_type_not_sent`. Without it the field value is the name.
    A plain string in YAML is shorthand for `{constant: ...}`.
    """

    constant: Annotated[str, Field(min_length=1)] | None = None
    field: FieldPath | None = None
    values: dict[str, Annotated[str, Field(min_length=1)]] | None = None

    @model_validator(mode="after")
    def _check(self) -> Self:
        _exactly_one(self, "constant", "field")
        if self.values is not None and self.field is None:
            raise _Problems([("values", "needs field (a constant name has no values to map)")])
        return self


class EventTimeSpec(_Model):
    """`event_time` source. `unit` says how to read the field.

    `auto`: the field has Avro logical type timestamp-millis or timestamp-micros (the recommended
    choice). `seconds` / `millis` / `micros`: a plain int/long since the Unix epoch. `iso8601`: a string
    with a UTC offset, e.g. `2026-01-31T12:00:00Z`. A plain string in YAML is shorthand for `{field: ...}`.
    """

    field: FieldPath
    unit: Literal["auto", "seconds", "millis", "micros", "iso8601"] = "auto"


class ContentsSpec(_Model):
    """`custom_data.contents` from an array of records; item paths are relative to one item."""

    field: FieldPath
    id: FieldPath
    quantity: FieldPath | None = None
    item_price: FieldPath | None = None
    delivery_category: FieldPath | None = None
    num_items: bool = True
    """Also set `custom_data.num_items`: the sum of quantities (the number of items without quantity)."""
    content_type: Literal["product", "product_group"] | None = "product"
    """`custom_data.content_type` sent with non-empty contents (Meta uses it for catalog matching)."""


class LimitedDataUseSpec(_Model):
    """Limited Data Use: when the boolean `field` is true, send `data_processing_options: ["LDU"]`.

    `country`/`state` name int fields with Meta's codes (1 = USA, 1000 = California); when absent or
    null, 0 is sent, which tells Meta to geolocate from the IP address.
    """

    field: FieldPath
    country: FieldPath | None = None
    state: FieldPath | None = None


class FilterSpec(_Model):
    """Send a record only if `field` satisfies the one operator given (records failing it are filtered).

    Operators: `equals`, `not_equals`, `in`, `not_in`. Values compare with the decoded field value
    (enum symbols and strings as text, ints, booleans); `equals: null` keeps records where it is null.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    field: FieldPath
    equals: Scalar = None
    not_equals: Scalar = None
    in_: list[Scalar] | None = Field(default=None, alias="in")
    not_in: list[Scalar] | None = None

    @model_validator(mode="after")
    def _one_operator(self) -> Self:
        ops = self.model_fields_set & {"equals", "not_equals", "in_", "not_in"}
        if len(ops) != 1:
            raise ValueError("set exactly one of equals, not_equals, in, not_in")
        return self

    @property
    def operator(self) -> str:
        """The operator's name as written in YAML."""
        (op,) = self.model_fields_set & {"equals", "not_equals", "in_", "not_in"}
        return "in" if op == "in_" else op


def _check_custom_data_keys(value: dict[str, Any]) -> dict[str, Any]:
    for key in ("contents", "num_items", "content_type"):
        if key in value:
            raise _Problems([(key, "set by mapping.contents, not here")])
    return value


CustomDataPaths = Annotated[dict[str, FieldPath], AfterValidator(_check_custom_data_keys)]
CustomDataConstants = Annotated[dict[str, Scalar], AfterValidator(_check_custom_data_keys)]


class RecordTypeOverride(_Model):
    """Per record type (a value of `event_name.field`): replaces these parts of the base mapping.

    `custom_data` and `custom_data_constants` are merged over the base ones; the rest replace.
    """

    event_id: FieldPath | None = None
    event_source_url: FieldPath | None = None
    action_source: ActionSource | None = None
    custom_data: CustomDataPaths = Field(default_factory=dict)
    custom_data_constants: CustomDataConstants = Field(default_factory=dict)
    contents: ContentsSpec | None = None


def _shorthand(key: str) -> Any:
    def convert(value: Any) -> Any:
        return {key: value} if isinstance(value, str) else value

    return BeforeValidator(convert)


class MappingSpec(_Model):
    """How a record of a company schema becomes a server event. Every path is checked at start-up
    against the topic's reader schema (nested records and unions with null are followed).
    """

    event_name: Annotated[EventNameSpec, _shorthand("constant")]
    event_id: FieldPath
    event_time: Annotated[EventTimeSpec, _shorthand("field")]
    action_source: ActionSource = "system_generated"
    event_source_url: FieldPath | None = None
    user_data: dict[UserDataKey, Annotated[list[FieldPath], BeforeValidator(_one_or_many)]] = Field(
        default_factory=dict
    )
    custom_data: CustomDataPaths = Field(default_factory=dict)
    custom_data_constants: CustomDataConstants = Field(default_factory=dict)
    contents: ContentsSpec | None = None
    opt_out: FieldPath | None = None
    limited_data_use: LimitedDataUseSpec | None = None
    filters: list[FilterSpec] = Field(default_factory=list)
    record_types: dict[str, RecordTypeOverride] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.record_types and self.event_name.field is None:
            raise _Problems([("record_types", "needs event_name.field (the record type is its value)")])
        both = set(self.custom_data) & set(self.custom_data_constants)
        if both:
            raise _Problems([(f"custom_data_constants.{k}", "also set in custom_data") for k in sorted(both)])
        return self


class TopicConfig(_Model):
    """A source topic: its schema, how its records map to server events, and where they go."""

    kind: TopicKind
    reader_schema: ConfigPath
    writer_schema: ConfigPath | None = None
    destination: Annotated[str, Field(min_length=1)] | None = None
    """A fixed destination for every event of the topic (exclusive with `tenant_field`)."""
    tenant_field: FieldPath | None = None
    """Platform mode: the record field holding the tenant id; each event goes to its tenant's pixel."""
    dlq_topic: Annotated[str, Field(pattern=_TOPIC_NAME.pattern)]
    parked_topic: Annotated[str, Field(pattern=_TOPIC_NAME.pattern)]
    """Platform mode: where the events of a tenant Meta refuses wait (`<topic>.parked` by default)."""
    send_event_types: list[str] | None = None
    event_names: dict[str, Annotated[str, Field(min_length=1)]] = Field(default_factory=dict)
    mapping: MappingSpec | None = None

    @model_validator(mode="after")
    def _check_kind(self) -> Self:
        if (self.destination is None) == (self.tenant_field is None):
            raise _Problems([("destination", "set exactly one of destination and tenant_field")])
        if self.kind == "custom":
            if self.mapping is None:
                raise _Problems([("mapping", "field required for kind custom")])
            if self.send_event_types is not None or self.event_names:
                key = "send_event_types" if self.send_event_types is not None else "event_names"
                raise _Problems([(key, "only for kind order/subscription; use mapping.event_name.values")])
            return self
        if self.mapping is not None:
            reason = f"only for kind custom (kind {self.kind} uses the built-in mapping; tune it with "
            raise _Problems([("mapping", reason + "send_event_types and event_names)")])
        known = CANONICAL_EVENT_TYPES[self.kind]
        problems = [
            (key, f"unknown {self.kind} event type '{t}' (known: {', '.join(known)})")
            for key, types in (
                ("send_event_types", self.send_event_types or []),
                ("event_names", self.event_names),
            )
            for t in types
            if t not in known
        ]
        if problems:
            raise _Problems(problems)
        return self

    def effective_send_event_types(self) -> tuple[str, ...]:
        """Canonical kinds: the event types that are sent (configured or the kind's default)."""
        if self.send_event_types is not None:
            return tuple(self.send_event_types)
        return DEFAULT_SEND_EVENT_TYPES.get(self.kind, ())

    def effective_event_names(self) -> dict[str, str]:
        """Canonical kinds: event type -> CAPI event_name, defaults overridden by `event_names`."""
        return {**DEFAULT_EVENT_NAMES.get(self.kind, {}), **self.event_names}


# --- destinations and the rest ----------------------------------------------------------------------


class DestinationConfig(_Model):
    """A Meta pixel (or dataset) and the credentials to send to it."""

    pixel_id: Annotated[str, BeforeValidator(_int_to_str), Field(pattern=r"^[0-9]{1,32}$")]
    access_token_env: EnvName | None = None
    access_token_file: ConfigPath | None = None
    app_secret_env: EnvName | None = None
    app_secret_file: ConfigPath | None = None
    test_event_code: Annotated[str, Field(min_length=1)] | None = None
    partner_agent: PartnerAgent | None = None

    _access_token: SecretStr | None = PrivateAttr(default=None)
    _app_secret: SecretStr | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_sources(self) -> Self:
        _exactly_one(self, "access_token_env", "access_token_file")
        _exactly_one(self, "app_secret_env", "app_secret_file", required=False)
        return self

    @property
    def access_token(self) -> SecretStr | None:
        """The resolved access token (None only when loaded with `resolve_secrets=False`)."""
        return self._access_token

    @property
    def app_secret(self) -> SecretStr | None:
        """The resolved app secret for `appsecret_proof`, or None when not configured."""
        return self._app_secret

    def resolve_secrets(self, name: str, env: Mapping[str, str]) -> list[str]:
        """Read the token (and app secret); returns problems as `<key path>: <reason>`."""
        problems: list[str] = []
        try:
            self._access_token = _read_secret(
                self.access_token_env, self.access_token_file, "access_token", env
            )
        except ValueError as exc:
            problems.append(f"destinations.{name}.{exc}")
        if self.app_secret_env is not None or self.app_secret_file is not None:
            try:
                self._app_secret = _read_secret(self.app_secret_env, self.app_secret_file, "app_secret", env)
            except ValueError as exc:
                problems.append(f"destinations.{name}.{exc}")
        return problems


DEFAULT_INITIAL_CONCURRENCY = 8


class ConcurrencyConfig(_Model):
    """Requests in flight per destination, adapted to Meta's latency and throttling (AIMD:
    consumer.concurrency). `capi.max_requests_in_flight` caps them all together."""

    adaptive: bool = True
    """False: each destination may have `max` requests in flight, fixed."""
    min: Annotated[int, Field(ge=1)] = 1
    max: Annotated[int, Field(ge=1)] | None = None
    """Per destination; None: `capi.max_requests_in_flight`."""
    initial: Annotated[int, Field(ge=1)] | None = None
    """Where a destination starts; None: 8, or `max` when that is lower."""
    latency_tolerance: Annotated[float, Field(gt=1)] = 2.0
    """A window of answers whose median latency exceeds this multiple of the baseline is a spike..."""
    latency_spike_floor_s: Annotated[float, Field(ge=0)] = 0.5
    """... if that average also exceeds this (faster answers are always normal)."""
    decrease_factor: Annotated[float, Field(gt=0, lt=1)] = 0.5
    """The limit is multiplied by this on throttling, timeouts and latency spikes."""


class CapiConfig(_Model):
    """The Graph API endpoint and HTTP client behaviour."""

    base_url: Annotated[str, Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")] = "https://graph.facebook.com"
    api_version: Annotated[str, Field(pattern=r"^v[0-9]+\.[0-9]+$")] = "v26.0"
    timeout_s: PositiveFloat = 5.0
    max_requests_in_flight: Annotated[int, Field(ge=1)] = 64
    """Requests in flight over all destinations (and the HTTP connection pool's size)."""
    concurrency: ConcurrencyConfig = Field(default_factory=ConcurrencyConfig)
    retry_initial_backoff_s: PositiveFloat = 0.5
    retry_max_backoff_s: PositiveFloat = 60.0
    parked_retry_initial_backoff_s: PositiveFloat = 5.0
    """First wait before probing a parked destination again (bad token, permissions, unknown pixel)."""
    parked_retry_max_backoff_s: PositiveFloat = 300.0

    @model_validator(mode="after")
    def _concurrency_bounds(self) -> Self:
        c = self.concurrency
        cap = self.max_requests_in_flight
        problems: list[tuple[str, str]] = []
        if c.max is not None and c.max > cap:
            problems.append(("concurrency.max", f"{c.max} is above capi.max_requests_in_flight ({cap})"))
        top = min(c.max or cap, cap)
        if c.min > top:
            problems.append(("concurrency.min", f"{c.min} is above the per-destination maximum ({top})"))
        if c.initial is not None and not c.min <= c.initial <= top:
            reason = f"{c.initial} is not between min ({c.min}) and max ({top})"
            problems.append(("concurrency.initial", reason))
        if problems:
            raise _Problems(problems)
        return self

    @property
    def concurrency_bounds(self) -> tuple[int, int, int]:
        """(min, initial, max) requests in flight per destination, defaults resolved."""
        c = self.concurrency
        top = c.max or self.max_requests_in_flight
        initial = c.initial if c.initial is not None else max(c.min, min(DEFAULT_INITIAL_CONCURRENCY, top))
        return c.min, initial, top


class BatchingConfig(_Model):
    """Per-destination batches: sent when full (events or bytes) or `linger_ms` after the first event."""

    max_events: Annotated[int, Field(ge=1, le=1000)] = 1000
    max_bytes: Annotated[int, Field(ge=1024)] = 2_000_000
    linger_ms: Annotated[int, Field(ge=0)] = 200


class LimitsConfig(_Model):
    """Memory bounds: partitions are paused while in-flight records exceed either cap."""

    # 40,000: room for the open batches of many tenants while catching up (platform mode), about 3.5 KB
    # of RSS each; a single destination keeps far fewer in flight (docs/performance.md).
    max_in_flight_events: Annotated[int, Field(ge=1)] = 40_000
    max_in_flight_bytes: Annotated[int, Field(ge=1)] = 64 * 1024 * 1024
    queued_max_messages_kbytes: Annotated[int, Field(ge=1)] = 16_384


def _check_region(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) != 2 or pycountry.countries.get(alpha_2=value.upper()) is None:
        raise ValueError("must be an ISO 3166-1 alpha-2 country code, e.g. US")
    return value.upper()


class NormalizationConfig(_Model):
    """Customer-information normalization (see the Normalizer)."""

    default_phone_region: Annotated[str | None, AfterValidator(_check_region)] = None
    hash_external_id: bool = True
    cache_size: Annotated[int, Field(ge=0)] = 65536


class DlqConfig(_Model):
    """Dead-letter behaviour. The guard stops the consumer (exit 1, nothing committed past the record)
    when more than `max_ratio` of the records settled in the last `window_s` seconds (at least
    `min_events` of them) would go to the dead-letter topics: a bad deploy must not drain a topic."""

    max_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    window_s: PositiveFloat = 60.0
    min_events: Annotated[int, Field(ge=1)] = 100
    write_timeout_s: PositiveFloat = 120.0
    """How long Kafka may take to acknowledge a dead-letter copy before the consumer stops."""
    monitor_interval_s: PositiveFloat = 60.0
    """How often the age of the oldest record waiting in each dead-letter topic is measured."""
    parked_dead_letter_after_s: PositiveFloat | None = None
    """Dead-letter the events of a parked destination after this long; None (default): never, they wait
    (unsettled, uncommitted) until the destination recovers."""


class ShutdownConfig(_Model):
    """Graceful shutdown on SIGTERM/SIGINT."""

    drain_deadline_s: PositiveFloat = 30.0


class MetricsConfig(_Model):
    """Prometheus metrics HTTP endpoint."""

    enabled: bool = True
    host: Annotated[str, Field(min_length=1)] = "0.0.0.0"
    port: Annotated[int, Field(ge=0, le=65535)] = 9108


class TenantSourcesConfig(_Model):
    """Where the tenant registry comes from (either or both; a topic entry overrides a file entry)."""

    file: ConfigPath | None = None
    """A YAML/JSON file, or a directory of them (a mounted ConfigMap): tenant id -> entry."""
    topic: Annotated[str, Field(pattern=_TOPIC_NAME.pattern)] | None = None
    """A compacted topic: key = tenant id, value = JSON entry, empty value = removal."""
    load_timeout_s: PositiveFloat = 60.0
    """How long start-up may take to read the registry topic to its end."""

    @model_validator(mode="after")
    def _one_at_least(self) -> Self:
        if self.file is None and self.topic is None:
            raise _Problems([("file", "set file and/or topic")])
        return self


class PlatformConfig(_Model):
    """Platform mode: events sent on behalf of many clients (tenants), one pixel and token each."""

    partner_agent: PartnerAgent | None = None
    """Sent with every request (destinations may set their own)."""
    tenants: TenantSourcesConfig | None = None
    secrets_dir: ConfigPath | None = None
    """Token files, one per tenant, named after the tenant unless its entry says `token_file`."""
    reload_interval_s: PositiveFloat = 5.0
    """How often the tenants file, the token files and the registry topic are looked at again."""
    unknown_tenant: Literal["dead_letter", "filter"] = "dead_letter"
    """An event for a tenant the registry does not know: dead-letter it (reason unknown_tenant, so
    replay can send it once the tenant exists) or filter it (counted, not sent)."""
    status_tenants: list[str] = Field(default_factory=list)
    """Tenants with their own metric series (the others are counted by state only)."""
    batch_linger_ms: Annotated[int, Field(ge=0)] = 1000
    """How long a tenant's batch waits to fill (most tenants are small: a longer linger than
    `batching.linger_ms` makes fewer, fuller requests; Meta asks for events within the hour)."""
    catch_up_linger_ms: Annotated[int, Field(ge=0)] = 5000
    """The same while the consumer reads a backlog (full polls, until polls are small again): the
    events are late already, and fuller requests make the catch-up faster."""
    probe_initial_backoff_s: PositiveFloat = 30.0
    """A parked tenant's events go out again (as a probe) after this long, doubling while refused."""
    probe_max_backoff_s: PositiveFloat = 1800.0
    parked_pass_interval_s: PositiveFloat = 60.0
    """How often the parked topics are read through even when no probe is due here (another member
    of the group may have seen a tenant recover)."""


TENANT_PREFIX = "tenant:"
"""A tenant's destination is named `tenant:<id>` (fixed destinations keep their configured names)."""
DLQ_SUFFIX = ".dlq"
"""A source topic's dead-letter topic is `<topic>.dlq` unless `topics.<t>.dlq_topic` names another."""
PARKED_SUFFIX = ".parked"
"""Platform mode: a source topic's parked topic is `<topic>.parked` unless `topics.<t>.parked_topic` says."""
REPLAY_GROUP_SUFFIX = "-replay"
"""`capi-consumer replay` commits its progress as consumer group `<kafka.group_id>-replay`."""


def _default_dlq_topics(data: Any) -> Any:
    """Fill `topics.<t>.dlq_topic` with `<t>.dlq` where it is not set (it depends on the key)."""
    if isinstance(data, dict) and isinstance(data.get("topics"), dict):
        topics = {}
        for name, topic in data["topics"].items():
            if isinstance(topic, dict) and topic.get("dlq_topic") is None:
                topic = {**topic, "dlq_topic": name + DLQ_SUFFIX}
            if isinstance(topic, dict) and topic.get("parked_topic") is None:
                topic = {**topic, "parked_topic": name + PARKED_SUFFIX}
            topics[name] = topic
        data = {**data, "topics": topics}
    return data


class AppConfig(_Model):
    """The whole configuration. Build it with `load_config()`."""

    kafka: KafkaConfig
    schema_registry: SchemaRegistryConfig = Field(default_factory=SchemaRegistryConfig)
    topics: Annotated[dict[str, TopicConfig], Field(min_length=1)]
    destinations: dict[str, DestinationConfig] = Field(default_factory=dict, validate_default=True)
    capi: CapiConfig = Field(default_factory=CapiConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    normalization: NormalizationConfig = Field(default_factory=NormalizationConfig)
    dlq: DlqConfig = Field(default_factory=DlqConfig)
    platform: PlatformConfig = Field(default_factory=PlatformConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)

    _schemas: dict[Path, dict[str, Any]] = PrivateAttr(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _fill_dlq_topics(cls, data: Any) -> Any:
        return _default_dlq_topics(data)

    @field_validator("destinations")
    @classmethod
    def _some_destination(
        cls, value: dict[str, DestinationConfig], info: ValidationInfo
    ) -> dict[str, DestinationConfig]:
        topics = info.data.get("topics") or {}
        if not value and not any(t.tenant_field for t in topics.values()):
            raise ValueError("at least one destination (none needed when every topic has a tenant_field)")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Self:
        problems: list[tuple[str, str]] = []
        for name in self.topics:
            if not _TOPIC_NAME.match(name):
                problems.append((f"topics.{name}", "not a valid Kafka topic name"))
        for name in self.destinations:
            if not _DEST_NAME.match(name):
                problems.append((f"destinations.{name}", "names use letters, digits, '_' and '-'"))
        for name, topic in self.topics.items():
            if topic.destination is not None and topic.destination not in self.destinations:
                known = ", ".join(sorted(self.destinations)) or "none configured"
                reason = f"unknown destination '{topic.destination}' (known: {known})"
                problems.append((f"topics.{name}.destination", reason))
            if topic.tenant_field is not None and self.platform.tenants is None:
                reason = "needs platform.tenants (a tenants file or registry topic)"
                problems.append((f"topics.{name}.tenant_field", reason))
            if topic.dlq_topic in self.topics:
                problems.append((f"topics.{name}.dlq_topic", f"'{topic.dlq_topic}' is a source topic"))
            if topic.tenant_field is not None and topic.parked_topic in self.topics:
                reason = f"'{topic.parked_topic}' is a source topic"
                problems.append((f"topics.{name}.parked_topic", reason))
        registry_topics = sorted(n for n, t in self.topics.items() if t.writer_schema is None)
        if registry_topics and self.schema_registry.url is None:
            reason = f"required because topic(s) {', '.join(registry_topics)} have no writer_schema"
            problems.append(("schema_registry.url", reason + " (Confluent wire format)"))
        if self.limits.max_in_flight_events < self.batching.max_events:
            problems.append(("limits.max_in_flight_events", "must be at least batching.max_events"))
        if problems:
            raise _Problems(problems)
        return self

    @property
    def replay_group_id(self) -> str:
        """The consumer group of `capi-consumer replay` (and what the dead-letter monitor measures)."""
        return self.kafka.group_id + REPLAY_GROUP_SUFFIX

    @property
    def dlq_topics(self) -> list[str]:
        """Every configured dead-letter topic, sorted."""
        return sorted({t.dlq_topic for t in self.topics.values()})

    @property
    def parked_topics(self) -> dict[str, str]:
        """Platform mode: parked topic -> its source topic, for every topic routed by tenant."""
        return {t.parked_topic: name for name, t in self.topics.items() if t.tenant_field is not None}

    # -- derived client settings (the one place config becomes librdkafka / registry settings) --

    def consumer_properties(self) -> dict[str, LibrdkafkaValue]:
        """librdkafka settings of the source consumer, secrets included (never log the result)."""
        props: dict[str, LibrdkafkaValue] = {
            "auto.offset.reset": "earliest",
            **self.kafka.properties,
            **self.kafka.consumer_properties,
            **self.kafka._secret_properties(),
            "bootstrap.servers": self.kafka.bootstrap_servers,
            "group.id": self.kafka.group_id,
            # At-least-once per librdkafka's recipe: we store an offset only once the record is
            # settled; the background commit then commits stored offsets (and on revoke and close).
            "enable.auto.offset.store": False,
            "enable.auto.commit": True,
            "queued.max.messages.kbytes": self.limits.queued_max_messages_kbytes,
        }
        if self.kafka.instance_id is not None:
            props["group.instance.id"] = self.kafka.instance_id
        if self.kafka.group_protocol == "classic":
            # Incremental rebalances: a rebalance revokes only the partitions that move.
            props["partition.assignment.strategy"] = "cooperative-sticky"
        else:
            # KIP-848: assignment is done by the broker (>= 4.0); the client must not set a strategy.
            props["group.protocol"] = "consumer"
        return props

    def producer_properties(self) -> dict[str, LibrdkafkaValue]:
        """librdkafka settings of the dead-letter producer, secrets included (never log the result)."""
        return {
            **self.kafka.properties,
            **self.kafka.producer_properties,
            **self.kafka._secret_properties(),
            "bootstrap.servers": self.kafka.bootstrap_servers,
            # A DLQ copy counts as settled only when acknowledged by all in-sync replicas, once.
            "enable.idempotence": True,
            "acks": "all",
        }

    def schema_registry_conf(self) -> dict[str, Any] | None:
        """`SchemaRegistryClient` settings, secrets included; None when no registry is configured."""
        reg = self.schema_registry
        if reg.url is None:
            return None
        # The registry client waits forever for an answer unless told otherwise: a registry that accepts
        # a connection and never answers would hold records back without ever reporting it.
        conf: dict[str, Any] = {"timeout": REGISTRY_REQUEST_TIMEOUT_S, **reg.properties, "url": reg.url}
        if reg._basic_auth is not None:
            conf["basic.auth.credentials.source"] = "USER_INFO"
            conf["basic.auth.user.info"] = reg._basic_auth.get_secret_value()
        if reg._bearer_token is not None:
            conf["bearer.auth.credentials.source"] = "STATIC_TOKEN"
            conf["bearer.auth.token"] = reg._bearer_token.get_secret_value()
            conf["bearer.auth.logical.cluster"] = reg.bearer_logical_cluster
            if reg.bearer_identity_pool_id is not None:
                conf["bearer.auth.identity.pool.id"] = reg.bearer_identity_pool_id
        return conf

    # -- schemas --

    def reader_schema(self, topic: str) -> dict[str, Any]:
        """The parsed JSON of the topic's reader schema file (loaded by `load_config`)."""
        return self._schema(self.topics[topic].reader_schema)

    def writer_schema(self, topic: str) -> dict[str, Any] | None:
        """The topic's writer schema (schemaless mode), or None when records use the registry."""
        path = self.topics[topic].writer_schema
        return None if path is None else self._schema(path)

    def reader_schemas(self) -> dict[str, dict[str, Any]]:
        """Topic name -> reader schema, for the Mapper."""
        return {name: self.reader_schema(name) for name in self.topics}

    def _schema(self, path: Path) -> dict[str, Any]:
        if path not in self._schemas:
            self._schemas[path] = _load_schema_file(path)
        return self._schemas[path]

    def load_schemas(self) -> list[str]:
        """Load and check every schema file; returns problems as `<key path>: <reason>`."""
        problems: list[str] = []
        for name, topic in self.topics.items():
            for key in ("reader_schema", "writer_schema"):
                path = getattr(topic, key)
                if path is None:
                    continue
                try:
                    self._schema(path)
                except ValueError as exc:
                    problems.append(f"topics.{name}.{key}: {exc}")
        return problems

    def resolve_secrets(self, env: Mapping[str, str]) -> list[str]:
        """Read every secret from the environment or files; returns problems as `<key path>: <reason>`."""
        problems = self.kafka.resolve_secrets(env) + self.schema_registry.resolve_secrets(env)
        for name, dest in self.destinations.items():
            problems += dest.resolve_secrets(name, env)
        return problems


def _load_schema_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None
    if not isinstance(schema, dict) or schema.get("type") != "record":
        raise ValueError(f"{path} must hold one Avro record schema")
    try:
        fastavro.parse_schema(schema)
    except Exception as exc:  # fastavro raises several unrelated exception types for bad schemas
        raise ValueError(f"{path} is not a valid Avro schema: {exc}") from None
    return schema


# --- loading -----------------------------------------------------------------------------------------


def _env_overrides(env: Mapping[str, str]) -> tuple[list[tuple[list[str], str, Any]], list[str]]:
    """Parse `CAPI__A__B=value` into (["a", "b"], name, value); JSON for lists/maps, "" for null."""
    overrides: list[tuple[list[str], str, Any]] = []
    problems: list[str] = []
    for name in sorted(env):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if not all(parts):
            problems.append(f"{name}: empty key segment in environment override")
            continue
        raw = env[name]
        value: Any = raw
        if raw.strip().startswith(("[", "{")):
            try:
                value = json.loads(raw)
            except json.JSONDecodeError as exc:
                problems.append(f"{'.'.join(parts)}: {name} is not valid JSON ({exc.msg})")
                continue
        elif raw == "":
            value = None
        overrides.append((parts, name, value))
    return overrides, problems


def _apply_overrides(data: dict[str, Any], overrides: list[tuple[list[str], str, Any]]) -> list[str]:
    problems: list[str] = []
    for parts, name, value in overrides:
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                problems.append(
                    f"{'.'.join(parts[: i + 1])}: {name} needs a section here, the file has a value"
                )
                break
            node = child
        else:
            node[parts[-1]] = value
    return problems


def _format_loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc)


def _format_validation_error(err: ValidationError, env_keys: Mapping[str, str]) -> list[str]:
    lines: list[str] = []
    for e in err.errors(include_url=False, include_input=False):
        # pydantic adds "[key]" to the location of a bad dict key; the key itself is the location.
        loc = _format_loc(tuple(p for p in e["loc"] if p != "[key]"))
        error = e.get("ctx", {}).get("error")
        if isinstance(error, _Problems):
            lines += [f"{'.'.join(p for p in (loc, key) if p)}: {reason}" for key, reason in error.items]
            continue
        if e["type"] == "missing":
            reason = "field required"
        elif e["type"] == "extra_forbidden":
            hint = _LITERAL_SECRET_HINTS.get(str(e["loc"][-1]))
            reason = f"literal secrets are not allowed in the config file; {hint}" if hint else "unknown key"
        else:
            msg = e["msg"]
            for prefix in ("Value error, ", "Assertion failed, "):
                msg = msg.removeprefix(prefix)
            reason = msg[:1].lower() + msg[1:]
        lines.append(f"{loc}: {reason}" if loc else reason)
    return [_with_env_source(line, env_keys) for line in lines]


def _with_env_source(line: str, env_keys: Mapping[str, str]) -> str:
    """Name the environment variable when a problem is at or below a key it set."""
    for path, name in env_keys.items():
        if line.startswith((path + ":", path + ".")):
            return f"{line} (from {name})"
    return line


def load_config(
    path: str | Path,
    env: Mapping[str, str] | None = None,
    *,
    resolve_secrets: bool = True,
) -> AppConfig:
    """Load, override, validate and resolve the configuration; raise ConfigError listing every problem.

    `env` defaults to `os.environ`; it supplies `CAPI__...` overrides and the secrets' variables.
    `resolve_secrets=False` skips reading secrets (the `map` dry run needs none); the `*_env`/`*_file`
    keys are still validated. Relative paths resolve against the directory of `path`.
    """
    path = Path(path)
    env = os.environ if env is None else env
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"cannot read {path}: {exc.strerror or exc}"], path) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], path) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(
            ["the file must hold a mapping of sections (kafka, topics, destinations, ...)"], path
        )

    overrides, problems = _env_overrides(env)
    problems += _apply_overrides(data, overrides)
    env_keys = {".".join(parts): name for parts, name, _ in overrides}
    if problems:
        raise ConfigError(problems, path)
    try:
        config = AppConfig.model_validate(data, context={"base_dir": path.resolve().parent})
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, env_keys), path) from None

    problems = config.load_schemas()
    if resolve_secrets:
        problems += config.resolve_secrets(env)
    if problems:
        raise ConfigError(problems, path)
    return config
