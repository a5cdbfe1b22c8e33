"""Platform mode: the tenant registry. Who the clients are, their pixel, where their token comes from.

A platform sends events on behalf of many clients ("tenants"), each with its own pixel and its own
system-user access token (../shared/seeds/002, 003). A topic names a tenant field instead of a fixed
destination; each event goes to its tenant's pixel with its tenant's token. The registry changes
without a restart, from two sources that may be used together:

- a file or a directory of files (YAML or JSON; e.g. a mounted ConfigMap), each a mapping of tenant id
  to entry, read again when a file changes;
- a compacted Kafka topic (key = tenant id, value = the JSON entry, an empty value = removal), read to
  its end before the first event is routed and followed afterwards, so every member of the group sees
  the same registry (the way Kafka Connect keeps its configurations). An entry in the topic takes
  precedence over the same tenant's entry in the file.

Tokens never sit in the registry: an entry references a secret, a file in the secrets directory (one
per tenant, named after the tenant unless `token_file` says otherwise; re-read when it changes) or an
environment variable (`token_env`, for small setups). An entry that carries a token itself is refused
and not used; every refused entry is reported (`TenantRegistry.invalid`), never fatal.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from consumer.config import TENANT_PREFIX

log = logging.getLogger(__name__)


# Keys that would put a token into the registry itself.
_PLAINTEXT_TOKEN_KEYS = frozenset({"access_token", "token", "accesstoken", "access-token", "secret"})
_TENANT_ID_MAX = 128


def destination_name(tenant_id: str) -> str:
    return TENANT_PREFIX + tenant_id


def tenant_of(destination: str) -> str | None:
    """The tenant id of a tenant destination name, None for a fixed destination."""
    return destination[len(TENANT_PREFIX) :] if destination.startswith(TENANT_PREFIX) else None


class TenantEntry(BaseModel):
    """One client: its pixel, where its token comes from, its test event code, enabled or not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pixel_id: str = Field(pattern=r"^[0-9]{1,32}$")
    token_file: str | None = Field(default=None, min_length=1)
    """File name in the secrets directory (default: the tenant id)."""
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    test_event_code: str | None = Field(default=None, min_length=1, max_length=64)
    enabled: bool = True

    @model_validator(mode="before")
    @classmethod
    def _refuse_plaintext_tokens(cls, data: Any) -> Any:
        if isinstance(data, dict):
            found = sorted(k for k in data if str(k).lower() in _PLAINTEXT_TOKEN_KEYS)
            if found:
                raise ValueError(
                    f"plaintext token refused ({', '.join(found)}): reference a secret with token_file "
                    "(a file in the secrets directory) or token_env"
                )
            if isinstance(data.get("pixel_id"), int):
                data = {**data, "pixel_id": str(data["pixel_id"])}
        return data

    @field_validator("token_file")
    @classmethod
    def _plain_name(cls, value: str | None) -> str | None:
        if value is not None and (value != Path(value).name or value.startswith(".")):
            raise ValueError("a file name inside the secrets directory, without '/' or a leading '.'")
        return value

    @model_validator(mode="after")
    def _one_token_source(self) -> TenantEntry:
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("token_file and token_env are exclusive")
        return self


class InvalidEntry(ValueError):
    """A registry entry that is refused; the message names the problem, never a secret."""


def check_tenant_id(tenant_id: str) -> None:
    if not tenant_id or len(tenant_id) > _TENANT_ID_MAX or not tenant_id.isprintable() or "/" in tenant_id:
        raise InvalidEntry(f"tenant id must be 1-{_TENANT_ID_MAX} printable characters without '/'")


def parse_entry(tenant_id: str, raw: Any) -> TenantEntry:
    """The entry of `tenant_id` from its decoded JSON/YAML value; InvalidEntry says why not."""
    check_tenant_id(tenant_id)
    if not isinstance(raw, dict):
        raise InvalidEntry("an entry is a mapping with pixel_id and token_file or token_env")
    try:
        return TenantEntry.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            # pydantic's messages quote the input for some errors: keep only ours and the key path.
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}" if where else message)
        raise InvalidEntry("; ".join(problems)) from None


@dataclass(frozen=True)
class Snapshot:
    """Entries of one source, the ones it refused (tenant id -> reason), and problems of the source
    itself (an unreadable file)."""

    entries: dict[str, TenantEntry]
    invalid: dict[str, str]
    problems: tuple[str, ...] = ()


