"""The service alone: a wheel of the root project, installed into a fresh venv without the tooling.

The wheel is built from a copy of the checkout (so no `build/` lands in the work tree) and installed with
its declared dependencies only: those are repacked as wheels from this test's own environment (the
project's .venv) and installed with `--no-index`, so the test needs no network and takes seconds. The
dependencies are found by walking `Requires-Dist` of the built wheel, so a dependency the service needs
but does not declare makes `capi-consumer` fail here, and the tooling (capi_emulator, capi_devstack) is
not installed at all.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
TOOLING = ("capi_emulator", "capi_devstack")
# What the tooling used to be called inside the service package.
OLD_TOOLING_MODULES = ("consumer.emulator", "consumer.devstack", "consumer.demo", "consumer.samples")
NOT_COPIED = shutil.ignore_patterns(
    ".git", ".venv", ".cache", ".hypothesis", "__pycache__", "*.egg-info", "build", "dist", ".*_cache"
)


def requirement_closure(requirements: list[str]) -> dict[str, set[str]]:
    """Installed distributions (canonical name -> extras asked for) that `requirements` need, here."""
    found: dict[str, set[str]] = {}
    work = [(Requirement(r), frozenset({""})) for r in requirements]
    while work:
        req, extras = work.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = canonicalize_name(req.name)
        known = found.get(name)
        if known is not None and set(req.extras) <= known:
            continue
        found[name] = (known or set()) | set(req.extras)
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            pytest.fail(f"{req} is not installed in {sys.prefix}: run `make venv`", pytrace=False)
        assert dist.version in req.specifier or not req.specifier, f"{name} {dist.version} does not fit {req}"
        work += [(Requirement(r), frozenset(found[name] | {""})) for r in dist.requires or []]
    return found


_NOT_REPACKED = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}


def repack(dist: md.Distribution, out: Path) -> Path:
    """A wheel of an installed distribution: its files under site-packages as listed in its RECORD.

    Files installed elsewhere (console scripts: pip writes them anew from entry_points.txt) and byte code
    are left out.
    """
    wheel_tags = [
        line.split(":", 1)[1].strip().split("-")
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    ]
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in wheel_tags)) for i in range(3))
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    path = out / f"{name}-{dist.version}-{tag}.whl"
    record: list[str] = []
    dist_info = ""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as wheel:
        for file in dist.files or []:
            parts = file.parts
            if parts[0] == ".." or "__pycache__" in parts:
                continue
            if parts[0].endswith(".dist-info"):
                dist_info = parts[0]
                if parts[-1] in _NOT_REPACKED:
                    continue
            source = Path(str(dist.locate_file(file)))
            if not source.is_file():
                continue
            data = source.read_bytes()
            wheel.writestr(file.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{file.as_posix()},sha256={digest},{len(data)}")
        assert dist_info, f"{name}: no .dist-info in its RECORD"
        record.append(f"{dist_info}/RECORD,,")
        wheel.writestr(f"{dist_info}/RECORD", "\n".join(record) + "\n")
    return path


def wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        metadata = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(zf.read(metadata).decode()).get_all("Requires-Dist") or []


def clean_env(venv: Path) -> dict[str, str]:
    """No PYTHONPATH, pip settings or user site: only what the venv itself has."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_", "VIRTUAL_ENV"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONNOUSERSITE"] = "1"
    env["PIP_CONFIG_FILE"] = os.devnull
    return env


