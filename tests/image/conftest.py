"""The service's container image, built once per session with buildah on a local Debian base (buildah.py)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from tests.image.buildah import (
    BaseImage,
    Build,
    Buildah,
    ImageError,
    build_image,
    image_cache_dir,
    locked,
    make_base_image,
    missing_tools,
    prune,
    remove_stale_containers,
)

# What the session measured, printed at its end (`make test` shows it without -s).
REPORT: list[str] = []


@dataclass(frozen=True)
class BuiltImage:
    buildah: Buildah
    base: BaseImage
    first: Build  # this session's first build: cold, or cached from an earlier session
    warm: Build  # the same build again, every layer cached
    size: int
    base_size: int

    @property
    def ref(self) -> str:
        return self.warm.ref


@pytest.fixture(scope="session")
def built_image() -> BuiltImage:
    missing = missing_tools()
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not found: `apt-get install buildah mmdebstrap` (README, Prerequisites)",
            pytrace=False,
        )
    if os.geteuid() != 0:
        pytest.fail("building the image with buildah --isolation chroot needs root", pytrace=False)
    cache = image_cache_dir()
    buildah = Buildah.for_cache(cache)
    try:
        with locked(cache):
            remove_stale_containers(buildah)
            base = make_base_image(buildah, cache)
            first = build_image(buildah, base.ref)
            warm = build_image(buildah, base.ref)
            prune(buildah, [first, warm], base.ref)
    except ImageError as exc:
        pytest.fail(str(exc), pytrace=False)
    image = BuiltImage(buildah, base, first, warm, buildah.image_size(warm.ref), buildah.image_size(base.ref))
    made = f"mmdebstrap {base.mmdebstrap_seconds:.0f} s, " if base.mmdebstrap_seconds is not None else ""
    REPORT.extend(
        [
            f"base image {base.ref}: {base.how} ({made}{base.seconds:.0f} s in all), "
            f"{image.base_size / 1e6:.0f} MB",
            f"image {image.ref}: {image.size / 1e6:.0f} MB, {(image.size - image.base_size) / 1e6:.0f} MB "
            "over the base",
            f"build: {first.seconds:.1f} s ({first.cached_steps}/{first.steps} steps cached), "
            f"again: {warm.seconds:.1f} s ({warm.cached_steps}/{warm.steps} steps cached)",
        ]
    )
    return image


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("container image")
        for line in REPORT:
            terminalreporter.write_line(line)
