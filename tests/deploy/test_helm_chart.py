"""deploy/helm/capi-consumer: `helm lint`, `helm template` with three value sets, every rendered object
validated offline (core kinds against Kubernetes' schemas from the kubernetes-validate package, custom
resources against their CRDs in ../shared/k8s-crds/), the rendered configuration loaded by the service's
own validator, and the chart's promises (security context, probes, grace period, secrets, single-source
rules and dashboard, replicas <= partitions, static membership).

No cluster is involved: what is proven is that the manifests are what the API server's schemas accept,
not that the pods run. helm is built once from source by deploy/helm/get-helm.sh (like promtool)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import yaml

from consumer.config import ConfigError, KafkaConfig, load_config
from tests.deploy.conftest import DASHBOARD, REPO, RULES

# Building helm on a fresh machine takes minutes (the session fixture's first use).
pytestmark = pytest.mark.timeout(1800)

CHART = REPO / "deploy" / "helm" / "capi-consumer"
GET_HELM = REPO / "deploy" / "helm" / "get-helm.sh"
PLATFORM_VALUES = CHART / "ci" / "platform-keda-monitoring-values.yaml"
CRDS = REPO.parent / "shared" / "k8s-crds"
BUILD_TIMEOUT_S = 1500
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest kubernetes-validate
# ships; core objects are validated against both.
K8S_VERSIONS = ("1.30", "1.37")
RELEASE = "capi-consumer"
NAMESPACE = "capi"
CONFIG_DIR = PurePosixPath("/etc/capi-consumer")

# Deployment + ServiceMonitor + KEDA with an existing TriggerAuthentication: the other branches.
DEPLOYMENT_SET = (
    "workloadKind=Deployment",
    "config.kafka.static_membership=false",
    "kafkaPartitions=6",
    "autoscaling.enabled=true",
    "autoscaling.maxReplicas=6",
    "autoscaling.authenticationRef=kafka-auth",
    "monitoring.monitor.enabled=true",
    "monitoring.monitor.type=ServiceMonitor",
)
CORE_KINDS = {"ConfigMap", "Service", "StatefulSet", "Deployment", "PodDisruptionBudget"}
CRD_FILES = {
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
    "PodMonitor": "monitoring.coreos.com_podmonitors.yaml",
    "ServiceMonitor": "monitoring.coreos.com_servicemonitors.yaml",
    "PrometheusRule": "monitoring.coreos.com_prometheusrules.yaml",
}

Obj = dict[str, Any]


# --- helm ------------------------------------------------------------------------------------------


class Helm(NamedTuple):
    path: str
    env: dict[str, str]


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm, built by deploy/helm/get-helm.sh into the cache when missing, with its config, cache and
    data homes in a temporary directory so that no user setting leaks in."""
    started = time.monotonic()
    try:
        done = subprocess.run(
            [str(GET_HELM)], capture_output=True, text=True, timeout=BUILD_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"building helm took longer than {BUILD_TIMEOUT_S}s", pytrace=False)
    if done.returncode != 0:
        hint = "" if shutil.which("go") else "\nGo 1.24+ is needed to build helm once: install Go (go.dev)."
        pytest.fail(f"get-helm.sh failed ({done.returncode}):\n{done.stderr[-3000:]}{hint}", pytrace=False)
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.is_file(), done.stdout
    if time.monotonic() - started > 5:
        print(f"helm built in {time.monotonic() - started:.0f}s: {path}")
    home = tmp_path_factory.mktemp("helm-home")
    homes = {
        key: str(home / key.lower()) for key in ("HELM_CONFIG_HOME", "HELM_CACHE_HOME", "HELM_DATA_HOME")
    }
    return Helm(str(path), {**os.environ, **homes})


def run_helm(helm: Helm, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm.path, *args], capture_output=True, text=True, timeout=120, check=False, env=helm.env
    )