def read_entries(document: Any, where: str) -> Snapshot:
    """A decoded tenants document: a mapping of tenant id to entry (or `{tenants: {...}}`)."""
    if isinstance(document, dict) and set(document) == {"tenants"}:
        document = document["tenants"]
    if document is None:
        return Snapshot({}, {})
    if not isinstance(document, dict):
        return Snapshot({}, {}, (f"{where}: a tenants file is a mapping of tenant id to entry",))
    entries: dict[str, TenantEntry] = {}
    invalid: dict[str, str] = {}
    for key, raw in document.items():
        tenant_id = str(key)
        try:
            entries[tenant_id] = parse_entry(tenant_id, raw)
        except InvalidEntry as exc:
            invalid[tenant_id] = f"{where}: {exc}"
    return Snapshot(entries, invalid)


def _tenant_files(path: Path) -> list[Path]:
    if path.is_dir():
        # A mounted ConfigMap holds `..data` and dot-directories beside the key files: skip them.
        return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file())
    return [path]


class FileTenantSource:
    """A tenants file or directory, read again when any file in it changes (name, size or mtime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: tuple[tuple[str, int, int], ...] | None = None

    def _current_signature(self) -> tuple[tuple[str, int, int], ...]:
        signature = []
        for file in _tenant_files(self.path):
            try:
                st = file.stat()
            except OSError:
                continue
            signature.append((file.name, st.st_mtime_ns, st.st_size))
        return tuple(signature)

    def poll(self) -> Snapshot | None:
        """The whole registry of the files when they changed since the last call, else None."""
        signature = self._current_signature()
        if signature == self._signature:
            return None
        self._signature = signature
        entries: dict[str, TenantEntry] = {}
        invalid: dict[str, str] = {}
        problems: list[str] = []
        if not self.path.exists():
            return Snapshot({}, {}, (f"{self.path}: tenants file or directory does not exist",))
        for file in _tenant_files(self.path):
            try:
                document = yaml.safe_load(file.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
                problems.append(f"{file.name}: unreadable ({type(exc).__name__})")
                continue
            snapshot = read_entries(document, file.name)
            problems += snapshot.problems
            for tenant_id, entry in snapshot.entries.items():
                if tenant_id in entries:
                    invalid[tenant_id] = f"{file.name}: tenant also defined in another file"
                else:
                    entries[tenant_id] = entry
            invalid.update(snapshot.invalid)
        for tenant_id in invalid:
            entries.pop(tenant_id, None)
        return Snapshot(entries, invalid, tuple(problems))


def decode_topic_entry(key: bytes | None, value: bytes | None) -> tuple[str, TenantEntry | None]:
    """(tenant id, entry or None for a tombstone) of a registry topic record; InvalidEntry if not."""
    if not key:
        raise InvalidEntry("registry record without a key (the key is the tenant id)")
    try:
        tenant_id = key.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidEntry("registry record key is not UTF-8") from None
    check_tenant_id(tenant_id)
    if not value:
        return tenant_id, None
    try:
        raw = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidEntry("registry record value is not JSON") from None
    return tenant_id, parse_entry(tenant_id, raw)


@dataclass(frozen=True)
class Token:
    """A resolved token (a secret: never log it) and the signature of where it was read from."""

    value: str
    signature: tuple[Any, ...]


class SecretStore:
    """Reads tenants' tokens: a file in `secrets_dir` (default name: the tenant id) or an env var."""

    def __init__(self, secrets_dir: Path | None, env: Mapping[str, str] | None = None) -> None:
        self.secrets_dir = secrets_dir
        self._env = env if env is not None else os.environ
        self._files: dict[str, tuple[tuple[int, int, int], Token]] = {}
        """File name -> (inode, size, mtime) and the token read then: a file is read again only
        when it changed (a refresh of thousands of tenants is then one stat each)."""

    def token(self, tenant_id: str, entry: TenantEntry) -> Token:
        """The tenant's token; InvalidEntry (naming the file or variable, never a value) if missing."""
        if entry.token_env is not None:
            value = self._env.get(entry.token_env, "").strip()
            if not value:
                raise InvalidEntry(f"token_env: environment variable {entry.token_env} is not set or empty")
            return Token(value, ("env", entry.token_env, hash(value)))
        if self.secrets_dir is None:
            raise InvalidEntry("no platform.secrets_dir configured for token files")
        name = entry.token_file or tenant_id
        path = self.secrets_dir / name
        try:
            st = path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            cached = self._files.get(name)
            if cached is not None and cached[0] == stamp:
                return cached[1]
            value = path.read_text(encoding="utf-8").strip()
        except OSError:
            raise InvalidEntry(f"token file {name} not found in the secrets directory") from None
        except UnicodeDecodeError:
            raise InvalidEntry(f"token file {name} is not UTF-8 text") from None
        if not value:
            raise InvalidEntry(f"token file {name} is empty")
        token = Token(value, ("file", name, *stamp, hash(value)))
        self._files[name] = (stamp, token)
        return token