@dataclass(frozen=True)
class ServiceVenv:
    wheel: Path
    venv: Path
    workdir: Path

    def run(self, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv,
            input=stdin,
            cwd=self.workdir,  # not the checkout: its consumer/ must not shadow the installed one
            env=clean_env(self.venv),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def python(self, code: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(self.venv / "bin" / "python"), "-c", code)


def _check(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{proc.args} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def service_venv(tmp_path_factory: pytest.TempPathFactory) -> ServiceVenv:
    setuptools = Version(md.version("setuptools"))
    assert setuptools >= Version("77"), f"setuptools {setuptools} cannot build the wheel: run `make venv`"
    tmp = tmp_path_factory.mktemp("packaging")
    source, wheels, venv, workdir = tmp / "src", tmp / "wheels", tmp / "venv", tmp / "work"
    shutil.copytree(REPO, source, ignore=NOT_COPIED)
    workdir.mkdir()
    wheels.mkdir()
    pip = [sys.executable, "-m", "pip"]
    pip_env = clean_env(Path(sys.prefix))
    _check(
        subprocess.run(
            [*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(wheels), "."],
            cwd=source,
            env=pip_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    )
    (wheel,) = wheels.glob("capi_consumer-*.whl")
    for name in requirement_closure(wheel_requirements(wheel)):
        repack(md.distribution(name), wheels)
    _check(
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", str(venv)],
            capture_output=True,
            text=True,
            check=False,
        )
    )
    install = [*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-index", "--no-compile"]
    _check(
        subprocess.run(
            [*install, "--find-links", str(wheels), str(wheel)],
            cwd=workdir,
            env=pip_env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    )
    return ServiceVenv(wheel, venv, workdir)


def test_the_wheel_holds_the_service_only(service_venv: ServiceVenv) -> None:
    with zipfile.ZipFile(service_venv.wheel) as zf:
        names = zf.namelist()
        entry_points = zf.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names if ".dist-info/" not in n} == {"consumer"}
    modules = {
        n.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for n in names if n.endswith(".py")
    }
    assert "consumer.cli" in modules and "consumer.mapping" in modules
    assert not {m for m in modules if m.startswith(OLD_TOOLING_MODULES)}
    assert "capi-consumer = consumer.cli:main" in entry_points
    assert "capi-emulator" not in entry_points and "capi-devstack" not in entry_points


def test_capi_consumer_help_runs(service_venv: ServiceVenv) -> None:
    proc = _check(service_venv.run("capi-consumer", "--help"))
    assert proc.stdout.startswith("usage: capi-consumer")
    assert all(command in proc.stdout for command in ("run", "map", "hash", "replay"))
    assert not (service_venv.venv / "bin" / "capi-emulator").exists()
    assert not (service_venv.venv / "bin" / "capi-devstack").exists()


def test_capi_consumer_map_prints_the_server_event(service_venv: ServiceVenv) -> None:
    config = service_venv.workdir / "config.yaml"
    config.write_text(
        json.dumps(  # JSON is valid YAML
            {
                "kafka": {"bootstrap_servers": "127.0.0.1:1"},  # a dry run never connects
                "schema_registry": {"url": "http://127.0.0.1:1"},
                "topics": {
                    "orders": {
                        "kind": "order",
                        "reader_schema": str(REPO / "schemas" / "order_event.avsc"),
                        "destination": "main",
                    }
                },
                "destinations": {"main": {"pixel_id": "1", "access_token_env": "CAPI_TOKEN_NOT_SET"}},
            }
        )
    )
    occurred_at = int(time.time() * 1000) - 60_000
    record = {
        "order_id": "o-1",
        "event_type": "placed",
        "occurred_at": occurred_at,
        "shop_id": "s",
        "total": "19.99",
        "currency": "usd",
        "customer": {"email": " A@Example.com "},
    }
    proc = _check(
        service_venv.run(
            "capi-consumer",
            "map",
            "--config",
            str(config),
            "--topic",
            "orders",
            stdin=json.dumps(record) + "\n",
        )
    )
    assert proc.stderr == ""
    (line,) = proc.stdout.splitlines()
    event: dict[str, Any] = json.loads(line)
    assert event["event_id"] == "o-1" and event["event_name"] == "Purchase"
    assert event["event_time"] == occurred_at // 1000
    assert event["custom_data"]["value"] == 19.99 and event["custom_data"]["currency"] == "USD"
    assert event["user_data"]["em"] == hashlib.sha256(b"a@example.com").hexdigest()


@pytest.mark.parametrize("package", TOOLING)
def test_the_tooling_is_not_installed(service_venv: ServiceVenv, package: str) -> None:
    proc = service_venv.python(f"import {package}")
    assert proc.returncode == 1
    assert f"ModuleNotFoundError: No module named '{package}'" in proc.stderr


def test_the_installed_consumer_package_has_no_tooling_modules(service_venv: ServiceVenv) -> None:
    code = (
        "import consumer, importlib.metadata as md, importlib.util, json, pkgutil;"
        "print(json.dumps({"
        "'file': consumer.__file__,"
        "'modules': sorted(m.name for m in pkgutil.walk_packages(consumer.__path__, 'consumer.')),"
        f"'found': [n for n in {list(OLD_TOOLING_MODULES)!r} if importlib.util.find_spec(n) is not None],"
        "'scripts': sorted(e.name for e in md.entry_points(group='console_scripts')),"
        "'dists': sorted(d.metadata['Name'] for d in md.distributions()),"
        "}))"
    )
    found = json.loads(_check(service_venv.python(code)).stdout)
    assert Path(found["file"]).is_relative_to(service_venv.venv), found["file"]
    assert "consumer.pipeline" in found["modules"] and "consumer.commands.map_cmd" in found["modules"]
    assert [m for m in found["modules"] if m.startswith(OLD_TOOLING_MODULES)] == []
    assert found["found"] == []
    assert "capi-consumer" in found["scripts"]
    assert not {"capi-emulator", "capi-devstack"} & set(found["scripts"])
    assert "capi-consumer" in found["dists"] and "capi-consumer-tools" not in found["dists"]
