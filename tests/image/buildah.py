"""The service's container image, built and run with Debian's buildah (no Docker daemon on these machines).

- Storage: a container storage of its own under the project's cache directory (`.cache/image/storage`),
  so the tests neither see nor prune anything else on the machine, and `rm -rf .cache` resets it.
- Base image: the Dockerfile's default base (an official `python:*-slim` image) cannot be pulled here, as
  no container registry is reachable. A local stand-in is made once with mmdebstrap: Debian bookworm with
  `python3` and `python3-venv`, carrying the host's trust store (Debian's local certificate directory and
  the generated bundle) and the host's pip settings, without which pip inside the build cannot verify the
  package registry. Its root file system is cached as a tarball in `.cache/image/` and imported into the
  storage (`buildah from scratch` + `buildah add` + `buildah commit`); both are keyed by a hash of the
  recipe and of the host files it copies, so a changed trust store makes a new one.
- Image: `buildah build --isolation chroot --layers` of the repository's Dockerfile, the local base passed
  as the `BASE_IMAGE` build argument. Intermediate images of older builds are pruned after each build.
- Running: `buildah run --isolation chroot` of the image's own ENTRYPOINT + CMD (buildah run does not use
  them by itself), with the container's root file system bind-mounted read-only in a private mount
  namespace (`unshare`), since `buildah run` has no `--read-only`.

By hand: `.venv/bin/python -m tests.image.buildah` builds the image and prints its name.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import ctypes
import fcntl
import hashlib
import io
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from capi_devstack.artifacts import cache_dir

REPO = Path(__file__).resolve().parents[2]
IMAGE_NAME = "localhost/capi-consumer:test"
BASE_NAME = "localhost/capi-consumer-test-base"
CONTAINER_PREFIX = "capi-image-test-"
# Bump when the recipe below changes in a way its inputs do not show.
BASE_RECIPE_VERSION = 1
DEBIAN_SUITE = "bookworm"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# Like the official slim images: no manuals, documentation (but the copyright files) or translations.
DPKG_OPTIONS = (
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/info/*",
)
HOST_LOCAL_CAS = Path("/usr/local/share/ca-certificates")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
# pip's configuration files in the order pip reads them (later ones win), then its environment.
PIP_CONFIG_FILES = (
    Path("/etc/xdg/pip/pip.conf"),
    Path("/etc/pip.conf"),
    Path.home() / ".pip" / "pip.conf",
    Path.home() / ".config" / "pip" / "pip.conf",
)
PIP_ENVIRONMENT = {
    "PIP_INDEX_URL": "index-url",
    "PIP_EXTRA_INDEX_URL": "extra-index-url",
    "PIP_TRUSTED_HOST": "trusted-host",
    "PIP_CERT": "cert",
    "PIP_CLIENT_CERT": "client-cert",
    "PIP_DEFAULT_TIMEOUT": "timeout",
    "PIP_TIMEOUT": "timeout",
    "PIP_RETRIES": "retries",
}
# Build arguments every builder knows without an ARG line; passed on when the host has them.
PROXY_VARIABLES = ("http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")


_PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """SIGTERM when the test process dies: buildah run then kills what it runs (the service)."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class ImageError(RuntimeError):
    """A buildah or mmdebstrap step failed; the message carries its output."""


def image_cache_dir() -> Path:
    return cache_dir() / "image"


def missing_tools() -> list[str]:
    return [tool for tool in ("buildah", "mmdebstrap", "unshare") if shutil.which(tool) is None]