Resolution = Literal["ok", "unknown", "invalid", "disabled"]


@dataclass(frozen=True)
class Resolved:
    """What the registry says of a tenant right now."""

    state: Resolution
    entry: TenantEntry | None = None
    token: Token | None = None
    problem: str | None = None
    """Why a tenant is invalid (an entry refused or its token unreadable); no secret in it."""


class TenantRegistry:
    """The merged registry of every source, with each tenant's token resolved and cached.

    `refresh()` re-reads token files and reports which tenants changed (entry or token), so the
    pipeline can test their connection again and release what waited for them.
    """

    SOURCES = ("file", "topic")
    """Precedence, lowest first: a topic entry overrides a file entry of the same tenant."""

    def __init__(self, secrets: SecretStore) -> None:
        self._secrets = secrets
        self._entries: dict[str, dict[str, TenantEntry]] = {s: {} for s in self.SOURCES}
        self._invalid: dict[str, dict[str, str]] = {s: {} for s in self.SOURCES}
        self._resolved: dict[str, Resolved] = {}
        self._changed: set[str] = set()
        self.problems: dict[str, tuple[str, ...]] = {}
        """Problems of a source as a whole (an unreadable file), by source."""
        self.version = 0
        """Increments whenever an entry or a token changes."""

    # -- sources
    def replace(self, source: str, snapshot: Snapshot) -> None:
        """A source's whole content (the file source)."""
        before = set(self._entries[source]) | set(self._invalid[source])
        self._entries[source] = dict(snapshot.entries)
        self._invalid[source] = dict(snapshot.invalid)
        for tenant_id in before | set(snapshot.entries) | set(snapshot.invalid):
            self._reresolve(tenant_id)
        self._report(source, snapshot.invalid)
        for problem in snapshot.problems:
            log.error("tenant source problem", extra={"source": source, "reason": problem})
        self.problems[source] = snapshot.problems

    def apply(self, source: str, tenant_id: str, entry: TenantEntry | InvalidEntry | None) -> None:
        """One tenant's change from an incremental source (the topic): an entry, None = removed,
        or the reason it was refused."""
        self._entries[source].pop(tenant_id, None)
        self._invalid[source].pop(tenant_id, None)
        if isinstance(entry, InvalidEntry):
            self._invalid[source][tenant_id] = str(entry)
            self._report(source, {tenant_id: str(entry)})
        elif entry is not None:
            self._entries[source][tenant_id] = entry
        self._reresolve(tenant_id)

    def _report(self, source: str, invalid: Mapping[str, str]) -> None:
        for tenant_id, reason in invalid.items():
            log.error("tenant entry refused", extra={"source": source, "tenant": tenant_id, "reason": reason})

    # -- lookups
    def _entry(self, tenant_id: str) -> tuple[TenantEntry | None, str | None]:
        for source in reversed(self.SOURCES):
            entry = self._entries[source].get(tenant_id)
            if entry is not None:
                return entry, None
            if tenant_id in self._invalid[source]:
                return None, self._invalid[source][tenant_id]
        return None, None

    def _reresolve(self, tenant_id: str) -> None:
        old = self._resolved.pop(tenant_id, None)
        new = self.resolve(tenant_id)
        if old != new:
            self._changed.add(tenant_id)
            self.version += 1

    def resolve(self, tenant_id: str) -> Resolved:
        cached = self._resolved.get(tenant_id)
        if cached is not None:
            return cached
        entry, problem = self._entry(tenant_id)
        if entry is None:
            resolved = Resolved("invalid", problem=problem) if problem else Resolved("unknown")
        elif not entry.enabled:
            resolved = Resolved("disabled", entry)
        else:
            try:
                resolved = Resolved("ok", entry, self._secrets.token(tenant_id, entry))
            except InvalidEntry as exc:
                resolved = Resolved("invalid", entry, problem=str(exc))
        self._resolved[tenant_id] = resolved
        return resolved

    def refresh(self) -> None:
        """Read every tenant's token again (files change when a secret is rotated)."""
        for tenant_id in list(self._resolved):
            self._reresolve(tenant_id)

    def take_changes(self) -> set[str]:
        """Tenants whose entry or token changed since the last call."""
        changed, self._changed = self._changed, set()
        return changed

    def tenant_ids(self) -> list[str]:
        known: set[str] = set()
        for source in self.SOURCES:
            known |= set(self._entries[source]) | set(self._invalid[source])
        return sorted(known)

    @property
    def invalid(self) -> dict[str, str]:
        """Tenant id -> why its entry or token is unusable (what /tenants and the logs report)."""
        result: dict[str, str] = {}
        for tenant_id in self.tenant_ids():
            resolved = self.resolve(tenant_id)
            if resolved.state == "invalid" and resolved.problem is not None:
                result[tenant_id] = resolved.problem
        return result