def template_args(values: Path | None = None, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.30.0"]
    if values is not None:
        args += ["--values", str(values)]
    for item in sets:
        args += ["--set", item]
    return args


def render(helm: Helm, values: Path | None = None, sets: tuple[str, ...] = ()) -> list[Obj]:
    done = run_helm(helm, *template_args(values, sets))
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def render_error(helm: Helm, values: Path | None = None, sets: tuple[str, ...] = ()) -> str:
    done = run_helm(helm, *template_args(values, sets))
    assert done.returncode != 0, f"rendered although it should not: {sets}"
    return done.stderr


@pytest.fixture(scope="module")
def renders(helm: Helm) -> dict[str, list[Obj]]:
    return {
        "default": render(helm),
        "platform": render(helm, PLATFORM_VALUES),
        "deployment": render(helm, sets=DEPLOYMENT_SET),
    }


def one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def workload(objs: list[Obj]) -> Obj:
    found = [o for o in objs if o["kind"] in ("StatefulSet", "Deployment")]
    assert len(found) == 1
    return found[0]


def container(objs: list[Obj]) -> Obj:
    containers: list[Obj] = workload(objs)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def config_map(objs: list[Obj]) -> dict[str, str]:
    data: dict[str, str] = one(objs, "ConfigMap", RELEASE)["data"]
    return data


def rendered_config(objs: list[Obj]) -> Obj:
    config: Obj = yaml.safe_load(config_map(objs)["config.yaml"])
    return config


def kinds_and_names(objs: list[Obj]) -> set[str]:
    return {f"{o['kind']}/{o['metadata']['name']}" for o in objs}


# --- lint and what is rendered ---------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, PLATFORM_VALUES], ids=["default", "platform"])
def test_helm_lint(helm: Helm, values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    done = run_helm(helm, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


def test_helm_reports_its_version_and_a_current_kubernetes(helm: Helm) -> None:
    # get-helm.sh passes the -ldflags of helm's Makefile: without them a source build would claim
    # Kubernetes 1.20, and `helm lint` would not know the APIs removed since.
    assert run_helm(helm, "version", "--short").stdout.strip() == "v3.22.0"
    done = run_helm(helm, "template", RELEASE, str(CHART), "--show-only", "templates/service.yaml")
    assert done.returncode == 0, done.stderr  # the default Kubernetes version passes kubeVersion >= 1.30


def test_chart_packages_with_its_copies(helm: Helm, tmp_path: Path) -> None:
    # What is distributed is the packaged chart: it must hold the copied rules, dashboard and schemas
    # (no symlink out of the chart) and leave the test values out (.helmignore).
    done = run_helm(helm, "package", str(CHART), "--destination", str(tmp_path))
    assert done.returncode == 0, done.stderr
    (archive,) = tmp_path.glob("capi-consumer-*.tgz")
    with tarfile.open(archive) as tar:
        names = {name.removeprefix("capi-consumer/") for name in tar.getnames()}
    assert {"files/capi-consumer.rules.yml", "files/capi-consumer.json", "values.schema.json"} <= names
    assert {f"files/schemas/{p.name}" for p in (REPO / "schemas").glob("*.avsc")} <= names
    assert not [name for name in names if name.startswith("ci/")]


def test_rendered_objects(renders: dict[str, list[Obj]]) -> None:
    core = {f"{kind}/{RELEASE}" for kind in ("ConfigMap", "Service", "PodDisruptionBudget")}
    assert kinds_and_names(renders["default"]) == core | {f"StatefulSet/{RELEASE}"}
    assert kinds_and_names(renders["platform"]) == core | {
        f"StatefulSet/{RELEASE}",
        f"ConfigMap/{RELEASE}-dashboard",
        f"ScaledObject/{RELEASE}",
        f"TriggerAuthentication/{RELEASE}-kafka",
        f"PodMonitor/{RELEASE}",
        f"PrometheusRule/{RELEASE}",
    }
    assert kinds_and_names(renders["deployment"]) == core | {
        f"Deployment/{RELEASE}",
        f"ScaledObject/{RELEASE}",
        f"ServiceMonitor/{RELEASE}",
    }


# --- schemas ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_core_objects_match_the_kubernetes_schemas(renders: dict[str, list[Obj]], version: str) -> None:
    # Strict schemas: an unknown field (a typo) is an error, as for `kubectl apply` (strict field
    # validation).
    checked = 0
    for objs in renders.values():
        for obj in objs:
            if obj["kind"] in CORE_KINDS:
                assert kubernetes_validate.validate(obj, version, strict=True) == version
                checked += 1
    assert checked == 13


def test_kubernetes_schema_validation_catches_mistakes(renders: dict[str, list[Obj]]) -> None:
    sts = json.loads(json.dumps(workload(renders["default"])))
    sts["spec"]["template"]["spec"]["containers"][0]["livenessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSIONS[0], strict=True)
    pdb = json.loads(json.dumps(one(renders["default"], "PodDisruptionBudget")))
    pdb["spec"]["unhealthyPodEvictionPolicy"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pdb, K8S_VERSIONS[0], strict=True)


def _strict(schema: Obj) -> Obj:
    """The CRD schema with unknown fields refused (the API server prunes them, and `kubectl apply`'s
    strict field validation refuses them), except where the CRD preserves unknown fields."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: _strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(out.get(key), dict):
            out[key] = _strict(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [_strict(sub) for sub in out[key]]
    return out


def crd_validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    crd = yaml.safe_load((CRDS / CRD_FILES[kind]).read_text())
    group, version = api_version.split("/")
    assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
    served = {v["name"]: v for v in crd["spec"]["versions"] if v["served"]}
    assert version in served, f"{kind} {api_version} is not served by the CRD"
    schema = _strict(served[version]["schema"]["openAPIV3Schema"])
    # OpenAPI v3.0 schemas are closest to JSON Schema draft 4 (boolean exclusiveMinimum/Maximum). The
    # schema itself is checked without format checks: CRD patterns are Go RE2 (`^(?i)(abort|warn)?$`),
    # which Python's re compiles only when such a field is present.
    jsonschema.Draft4Validator(jsonschema.Draft4Validator.META_SCHEMA).validate(schema)
    return jsonschema.Draft4Validator(schema)


def test_custom_resources_match_their_crds(renders: dict[str, list[Obj]]) -> None:
    assert CRDS.is_dir(), f"{CRDS} is missing (the shared CRDs beside the repository)"
    checked: set[str] = set()
    for objs in renders.values():
        for obj in objs:
            if obj["kind"] in CORE_KINDS:
                continue
            errors = sorted(crd_validator(obj["kind"], obj["apiVersion"]).iter_errors(obj), key=str)
            assert not errors, f"{obj['kind']}: " + "; ".join(e.message for e in errors)
            checked.add(obj["kind"])
    assert checked == set(CRD_FILES)


def test_crd_validation_catches_mistakes(renders: dict[str, list[Obj]]) -> None:
    scaled = json.loads(json.dumps(one(renders["platform"], "ScaledObject")))
    validator = crd_validator("ScaledObject", scaled["apiVersion"])
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 10000  # KEDA wants strings
    assert list(validator.iter_errors(scaled))
    monitor = json.loads(json.dumps(one(renders["platform"], "PodMonitor")))
    monitor["spec"]["podMetricsEndpoint"] = monitor["spec"].pop("podMetricsEndpoints")
    assert list(crd_validator("PodMonitor", monitor["apiVersion"]).iter_errors(monitor))


def test_values_schema_refuses_a_misspelt_value(helm: Helm) -> None:
    assert "autoscalling" in render_error(helm, sets=("autoscalling.enabled=true",))


# --- the configuration -----------------------------------------------------------------------------


def write_config_dir(objs: list[Obj], where: Path) -> Path:
    """The ConfigMap's files as the pod sees them in /etc/capi-consumer; returns config.yaml's path."""
    where.mkdir(parents=True)
    for name, content in config_map(objs).items():
        (where / name).write_text(content)
    return where / "config.yaml"


@pytest.mark.parametrize("name", ["default", "platform", "deployment"])
def test_rendered_config_is_valid_for_the_service(
    renders: dict[str, list[Obj]], name: str, tmp_path: Path
) -> None:
    # The reader schemas travel in the same ConfigMap (load_config reads them, so they must exist);
    # secrets are not resolved: their files only exist in the pod (next test: they are mounted).
    path = write_config_dir(renders[name], tmp_path / "etc-capi-consumer")
    config = load_config(path, env={}, resolve_secrets=False)
    assert config.topics and config.reader_schemas()
    port = container(renders[name])["ports"][0]
    assert port == {"name": "metrics", "containerPort": config.metrics.port, "protocol": "TCP"}


def test_platform_config_routes_by_tenant_only(renders: dict[str, list[Obj]], tmp_path: Path) -> None:
    config = load_config(write_config_dir(renders["platform"], tmp_path / "c"), env={}, resolve_secrets=False)
    assert set(config.topics) == {"shop-orders", "shop-subscriptions"}  # the default `orders` was nulled
    assert not config.destinations and all(t.tenant_field == "shop_id" for t in config.topics.values())
    assert config.platform.tenants is not None and config.platform.secrets_dir is not None


def _named_paths(node: Any, key: str = "") -> Iterator[str]:
    """Absolute paths the configuration names: *_file keys, secret files, secrets_dir, tenants.file,
    librdkafka/registry *.location."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _named_paths(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _named_paths(v, key)
    elif (
        isinstance(node, str)
        and node.startswith("/")
        and (key.endswith(("_file", ".location", "_dir")) or key == "file")
    ):
        yield node


@pytest.mark.parametrize("name", ["default", "platform", "deployment"])
def test_every_file_the_config_names_is_mounted(renders: dict[str, list[Obj]], name: str) -> None:
    objs = renders[name]
    mounts = {m["name"]: PurePosixPath(m["mountPath"]) for m in container(objs)["volumeMounts"]}
    volumes = {v["name"]: v for v in workload(objs)["spec"]["template"]["spec"]["volumes"]}
    paths = list(_named_paths(rendered_config(objs)))
    assert paths
    for path in map(PurePosixPath, paths):
        holders = [n for n, mount in mounts.items() if path == mount or mount in path.parents]
        assert holders, f"{path} is named by the configuration but no volume is mounted there"
        assert {"secret", "configMap"} & set(volumes[holders[0]]), path


# --- the pod ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["default", "platform", "deployment"])
def test_security_context(renders: dict[str, list[Obj]], name: str) -> None:
    pod = workload(renders[name])["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    ctx = container(renders[name])["securityContext"]
    assert ctx["runAsNonRoot"] is True
    assert isinstance(ctx["runAsUser"], int) and ctx["runAsUser"] > 0
    assert ctx["readOnlyRootFilesystem"] is True
    assert ctx["allowPrivilegeEscalation"] is False
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    assert ctx["seccompProfile"] == {"type": "RuntimeDefault"}
    # Only volume types Pod Security "restricted" allows; /tmp is a bounded emptyDir.
    for volume in pod["volumes"]:
        assert {"configMap", "secret", "emptyDir"} & set(volume), volume
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440
    mounts = {m["mountPath"]: m for m in container(renders[name])["volumeMounts"]}
    assert mounts["/tmp"]["name"] == "tmp"
    assert all(m.get("readOnly") for path, m in mounts.items() if path != "/tmp")


@pytest.mark.parametrize("name", ["default", "platform", "deployment"])
def test_command_probes_and_service(renders: dict[str, list[Obj]], name: str) -> None:
    objs = renders[name]
    main = container(objs)
    assert main["args"] == ["run", "--config", str(CONFIG_DIR / "config.yaml")]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert main["image"] == f"capi-consumer:{chart['appVersion']}"
    assert main["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert main["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    port = rendered_config(objs).get("metrics", {}).get("port", 9108)
    assert main["ports"][0]["containerPort"] == port
    service = one(objs, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": port, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod_labels = workload(objs)["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert one(objs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert main["resources"] == {"requests": {"cpu": "1", "memory": "320Mi"}, "limits": {"memory": "512Mi"}}


def test_metrics_port_follows_the_config(renders: dict[str, list[Obj]]) -> None:
    assert container(renders["default"])["ports"][0]["containerPort"] == 9108
    assert container(renders["platform"])["ports"][0]["containerPort"] == 9200


def test_metrics_endpoint_must_stay_reachable(helm: Helm) -> None:
    assert "config.metrics.enabled" in render_error(helm, sets=("config.metrics.enabled=false",))
    assert "loopback" in render_error(helm, sets=("config.metrics.host=127.0.0.1",))
    assert "fixed port" in render_error(helm, sets=("config.metrics.port=0",))


@pytest.mark.parametrize("name", ["default", "platform", "deployment"])
def test_grace_period_outlasts_the_drain_deadline(renders: dict[str, list[Obj]], name: str) -> None:
    grace = workload(renders[name])["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    drain = rendered_config(renders[name])["shutdown"]["drain_deadline_s"]
    assert grace > drain
    assert grace == drain + 60  # the final commit may wait for a rebalance: session timeout + 5 s


def test_grace_period_rounds_a_fractional_drain_deadline_up(helm: Helm) -> None:
    objs = render(helm, sets=("config.shutdown.drain_deadline_s=12.5",))
    assert workload(objs)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 73


def test_config_change_rolls_the_pods(helm: Helm, renders: dict[str, list[Obj]]) -> None:
    def checksum(objs: list[Obj]) -> str:
        value: str = workload(objs)["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return value

    base = checksum(renders["default"])
    assert checksum(render(helm, sets=("replicaCount=1",))) == base
    assert checksum(render(helm, sets=("config.capi.timeout_s=7",))) != base


# --- secrets ---------------------------------------------------------------------------------------

# A Meta access token: "EAA" and a long base62 tail (a fake one below).
TOKEN_SHAPE = re.compile(r"EAA[A-Za-z0-9]{30,}")
TOKEN = "EAAGm0PX4ZCpsBAKnotArealToken1234567890abcdef"


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v)
    elif isinstance(node, str):
        yield node


def test_no_rendered_object_holds_a_secret_value(renders: dict[str, list[Obj]]) -> None:
    # Secrets stay in existing Secrets: the chart renders none, passes none as a plain environment
    # value, and nothing rendered looks like an access token (literal secret keys in the configuration
    # are refused by load_config, which every rendered configuration passes above).
    for objs in renders.values():
        assert not [o for o in objs if o["kind"] == "Secret"]
        for obj in objs:
            for text in _strings(obj):
                assert not TOKEN_SHAPE.search(text), f"{obj['kind']}: {text[:80]}"
        for var in container(objs)["env"]:
            if any(word in var["name"].upper() for word in ("TOKEN", "PASSWORD", "SECRET", "KEY")):
                assert "valueFrom" in var and "value" not in var, var
    for values in (CHART / "values.yaml", PLATFORM_VALUES):
        assert not TOKEN_SHAPE.search(values.read_text()), values


def test_a_token_written_into_the_values_is_refused_by_the_service(helm: Helm, tmp_path: Path) -> None:
    # The chart has no key for a token; one written into `config` anyway renders (helm cannot know),
    # but the service refuses to start on it.
    objs = render(helm, sets=(f"config.destinations.main.access_token={TOKEN}",))
    with pytest.raises(ConfigError, match="literal secrets are not allowed"):
        load_config(write_config_dir(objs, tmp_path / "c"), env={}, resolve_secrets=False)


# --- single-source files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("copy", "source"),
    [
        ("files/capi-consumer.rules.yml", RULES),
        ("files/capi-consumer.json", DASHBOARD),
        *[(f"files/schemas/{p.name}", p) for p in sorted((REPO / "schemas").glob("*.avsc"))],
    ],
)
def test_chart_files_are_copies_of_their_source(copy: str, source: Path) -> None:
    assert (CHART / copy).read_bytes() == source.read_bytes(), (
        f"deploy/helm/capi-consumer/{copy} differs from {source.relative_to(REPO)}: "
        "run deploy/helm/sync-chart-files.sh"
    )


def test_chart_ships_every_schema() -> None:
    shipped = {p.name for p in (CHART / "files" / "schemas").glob("*.avsc")}
    assert shipped == {p.name for p in (REPO / "schemas").glob("*.avsc")}


def test_config_map_files_equal_the_schemas(renders: dict[str, list[Obj]]) -> None:
    data = config_map(renders["default"])
    for schema in (REPO / "schemas").glob("*.avsc"):
        assert data[schema.name] == schema.read_text()


def test_prometheus_rule_carries_the_alert_rules(renders: dict[str, list[Obj]]) -> None:
    rule = one(renders["platform"], "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_config_map_holds_the_dashboard(renders: dict[str, list[Obj]]) -> None:
    dashboard = one(renders["platform"], "ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["annotations"] == {"grafana_folder": "capi"}
    assert dashboard["data"] == {"capi-consumer.json": DASHBOARD.read_text()}


# --- scaling ---------------------------------------------------------------------------------------


def test_keda_scales_on_the_consumer_groups_lag(renders: dict[str, list[Obj]]) -> None:
    objs = renders["platform"]
    config = rendered_config(objs)
    scaled = one(objs, "ScaledObject")["spec"]
    target = workload(objs)
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": RELEASE}
    assert "replicas" not in target["spec"]  # the HPA owns the count
    assert scaled["minReplicaCount"] == 2 and scaled["maxReplicaCount"] == 12
    triggers = scaled["triggers"]
    # One trigger per source topic; the parked topics' lag (events waiting for a tenant) never counts.
    assert sorted(t["metadata"]["topic"] for t in triggers) == sorted(config["topics"])
    for trigger in triggers:
        meta = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert meta["consumerGroup"] == config["kafka"]["group_id"]
        assert meta["bootstrapServers"] == config["kafka"]["bootstrap_servers"]
        assert meta["lagThreshold"] == "10000" and meta["offsetResetPolicy"] == "earliest"
        assert meta["allowIdleConsumers"] == "false" and meta["sasl"] == "scram_sha512"
        assert trigger["authenticationRef"] == {"name": f"{RELEASE}-kafka"}
    auth = one(objs, "TriggerAuthentication")["spec"]["secretTargetRef"]
    assert {ref["parameter"] for ref in auth} == {"username", "password", "ca"}


def test_keda_targets_a_deployment_too(renders: dict[str, list[Obj]]) -> None:
    scaled = one(renders["deployment"], "ScaledObject")["spec"]
    assert scaled["scaleTargetRef"]["kind"] == "Deployment" and scaled["maxReplicaCount"] == 6
    assert scaled["triggers"][0]["authenticationRef"] == {"name": "kafka-auth"}
    assert scaled["triggers"][0]["metadata"]["consumerGroup"] == "capi-consumer"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (
            ("autoscaling.enabled=true", "kafkaPartitions=4", "autoscaling.maxReplicas=5"),
            "above kafkaPartitions",
        ),
        (("autoscaling.enabled=true", "autoscaling.maxReplicas=5"), "needs kafkaPartitions"),
        (("kafkaPartitions=2", "replicaCount=3"), "replicaCount 3 is above kafkaPartitions 2"),
        (("autoscaling.enabled=true", "kafkaPartitions=4", "autoscaling.minReplicas=5"), "minReplicas 5"),
    ],
)
def test_more_members_than_partitions_fails_to_render(
    helm: Helm, sets: tuple[str, ...], message: str
) -> None:
    assert message in render_error(helm, sets=sets)


def test_as_many_members_as_partitions_renders(helm: Helm) -> None:
    sets = ("autoscaling.enabled=true", "kafkaPartitions=4", "autoscaling.maxReplicas=4")
    assert one(render(helm, sets=sets), "ScaledObject")["spec"]["maxReplicaCount"] == 4


# --- static membership -----------------------------------------------------------------------------


def test_static_membership_uses_the_stable_pod_name(renders: dict[str, list[Obj]]) -> None:
    # Coordination with consumer/config.py: `kafka.static_membership` (group.instance.id from the
    # variable named by `kafka.instance_id_env`, default POD_NAME) exists in the config model, which
    # refuses unknown keys; the default chart config turns it on, and the test above loads it.
    assert {"static_membership", "instance_id_env"} <= set(KafkaConfig.model_fields)
    for name in ("default", "platform"):
        objs = renders[name]
        assert rendered_config(objs)["kafka"]["static_membership"] is True
        assert workload(objs)["kind"] == "StatefulSet"  # stable names: the same id after a restart
        env = {var["name"]: var for var in container(objs)["env"]}
        default_env = KafkaConfig.model_fields["instance_id_env"].default
        assert env[default_env]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert rendered_config(renders["deployment"])["kafka"]["static_membership"] is False


def test_static_membership_with_a_deployment_fails_to_render(helm: Helm) -> None:
    assert "workloadKind StatefulSet" in render_error(helm, sets=("workloadKind=Deployment",))


# --- get-helm.sh -----------------------------------------------------------------------------------


def test_get_helm_without_go_says_so(tmp_path: Path) -> None:
    # A machine without Go and without a cached helm: the fixture then fails (never skips) with this.
    path = os.pathsep.join(
        d for d in os.environ["PATH"].split(os.pathsep) if d and not (Path(d) / "go").exists()
    )
    done = subprocess.run(
        [str(GET_HELM)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PATH": path, "CAPI_CACHE_DIR": str(tmp_path)},
    )
    assert done.returncode == 1
    assert "go is not installed" in done.stderr