@dataclass(frozen=True)
class Buildah:
    """buildah with the project's own container storage."""

    root: Path
    runroot: Path

    @classmethod
    def for_cache(cls, cache: Path) -> Buildah:
        storage = cache / "storage"
        tag = hashlib.sha256(str(storage).encode()).hexdigest()[:12]
        return cls(root=storage, runroot=Path("/run") / f"capi-consumer-image-{tag}")

    def argv(self, *args: str) -> list[str]:
        return ["buildah", "--root", str(self.root), "--runroot", str(self.runroot), *args]

    def run(
        self, *args: str, timeout_s: float = 300, check: bool = True, stdout: TextIO | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            self.argv(*args),
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.PIPE,
            stderr=subprocess.STDOUT if stdout is not None else subprocess.PIPE,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and proc.returncode != 0:
            output = (proc.stdout or "") + (proc.stderr or "")
            raise ImageError(f"buildah {shlex.join(args)} exited {proc.returncode}:\n{output}")
        return proc

    def exists(self, ref: str) -> bool:
        return self.run("inspect", "--type", "image", ref, check=False).returncode == 0

    def inspect(self, ref: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("inspect", "--type", "image", ref).stdout)
        return data

    def image_size(self, ref: str) -> int:
        """Bytes of the image's layers, uncompressed (what it takes on disk once unpacked)."""
        manifest = json.loads(self.inspect(ref)["Manifest"])
        return sum(int(layer["size"]) for layer in manifest["layers"])

    def images(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] | None = json.loads(self.run("images", "--all", "--json").stdout or "[]")
        return listed or []

    def containers(self) -> list[dict[str, Any]]:
        listed: list[dict[str, Any]] | None = json.loads(
            self.run("containers", "--all", "--json").stdout or "[]"
        )
        return listed or []  # buildah prints null for none


@contextlib.contextmanager
def locked(cache: Path) -> Iterator[None]:
    """One builder at a time per cache directory (parallel test sessions share it)."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pip_config() -> str:
    """The host's pip settings as one pip.conf: its files, then its PIP_* variables (as pip ranks them)."""
    parser = configparser.ConfigParser(interpolation=None)
    extra = os.environ.get("PIP_CONFIG_FILE")
    for path in [*PIP_CONFIG_FILES, *([Path(extra)] if extra and extra != os.devnull else [])]:
        if path.is_file():
            parser.read(path)
    for variable, key in PIP_ENVIRONMENT.items():
        value = os.environ.get(variable)
        if value:
            if not parser.has_section("global"):
                parser.add_section("global")
            parser.set("global", key, value)
    out = io.StringIO()
    parser.write(out)
    return out.getvalue()


@dataclass
class BaseRecipe:
    """What goes into the local base image, and the key that names it."""

    files: dict[str, bytes] = field(default_factory=dict)  # path in the image -> content
    local_cas: dict[str, bytes] = field(default_factory=dict)  # name under /usr/local/share/ca-certificates

    @classmethod
    def from_host(cls) -> BaseRecipe:
        recipe = cls()
        if HOST_LOCAL_CAS.is_dir():
            for path in sorted(HOST_LOCAL_CAS.rglob("*")):
                if path.is_file():
                    recipe.local_cas[path.relative_to(HOST_LOCAL_CAS).as_posix()] = path.read_bytes()
        if HOST_CA_BUNDLE.is_file():
            recipe.files[str(HOST_CA_BUNDLE)] = HOST_CA_BUNDLE.read_bytes()
        config = pip_config()
        recipe.files["/etc/pip.conf"] = config.encode()
        # A certificate file pip is told to use must be where pip looks for it.
        parser = configparser.ConfigParser(interpolation=None)
        parser.read_string(config)
        for section in parser.sections():
            for key in ("cert", "client-cert"):
                value = parser.get(section, key, fallback="")
                if value and Path(value).is_file() and value not in recipe.files:
                    recipe.files[value] = Path(value).read_bytes()
        return recipe

    def key(self) -> str:
        described = {
            "version": BASE_RECIPE_VERSION,
            "suite": DEBIAN_SUITE,
            "packages": BASE_PACKAGES,
            "dpkg": DPKG_OPTIONS,
            "files": {k: _sha256(v) for k, v in sorted(self.files.items())},
            "local_cas": {k: _sha256(v) for k, v in sorted(self.local_cas.items())},
        }
        return _sha256(json.dumps(described, sort_keys=True).encode())[:16]

    def mmdebstrap_argv(self, staging: Path, target: Path) -> list[str]:
        argv = [
            "mmdebstrap",
            "--variant=minbase",
            "--format=tar",
            f"--include={','.join(BASE_PACKAGES)}",
            *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        ]
        if self.local_cas:
            cas = staging / "local-cas"
            for name, data in self.local_cas.items():
                (cas / name).parent.mkdir(parents=True, exist_ok=True)
                (cas / name).write_bytes(data)
            argv += [
                f'--customize-hook=mkdir -p "$1"{HOST_LOCAL_CAS}',
                f"--customize-hook=sync-in {cas} {HOST_LOCAL_CAS}",
                '--customize-hook=chroot "$1" update-ca-certificates --fresh >/dev/null',
            ]
        for index, (dest, data) in enumerate(sorted(self.files.items())):
            source = staging / f"file-{index}"
            source.write_bytes(data)
            argv += [
                f'--customize-hook=mkdir -p "$1"{shlex.quote(str(Path(dest).parent))}',
                f"--customize-hook=upload {source} {dest}",
            ]
        return [*argv, DEBIAN_SUITE, str(target)]


@dataclass(frozen=True)
class BaseImage:
    ref: str
    how: str  # "cached" (in the storage), "imported" (from the cached tarball) or "built" (mmdebstrap)
    seconds: float
    mmdebstrap_seconds: float | None


def _mmdebstrap_tmpdir() -> str | None:
    """A tmpfs for mmdebstrap's work (dpkg's many small writes take minutes on a slow disk)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 << 30):
        return None
    options: set[str] = set()
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(shm):
            options = set(fields[5].split(","))
    # The chroot's programs run from there: it must allow them.
    return None if "noexec" in options else str(shm)


def make_base_image(buildah: Buildah, cache: Path, log: TextIO = sys.stderr) -> BaseImage:
    """The local base image: from the storage, else imported from the cached tarball, else mmdebstrapped."""
    started = time.monotonic()
    recipe = BaseRecipe.from_host()
    key = recipe.key()
    ref = f"{BASE_NAME}:{key}"
    if buildah.exists(ref):
        return BaseImage(ref, "cached", time.monotonic() - started, None)
    tarball = cache / f"base-{DEBIAN_SUITE}-{key}.tar"
    how, mmdebstrap_s = "imported", None
    if not tarball.is_file():
        how = "built"
        partial = tarball.with_suffix(".partial")
        with tempfile.TemporaryDirectory(prefix="capi-image-base-") as staging:
            argv = recipe.mmdebstrap_argv(Path(staging), partial)
            env = dict(os.environ)
            tmpdir = _mmdebstrap_tmpdir()
            if tmpdir:
                env["TMPDIR"] = tmpdir
            print(f"image: making the base image with mmdebstrap ({DEBIAN_SUITE})", file=log, flush=True)
            t0 = time.monotonic()
            proc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
                check=False,
            )
            mmdebstrap_s = time.monotonic() - t0
            if proc.returncode != 0:
                partial.unlink(missing_ok=True)
                raise ImageError(f"mmdebstrap exited {proc.returncode}:\n{proc.stderr[-6000:]}")
        os.replace(partial, tarball)
        for old in cache.glob(f"base-{DEBIAN_SUITE}-*.tar"):
            if old != tarball:
                old.unlink()
    name = f"capi-image-base-{key}"
    buildah.run("rm", name, check=False)
    buildah.run("from", "--name", name, "scratch")
    try:
        buildah.run("add", "--quiet", name, str(tarball), "/")
        buildah.run(
            "config",
            "--env",
            "LANG=C.UTF-8",
            "--env",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--cmd",
            '["python3"]',
            "--label",
            f"capi-consumer.test-base.key={key}",
            name,
        )
        buildah.run("commit", "--quiet", "--rm", name, ref)
    except BaseException:
        buildah.run("rm", name, check=False)
        raise
    for image in buildah.images():
        for other in image.get("names") or []:
            if other.startswith(f"{BASE_NAME}:") and other != ref:
                buildah.run("rmi", other, check=False)
    return BaseImage(ref, how, time.monotonic() - started, mmdebstrap_s)


@dataclass(frozen=True)
class Build:
    ref: str
    image_id: str
    seconds: float
    steps: int
    cached_steps: int
    step_ids: frozenset[str]
    log: str


_STEP = re.compile(r"^\[\d+/\d+\] STEP \d+/\d+: |^STEP \d+/\d+: ", re.M)
_LAYER = re.compile(r"^--> (?:Using cache )?([0-9a-f]{11,64})\s*$", re.M)


def git_revision() -> str:
    proc = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def build_image(
    buildah: Buildah,
    base: str,
    *,
    tag: str = IMAGE_NAME,
    context: Path = REPO,
    no_cache: bool = False,
    timeout_s: float = 900,
) -> Build:
    """`buildah build` of the Dockerfile on the local base, with layer caching (unless no_cache)."""
    args = [
        "build",
        "--isolation",
        "chroot",
        "--layers",
        *(["--no-cache"] if no_cache else []),
        "--pull=never",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--build-arg",
        f"REVISION={git_revision()}",
        *(arg for v in PROXY_VARIABLES if v in os.environ for arg in ("--build-arg", f"{v}={os.environ[v]}")),
        "--tag",
        tag,
        "--file",
        str(context / "Dockerfile"),
        str(context),
    ]
    started = time.monotonic()
    with tempfile.TemporaryFile("w+") as out:
        proc = buildah.run(*args, timeout_s=timeout_s, check=False, stdout=out)
        out.seek(0)
        log = out.read()
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        raise ImageError(f"buildah build exited {proc.returncode}:\n{log[-8000:]}")
    image_id = buildah.inspect(tag)["FromImageID"]
    return Build(
        ref=tag,
        image_id=image_id,
        seconds=seconds,
        steps=len(_STEP.findall(log)),
        cached_steps=log.count("--> Using cache "),
        step_ids=frozenset(_LAYER.findall(log)),
        log=log,
    )


def prune(buildah: Buildah, keep: Sequence[Build], base: str) -> int:
    """Remove the storage's images but the base and the images (intermediate ones too) of `keep`."""
    short = 11  # buildah prints a step's image ID with 11 digits
    kept = {b.image_id[:short] for b in keep} | {i[:short] for b in keep for i in b.step_ids}
    kept.add(buildah.inspect(base)["FromImageID"][:short])
    removed = 0
    for image in buildah.images():
        names = image["names"] or []
        if image["id"][:short] not in kept and not any(n.startswith(f"{BASE_NAME}:") for n in names):
            removed += buildah.run("rmi", image["id"], check=False).returncode == 0
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_containers(buildah: Buildah) -> None:
    """Working containers left by interrupted runs (their mounts included); not those of a running session.

    Test containers are named after the process that made them; base containers are only made under the
    lock, which the caller holds.
    """
    for container in buildah.containers():
        name = str(container.get("containername", ""))
        if name.startswith(CONTAINER_PREFIX):
            owner = name.removeprefix(CONTAINER_PREFIX).split("-")[0]
            if owner.isdigit() and _alive(int(owner)):
                continue
        elif not name.startswith("capi-image-base-"):
            continue
        buildah.run("rm", name, check=False)


@dataclass
class Container:
    """A working container of an image, to run commands in."""

    buildah: Buildah
    name: str

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = json.loads(
            self.buildah.run("inspect", "--type", "container", self.name).stdout
        )["OCIv1"]["config"]
        return config

    def run(self, *argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        """A command in the container (writable root), as the image's user."""
        return self.buildah.run(
            "run", "--isolation", "chroot", self.name, "--", *argv, timeout_s=timeout_s, check=False
        )

    def mount(self) -> Path:
        return Path(self.buildah.run("mount", self.name).stdout.strip())

    def start_read_only(
        self,
        argv: Sequence[str],
        *,
        volumes: Sequence[str],
        env: dict[str, str],
        log: TextIO,
    ) -> subprocess.Popen[bytes]:
        """`buildah run --network host` of argv with the root file system read-only.

        In a private mount namespace the container's root (kept mounted by `buildah mount`, which buildah
        run then reuses) is bind-mounted read-only; /run gets an empty root-owned tmpfs because buildah
        places and removes its /run/.containerenv there. Everything the service may write to must come
        as a volume (/tmp). buildah run ends the service (SIGKILL) when it gets SIGTERM itself, and gets
        it when the test process dies.
        """
        rootfs = self.mount()
        script = (
            'set -e; root="$1"; shift; mount --bind "$root" "$root"; '
            'mount -o remount,bind,ro "$root"; '
            'mount -t tmpfs -o mode=0755,size=1m tmpfs "$root/run"; exec "$@"'
        )
        run = ["run", "--isolation", "chroot", "--network", "host"]
        for volume in volumes:
            run += ["--volume", volume]
        for name, value in env.items():
            run += ["--env", f"{name}={value}"]
        return subprocess.Popen(
            [
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
                str(rootfs),
                *self.buildah.argv(*run, self.name, "--", *argv),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_terminate_with_parent,
        )


@contextlib.contextmanager
def container(buildah: Buildah, image: str) -> Iterator[Container]:
    name = f"{CONTAINER_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:12]}"
    buildah.run("from", "--pull=never", "--name", name, image)
    try:
        yield Container(buildah, name)
    finally:
        buildah.run("rm", name, check=False)


def processes_with_env(variable: str, value: str) -> list[int]:
    """PIDs (seen from the host) of the processes whose environment holds variable=value."""
    wanted = f"{variable}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or a kernel thread
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def proc_uids(pid: int) -> list[int]:
    """Real, effective, saved and file-system uid of a process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return [int(u) for u in line.split()[1:]]
    raise AssertionError(f"no Uid line for {pid}")


def root_mount_options(pid: int) -> set[str]:
    """The per-mount options of `/` as the process sees it (`ro` for a read-only root)."""
    options: set[str] = set()
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            options = set(fields[5].split(","))  # the last mount on / is the one seen: keep reading
    return options


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.image.buildah",
        description=f"Build {IMAGE_NAME} with buildah on the local Debian base, as the tests do.",
    )
    parser.add_argument("--no-cache", action="store_true", help="build every layer anew (a cold build)")
    args = parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install buildah mmdebstrap)", file=sys.stderr)
        return 1
    cache = image_cache_dir()
    buildah = Buildah.for_cache(cache)
    try:
        with locked(cache):
            base = make_base_image(buildah, cache)
            build = build_image(buildah, base.ref, no_cache=args.no_cache)
            prune(buildah, [build], base.ref)
    except ImageError as exc:
        print(exc, file=sys.stderr)
        return 1
    size, base_size = buildah.image_size(build.ref), buildah.image_size(base.ref)
    print(
        f"base {base.ref}: {base.how} in {base.seconds:.1f} s, {base_size / 1e6:.0f} MB\n"
        f"{build.ref} ({build.image_id[:12]}): {size / 1e6:.0f} MB ({(size - base_size) / 1e6:.0f} MB over "
        f"the base), built in {build.seconds:.1f} s ({build.cached_steps}/{build.steps} steps cached)\n"
        f"storage: buildah --root {buildah.root} --runroot {buildah.runroot}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