Change = tuple[str, TenantEntry | InvalidEntry | None]
"""(tenant id, its entry, the reason it was refused, or None when it was removed)."""


class RegistryTopic:
    """The compacted registry topic, read from its beginning by an assigned consumer (it never joins a
    group nor commits: every member reads the whole topic and sees the same registry)."""

    def __init__(self, consumer_conf: Mapping[str, Any], topic: str) -> None:
        conf = {k: v for k, v in consumer_conf.items() if k not in _GROUP_ONLY_KEYS}
        conf.update({"enable.auto.commit": False, "enable.auto.offset.store": False})
        self.topic = topic
        self._consumer = Consumer(conf, logger=logging.getLogger("librdkafka.tenants"))

    def load_to_end(self, timeout_s: float) -> list[Change]:
        """Every record up to the end the topic has now; ValueError when it cannot be read in time."""
        metadata = self._consumer.list_topics(self.topic, timeout=timeout_s).topics.get(self.topic)
        if metadata is None or metadata.error is not None:
            raise ValueError(f"platform.tenants.topic: topic {self.topic!r} does not exist or cannot be read")
        ends: dict[int, int] = {}
        for partition in metadata.partitions:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.topic, partition), timeout_s
            )
            ends[partition] = high
        self._consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in ends])
        changes: list[Change] = []
        positions = dict.fromkeys(ends, 0)
        deadline = time.monotonic() + timeout_s
        while any(positions[p] < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                raise ValueError(
                    f"platform.tenants.topic: {self.topic!r} not read to its end in {timeout_s:.0f}s"
                )
            for msg in self._consumer.consume(num_messages=1000, timeout=0.2):
                if msg.error() is None:
                    positions[msg.partition() or 0] = (msg.offset() or 0) + 1
                    changes += self._decode(msg.key(), msg.value())
        return changes

    def poll(self) -> list[Change]:
        """What was appended since the last call (never blocks)."""
        changes: list[Change] = []
        for msg in self._consumer.consume(num_messages=1000, timeout=0):
            if msg.error() is None:
                changes += self._decode(msg.key(), msg.value())
        return changes

    def _decode(self, key: bytes | str | None, value: bytes | None) -> list[Change]:
        raw_key = key.encode() if isinstance(key, str) else key
        try:
            tenant_id, entry = decode_topic_entry(raw_key, value)
        except InvalidEntry as exc:
            if raw_key:
                try:
                    return [(raw_key.decode("utf-8"), exc)]
                except UnicodeDecodeError:
                    pass
            log.error("tenant registry record refused", extra={"topic": self.topic, "reason": str(exc)})
            return []
        return [(tenant_id, entry)]

    def close(self) -> None:
        self._consumer.close()


_GROUP_ONLY_KEYS = ("partition.assignment.strategy", "group.protocol", "group.instance.id")


class TenantSync:
    """Keeps a registry current: reads its sources at start-up (the topic to its end) and again every
    `interval_s`, and hands the tenants that changed to `on_changes`."""

    def __init__(
        self,
        registry: TenantRegistry,
        *,
        file: FileTenantSource | None,
        topic: RegistryTopic | None,
        interval_s: float,
        on_changes: Callable[[set[str], float], None] | None = None,
    ) -> None:
        self.registry = registry
        self._file = file
        self._topic = topic
        self._interval_s = interval_s
        self._on_changes = on_changes
        self._last = float("-inf")

    def load(self, timeout_s: float) -> None:
        """Before the first event is routed: the file and the whole registry topic."""
        if self._topic is not None:
            for tenant_id, entry in self._topic.load_to_end(timeout_s):
                self.registry.apply("topic", tenant_id, entry)
        self._reload()
        self.registry.take_changes()
        log.info(
            "tenant registry loaded",
            extra={"tenants": len(self.registry.tenant_ids()), "invalid": len(self.registry.invalid)},
        )

    def tick(self, now: float) -> None:
        """Called every loop turn: follows the topic; re-reads the file and tokens every `interval_s`."""
        if self._topic is not None:
            for tenant_id, entry in self._topic.poll():
                self.registry.apply("topic", tenant_id, entry)
        if now - self._last >= self._interval_s:
            self._last = now
            self._reload()
        changed = self.registry.take_changes()
        if changed and self._on_changes is not None:
            self._on_changes(changed, now)

    def _reload(self) -> None:
        """The file again when it changed, and every tenant's token (a rotated secret)."""
        if self._file is not None:
            snapshot = self._file.poll()
            if snapshot is not None:
                self.registry.replace("file", snapshot)
        self.registry.refresh()

    def close(self) -> None:
        if self._topic is not None:
            self._topic.close()
