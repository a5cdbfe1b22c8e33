"""Configuration loading: validation messages, environment overrides, secrets, client settings."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.config import AppConfig, ConfigError, load_config
from consumer.mapping import Mapper

REPO = Path(__file__).resolve().parents[2]
ORDER_SCHEMA = str(REPO / "schemas" / "order_event.avsc")
SUB_SCHEMA = str(REPO / "schemas" / "subscription_event.avsc")
ENV = {"CAPI_TOKEN_MAIN": "token-main-secret"}

BASE: dict[str, Any] = {
    "kafka": {"bootstrap_servers": "127.0.0.1:9092"},
    "schema_registry": {"url": "http://127.0.0.1:8081"},
    "topics": {"orders": {"kind": "order", "reader_schema": ORDER_SCHEMA, "destination": "main"}},
    "destinations": {"main": {"pixel_id": "1234567890", "access_token_env": "CAPI_TOKEN_MAIN"}},
}


def write(tmp_path: Path, data: dict[str, Any], name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def config_with(**sections: Any) -> dict[str, Any]:
    """BASE with top-level sections deep-merged from `sections`."""
    data = copy.deepcopy(BASE)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return data


def problems(tmp_path: Path, data: dict[str, Any], env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), ENV if env is None else env)
    return info.value.problems


# --- the example and defaults ----------------------------------------------------------------------


def test_example_config_loads_and_its_mappings_check_against_the_schemas() -> None:
    config = load_config(REPO / "deploy" / "config.example.yaml", {"CAPI_ACCESS_TOKEN": "t"})
    assert set(config.topics) == {"orders", "subscriptions", "checkout-leads"}
    assert config.topics["orders"].reader_schema == Path(ORDER_SCHEMA)
    Mapper.from_config(config)  # raises ConfigError on any path that does not fit the schema


def test_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), ENV)
    assert config.kafka.group_id == "capi-consumer"
    assert config.kafka.group_protocol == "classic"
    assert config.capi.api_version == "v26.0" and config.capi.timeout_s == 5.0
    assert config.batching.max_events == 1000 and config.batching.linger_ms == 200
    assert config.limits.queued_max_messages_kbytes == 16384
    assert config.normalization.hash_external_id is True
    assert config.metrics.port == 9108
    assert config.topics["orders"].dlq_topic == "orders.dlq"
    assert config.topics["orders"].effective_send_event_types() == ("placed",)


def test_request_concurrency_bounds(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), ENV)
    assert config.capi.max_requests_in_flight == 64 and config.capi.concurrency.adaptive is True
    assert config.capi.concurrency_bounds == (1, 8, 64)  # (min, initial, max) per destination
    # A configuration written for the fixed limit keeps working: it is the cap, and the start.
    old = load_config(write(tmp_path, config_with(capi={"max_requests_in_flight": 2})), ENV)
    assert old.capi.concurrency_bounds == (1, 2, 2)
    tuned = {"max_requests_in_flight": 100, "concurrency": {"min": 2, "max": 40, "initial": 4}}
    assert load_config(write(tmp_path, config_with(capi=tuned)), ENV).capi.concurrency_bounds == (2, 4, 40)


def test_unquoted_pixel_id_is_read_as_text(tmp_path: Path) -> None:
    data = config_with(destinations={"main": {"pixel_id": 1234567890, "access_token_env": "CAPI_TOKEN_MAIN"}})
    assert load_config(write(tmp_path, data), ENV).destinations["main"].pixel_id == "1234567890"


# --- error messages --------------------------------------------------------------------------------


def test_missing_field_is_reported_with_its_key_path(tmp_path: Path) -> None:
    data = config_with(destinations={"main": {"access_token_env": "CAPI_TOKEN_MAIN"}})
    assert "destinations.main.pixel_id: field required" in problems(tmp_path, data)


def test_every_problem_is_listed_at_once_without_pydantic_urls(tmp_path: Path) -> None:
    data = config_with(
        kafka={"bootstrap_servers": "b:9092", "bogus": 1},
        capi={"api_version": "26"},
        batching={"max_events": 1001},
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, data), ENV)
    found = info.value.problems
    assert "kafka.bogus: unknown key" in found
    assert any(p.startswith("capi.api_version: ") for p in found)
    assert any(p.startswith("batching.max_events: ") and "1000" in p for p in found)
    text = str(info.value)
    assert "pydantic" not in text and "http" not in text.split("\n", 1)[1]
    assert all(line.startswith("  ") for line in text.splitlines()[1:])


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        (
            {"topics": {"orders": {**BASE["topics"]["orders"], "destination": "nope"}}},
            "topics.orders.destination",
        ),
        ({"topics": {"orders": {**BASE["topics"]["orders"], "kind": "custom"}}}, "topics.orders.mapping: "),
        (
            {"topics": {"orders": {**BASE["topics"]["orders"], "send_event_types": ["shipped"]}}},
            "topics.orders.send_event_types: unknown order event type 'shipped'",
        ),
        (
            {
                "topics": {
                    "orders": {
                        **BASE["topics"]["orders"],
                        "mapping": {
                            "event_name": "Lead",
                            "event_id": "order_id",
                            "event_time": "occurred_at",
                        },
                    }
                }
            },
            "topics.orders.mapping: only for kind custom",
        ),
        (
            {"destinations": {"main": {"pixel_id": "12ab", "access_token_env": "CAPI_TOKEN_MAIN"}}},
            "destinations.main.pixel_id: ",
        ),
        (
            {"destinations": {"main": {"pixel_id": "1"}}},
            "destinations.main: set exactly one of access_token_env",
        ),
        (
            {"normalization": {"default_phone_region": "XX"}},
            "normalization.default_phone_region: must be an ISO",
        ),
        ({"kafka": {"bootstrap_servers": "b", "group_protocol": "range"}}, "kafka.group_protocol: "),
        ({"limits": {"max_in_flight_events": 10}}, "limits.max_in_flight_events: must be at least"),
        ({"capi": {"max_requests_in_flight": 0}}, "capi.max_requests_in_flight: "),
        ({"capi": {"concurrency": {"max": 100}}}, "capi.concurrency.max: 100 is above capi.max_requests"),
        ({"capi": {"concurrency": {"min": 10, "max": 4}}}, "capi.concurrency.min: 10 is above"),
        ({"capi": {"concurrency": {"initial": 80}}}, "capi.concurrency.initial: 80 is not between"),
        ({"capi": {"concurrency": {"decrease_factor": 1}}}, "capi.concurrency.decrease_factor: "),
        ({"capi": {"concurrency": {"latency_tolerance": 0.5}}}, "capi.concurrency.latency_tolerance: "),
        ({"capi": {"concurrency": {"limit": 3}}}, "capi.concurrency.limit: unknown key"),
    ],
)
def test_invalid_values_name_their_key(tmp_path: Path, section: dict[str, Any], expected: str) -> None:
    found = problems(tmp_path, config_with(**section))
    assert any(p.startswith(expected) for p in found), found


def test_at_least_one_topic_and_destination(tmp_path: Path) -> None:
    data = {**BASE, "topics": {}, "destinations": {}}
    found = problems(tmp_path, data)
    assert any(p.startswith("topics: ") for p in found) and any(p.startswith("destinations: ") for p in found)


def test_unreadable_or_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml", ENV)
    bad = tmp_path / "bad.yaml"
    bad.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, ENV)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping of sections"):
        load_config(bad, ENV)


# --- paths and schemas ------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "schemas").mkdir()
    (tmp_path / "schemas" / "o.avsc").write_text(Path(ORDER_SCHEMA).read_text())
    data = config_with(
        topics={"orders": {"kind": "order", "reader_schema": "../schemas/o.avsc", "destination": "main"}}
    )
    data["kafka"]["properties"] = {"ssl.ca.location": "ca.pem"}
    config = load_config(write(tmp_path / "conf", data), ENV)
    assert config.topics["orders"].reader_schema == (tmp_path / "schemas" / "o.avsc").resolve()
    assert config.reader_schema("orders")["name"] == "OrderEvent"
    assert config.consumer_properties()["ssl.ca.location"] == str((tmp_path / "conf" / "ca.pem").resolve())


def test_missing_or_invalid_schema_file_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "bad.avsc").write_text(
        '{"type": "record", "name": "X", "fields": [{"name": "a", "type": "nope"}]}'
    )
    data = config_with(
        topics={
            "orders": {**BASE["topics"]["orders"], "reader_schema": "missing.avsc"},
            "subs": {"kind": "subscription", "reader_schema": "bad.avsc", "destination": "main"},
        }
    )
    found = problems(tmp_path, data)
    assert any(p.startswith("topics.orders.reader_schema: cannot read") for p in found), found
    assert any(p.startswith("topics.subs.reader_schema: ") and "not a valid Avro schema" in p for p in found)


def test_registry_is_optional_only_when_every_topic_is_schemaless(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    del data["schema_registry"]
    assert any(p.startswith("schema_registry.url: required") for p in problems(tmp_path, data))
    data["topics"]["orders"]["writer_schema"] = ORDER_SCHEMA
    config = load_config(write(tmp_path, data), ENV)
    assert config.schema_registry_conf() is None
    assert config.writer_schema("orders") == config.reader_schema("orders")


# --- environment overrides --------------------------------------------------------------------------


def test_environment_overrides_nest_on_double_underscore_and_coerce_types(tmp_path: Path) -> None:
    env = {
        **ENV,
        "CAPI__KAFKA__BOOTSTRAP_SERVERS": "broker-1:9093,broker-2:9093",
        "CAPI__BATCHING__MAX_EVENTS": "500",
        "CAPI__NORMALIZATION__HASH_EXTERNAL_ID": "false",
        "CAPI__TOPICS__ORDERS__SEND_EVENT_TYPES": '["placed", "completed"]',
        "CAPI__DESTINATIONS__MAIN__TEST_EVENT_CODE": "TEST123",
        "CAPI__KAFKA__PROPERTIES__CLIENT.ID": "capi-1",
        "CAPI_TOKEN_OTHER": "not an override (single underscore)",
    }
    config = load_config(write(tmp_path, BASE), env)
    assert config.kafka.bootstrap_servers == "broker-1:9093,broker-2:9093"
    assert config.batching.max_events == 500
    assert config.normalization.hash_external_id is False
    assert config.topics["orders"].effective_send_event_types() == ("placed", "completed")
    assert config.destinations["main"].test_event_code == "TEST123"
    assert config.consumer_properties()["client.id"] == "capi-1"


def test_an_invalid_override_names_the_environment_variable(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE, {**ENV, "CAPI__CAPI__TIMEOUT_S": "soon"})
    assert any(p.startswith("capi.timeout_s: ") and p.endswith("(from CAPI__CAPI__TIMEOUT_S)") for p in found)
    found = problems(tmp_path, BASE, {**ENV, "CAPI__KAFKA__BOOTSTRAP_SERVERS__X": "1"})
    assert any(
        p.startswith("kafka.bootstrap_servers: ") and "CAPI__KAFKA__BOOTSTRAP_SERVERS__X" in p for p in found
    )


def test_override_can_supply_a_whole_missing_section(tmp_path: Path) -> None:
    data = copy.deepcopy(BASE)
    del data["kafka"]
    config = load_config(write(tmp_path, data), {**ENV, "CAPI__KAFKA__BOOTSTRAP_SERVERS": "k:9092"})
    assert config.kafka.bootstrap_servers == "k:9092"


# --- secrets --------------------------------------------------------------------------------------


def test_access_token_from_environment_is_secret(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), ENV)
    token = config.destinations["main"].access_token
    assert token is not None and token.get_secret_value() == "token-main-secret"
    for text in (str(config), repr(config), config.model_dump_json()):
        assert "token-main-secret" not in text


def test_access_token_from_a_mounted_file_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "token").write_text("file-token\n")
    data = config_with(destinations={"main": {"pixel_id": "1", "access_token_file": "secrets/token"}})
    token = load_config(write(tmp_path, data), {}).destinations["main"].access_token
    assert token is not None and token.get_secret_value() == "file-token"


def test_missing_secret_names_the_key_and_the_variable(tmp_path: Path) -> None:
    found = problems(tmp_path, BASE, {})
    assert found == ["destinations.main.access_token_env: environment variable CAPI_TOKEN_MAIN is not set"]
    data = config_with(destinations={"main": {"pixel_id": "1", "access_token_file": "/nonexistent/token"}})
    assert any(
        p.startswith("destinations.main.access_token_file: cannot read") for p in problems(tmp_path, data)
    )


def test_secrets_are_not_needed_when_not_resolved(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE), {}, resolve_secrets=False)
    assert config.destinations["main"].access_token is None


@pytest.mark.parametrize(
    ("section", "key"),
    [
        (
            {"destinations": {"main": {"pixel_id": "1", "access_token": "EAAB..."}}},
            "destinations.main.access_token",
        ),
        ({"kafka": {"bootstrap_servers": "b", "sasl_password": "pw"}}, "kafka.sasl_password"),
        (
            {"kafka": {"bootstrap_servers": "b", "properties": {"sasl.password": "pw"}}},
            "kafka.properties.sasl.password",
        ),
        (
            {"kafka": {"bootstrap_servers": "b", "consumer_properties": {"ssl.key.password": "pw"}}},
            "kafka.consumer_properties.ssl.key.password",
        ),
        (
            {"schema_registry": {"url": "http://r:8081", "properties": {"basic.auth.user.info": "u:p"}}},
            "schema_registry.properties.basic.auth.user.info",
        ),
        ({"schema_registry": {"url": "http://u:p@r:8081"}}, "schema_registry.url"),
    ],
)
def test_literal_secrets_are_errors_naming_the_key(tmp_path: Path, section: dict[str, Any], key: str) -> None:
    found = problems(tmp_path, config_with(**section))
    assert any(p.startswith(key + ": ") and "literal secret" in p for p in found), found


def test_kafka_and_registry_secrets_are_injected_into_client_settings(tmp_path: Path) -> None:
    (tmp_path / "key-pass").write_text("key-secret\n")
    data = config_with(
        kafka={
            "bootstrap_servers": "b:9092",
            "properties": {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u"},
            "sasl_password_env": "KAFKA_PW",
            "secret_properties": {"ssl.key.password": {"file": "key-pass"}},
        },
        schema_registry={"url": "https://r:8081", "basic_auth_env": "SR_AUTH"},
    )
    config = load_config(
        write(tmp_path, data), {**ENV, "KAFKA_PW": "kafka-secret", "SR_AUTH": "user:sr-secret"}
    )
    for props in (config.consumer_properties(), config.producer_properties()):
        assert props["sasl.password"] == "kafka-secret"
        assert props["ssl.key.password"] == "key-secret"
        assert props["security.protocol"] == "SASL_SSL"
    registry = config.schema_registry_conf()
    assert registry == {
        "url": "https://r:8081",
        "timeout": 10,
        "basic.auth.credentials.source": "USER_INFO",
        "basic.auth.user.info": "user:sr-secret",
    }
    assert "kafka-secret" not in repr(config) and "sr-secret" not in repr(config)


def test_registry_basic_auth_must_be_user_colon_password(tmp_path: Path) -> None:
    data = config_with(schema_registry={"url": "http://r:8081", "basic_auth_env": "SR_AUTH"})
    found = problems(tmp_path, data, {**ENV, "SR_AUTH": "no-colon"})
    assert found == ["schema_registry.basic_auth: the secret must have the form user:password"]


def test_registry_bearer_token_needs_a_logical_cluster(tmp_path: Path) -> None:
    data = config_with(schema_registry={"url": "http://r:8081", "bearer_token_env": "SR_TOKEN"})
    assert "schema_registry.bearer_logical_cluster: required" in problems(tmp_path, data)[0]
    data["schema_registry"]["bearer_logical_cluster"] = "lsrc-1"
    conf = load_config(write(tmp_path, data), {**ENV, "SR_TOKEN": "tok"}).schema_registry_conf()
    assert conf is not None
    assert conf["bearer.auth.credentials.source"] == "STATIC_TOKEN"
    assert conf["bearer.auth.token"] == "tok" and conf["bearer.auth.logical.cluster"] == "lsrc-1"


# --- librdkafka settings ----------------------------------------------------------------------------


def test_consumer_properties_enforce_at_least_once(tmp_path: Path) -> None:
    data = config_with(
        kafka={
            "bootstrap_servers": "b:9092",
            "group_id": "g1",
            "properties": {"client.id": "c", "enable.auto.offset.store": False},
            "consumer_properties": {"fetch.max.bytes": 1048576},
            "producer_properties": {"linger.ms": 5},
        },
        limits={"queued_max_messages_kbytes": 4096},
    )
    props = load_config(write(tmp_path, data), ENV).consumer_properties()
    assert props["bootstrap.servers"] == "b:9092" and props["group.id"] == "g1"
    assert props["enable.auto.offset.store"] is False
    assert props["enable.auto.commit"] is True
    assert props["auto.offset.reset"] == "earliest"
    assert props["partition.assignment.strategy"] == "cooperative-sticky"
    assert "group.protocol" not in props
    assert props["queued.max.messages.kbytes"] == 4096
    assert props["client.id"] == "c" and props["fetch.max.bytes"] == 1048576
    assert "linger.ms" not in props


def test_kip848_group_protocol(tmp_path: Path) -> None:
    data = config_with(kafka={"bootstrap_servers": "b:9092", "group_protocol": "consumer"})
    props = load_config(write(tmp_path, data), ENV).consumer_properties()
    assert props["group.protocol"] == "consumer"
    assert "partition.assignment.strategy" not in props


def test_producer_properties_are_idempotent_with_acks_all(tmp_path: Path) -> None:
    data = config_with(
        kafka={
            "bootstrap_servers": "b:9092",
            "properties": {"security.protocol": "SSL"},
            "consumer_properties": {"fetch.max.bytes": 1048576},
            "producer_properties": {"linger.ms": 5},
        }
    )
    props = load_config(write(tmp_path, data), ENV).producer_properties()
    assert props == {
        "security.protocol": "SSL",
        "linger.ms": 5,
        "bootstrap.servers": "b:9092",
        "enable.idempotence": True,
        "acks": "all",
    }


@pytest.mark.parametrize(
    ("properties", "key", "fragment"),
    [
        ({"enable.auto.offset.store": True}, "enable.auto.offset.store", "refused"),
        ({"enable.auto.offset.store": "true"}, "enable.auto.offset.store", "refused"),
        ({"group.id": "x"}, "group.id", "kafka.group_id"),
        ({"bootstrap.servers": "x"}, "bootstrap.servers", "kafka.bootstrap_servers"),
        ({"auto.offset.reset": "latest"}, "auto.offset.reset", "skip unread records"),
        ({"enable.auto.commit": False}, "enable.auto.commit", "always true"),
        ({"acks": 1}, "acks", "always all"),
        ({"partition.assignment.strategy": "range"}, "partition.assignment.strategy", "group_protocol"),
        ({"debug": ["a"]}, "debug", "string, number or boolean"),
    ],
)
def test_unsafe_or_owned_librdkafka_keys_are_refused(
    tmp_path: Path, properties: dict[str, Any], key: str, fragment: str
) -> None:
    data = config_with(kafka={"bootstrap_servers": "b", "properties": properties})
    found = problems(tmp_path, data)
    assert any(p.startswith(f"kafka.properties.{key}: ") and fragment in p for p in found), found


def test_config_models_are_immutable(tmp_path: Path) -> None:
    config: AppConfig = load_config(write(tmp_path, BASE), ENV)
    with pytest.raises(ValueError):
        config.kafka.group_id = "other"


# --- static membership and platform mode ----------------------------------------------------------


def test_static_membership_takes_the_member_id_from_the_pod_name(tmp_path: Path) -> None:
    data = config_with(kafka={"bootstrap_servers": "b:9092", "static_membership": True})
    config = load_config(write(tmp_path, data), {**ENV, "POD_NAME": "capi-consumer-7d9f-x2"})
    assert config.consumer_properties()["group.instance.id"] == "capi-consumer-7d9f-x2"
    assert "group.instance.id" not in load_config(write(tmp_path, BASE), ENV).consumer_properties()
    found = problems(tmp_path, data)
    assert found == [
        "kafka.static_membership: environment variable POD_NAME is not set "
        "(the member's stable id, e.g. the pod name from the downward API)"
    ]
    literal = config_with(
        kafka={"bootstrap_servers": "b:9092", "consumer_properties": {"group.instance.id": "x"}}
    )
    assert any("use kafka.static_membership" in p for p in problems(tmp_path, literal))


@pytest.mark.parametrize(
    ("agent", "reason"),
    [
        ("plshopbuilder-3.2-1.4", None),
        ("woocommerce-8.5-3.1", None),
        ("plshopbuilder-12.20-10.4x", "at most 22 characters"),
        ("p1-2-3", "at least two letters"),
        ("datapartner", "pl<PARTNER>-<PLATFORM_VERSION>-<APP_VERSION>"),
        ("pl shop-1-2", "pl<PARTNER>-<PLATFORM_VERSION>-<APP_VERSION>"),
    ],
)
def test_partner_agent_follows_metas_rules(tmp_path: Path, agent: str, reason: str | None) -> None:
    data = config_with(platform={"partner_agent": agent})
    if reason is None:
        assert load_config(write(tmp_path, data), ENV).platform.partner_agent == agent
    else:
        [problem] = problems(tmp_path, data)
        assert problem.startswith("platform.partner_agent: ") and reason in problem


def test_tenant_topics_need_a_registry_and_exactly_one_of_destination_or_tenant_field(tmp_path: Path) -> None:
    tenant_topic = {"kind": "order", "reader_schema": ORDER_SCHEMA, "tenant_field": "shop_id"}
    data = {**BASE, "topics": {"shop-orders": tenant_topic}, "destinations": {}}
    assert problems(tmp_path, data) == [
        "topics.shop-orders.tenant_field: needs platform.tenants (a tenants file or registry topic)"
    ]
    both = {**BASE, "topics": {"shop-orders": {**tenant_topic, "destination": "main"}}}
    assert problems(tmp_path, both) == [
        "topics.shop-orders.destination: set exactly one of destination and tenant_field"
    ]
    ok = {**data, "platform": {"tenants": {"file": str(tmp_path)}}}
    config = load_config(write(tmp_path, ok), ENV)
    assert config.parked_topics == {"shop-orders.parked": "shop-orders"} and not config.destinations


def test_registry_requests_time_out_by_default_and_the_timeout_can_be_set(tmp_path: Path) -> None:
    data = config_with(schema_registry={"url": "http://r:8081"})
    conf = load_config(write(tmp_path, data), ENV).schema_registry_conf()
    assert conf == {"url": "http://r:8081", "timeout": 10}
    data["schema_registry"]["properties"] = {"timeout": 2.5}
    conf = load_config(write(tmp_path, data), ENV).schema_registry_conf()
    assert conf is not None and conf["timeout"] == 2.5
