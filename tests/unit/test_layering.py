"""Who may import whom, read from the source with `ast` (nothing is imported).

- the service (`consumer`) never imports the tooling (`capi_emulator`, `capi_devstack`);
- the emulator imports neither the service nor the dev stack (it stands in for Meta, not for us);
- the pure modules (mapping, normalization, validation and what they rely on) do no I/O: neither they
  nor any `consumer` module they import, directly or through others, imports a network library or one
  of the service's I/O modules;
- the run loop (`consumer.pipeline`) imports no Kafka or HTTP client itself: it reads records through
  the `Source` protocol and sends through the deliverer.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE_DIRS = {
    "consumer": REPO / "consumer",
    "capi_emulator": REPO / "tools" / "capi_emulator",
    "capi_devstack": REPO / "tools" / "capi_devstack",
}
TOOLING = ("capi_emulator", "capi_devstack")
PURE = (
    "consumer.canonical",
    "consumer.mapping",
    "consumer.normalize",
    "consumer.validate",
    "consumer.avro_json",
    "consumer.us_states",
    "consumer.avro_reader",
    "consumer.codegen",
)
LOOP = "consumer.pipeline"
NETWORK = ("confluent_kafka", "aiohttp", "requests", "urllib", "socket", "http")
# URL parsing is string handling (consumer.validate checks event_source_url with it).
NOT_NETWORK = ("urllib.parse",)
IO_MODULES = (
    "consumer.source",
    "consumer.deliver",
    "consumer.dlq",
    "consumer.app",
    "consumer.pipeline",
    "consumer.health",
    "consumer.dlq_monitor",
)

Graph = Mapping[str, Iterable[str]]


def imports_of(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """Absolute names of everything `source` (the text of `module`) imports, at any depth.

    Imports inside functions and `if TYPE_CHECKING:` count, relative imports are resolved, and
    `__import__("x")` / `importlib.import_module("x")` with a literal name count too. For
    `from x import y` the name is `x.y`: a submodule or an attribute of x, the checks treat it as
    being inside x.
    """
    names: list[str] = []
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names += [base if alias.name == "*" else f"{base}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            called = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if called in ("__import__", "import_module") and isinstance(node.args[0].value, str):
                names.append(node.args[0].value)
    return names


def within(name: str, prefixes: Iterable[str]) -> bool:
    """`name` is one of `prefixes` or inside one of them (`a.b` is inside `a`, `ab` is not)."""
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def forbidden(imported: Iterable[str], banned: Iterable[str], allowed: Iterable[str] = ()) -> list[str]:
    banned, allowed = tuple(banned), tuple(allowed)
    return sorted({n for n in imported if within(n, banned) and not within(n, allowed)})


@functools.cache
def load_graph() -> Mapping[str, list[str]]:
    """Every module of the three packages -> what it imports (read once)."""
    graph: dict[str, list[str]] = {}
    for package, root in PACKAGE_DIRS.items():
        for path in sorted(root.rglob("*.py")):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            is_package = parts[-1] == "__init__"
            module = ".".join(parts[:-1] if is_package else parts)
            graph[module] = imports_of(path.read_text(encoding="utf-8"), module, is_package=is_package)
    return graph


def _modules_behind(name: str, graph: Graph) -> list[str]:
    """The first-party modules that importing `name` runs: its longest known module and the packages above."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1) if ".".join(parts[:i]) in graph]


def reachable(start: str, graph: Graph) -> dict[str, list[str]]:
    """The first-party modules `start` imports, directly or through others -> one import chain to each."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        module = todo.pop()
        for name in graph[module]:
            for target in _modules_behind(name, graph):
                if target not in chains:
                    chains[target] = [*chains[module], target]
                    todo.append(target)
    return chains


def io_violations(start: str, graph: Graph) -> list[str]:
    """Import chains from the pure module `start` to a network library or a service I/O module."""
    found = []
    for module, chain in sorted(reachable(start, graph).items()):
        for name in forbidden(graph[module], (*NETWORK, *IO_MODULES, *TOOLING), NOT_NETWORK):
            found.append(" -> ".join([*chain, name]))
    return found


def layering_violations(graph: Graph) -> list[str]:
    """Every broken rule of the module docstring, one line each; [] when the layering holds."""
    problems: list[str] = []
    for module, imported in sorted(graph.items()):
        if within(module, ["consumer"]):
            problems += [f"{module} imports the tooling: {n}" for n in forbidden(imported, TOOLING)]
        if within(module, ["capi_emulator"]):
            problems += [
                f"{module} imports {n}: the emulator is independent"
                for n in forbidden(imported, ["consumer", "capi_devstack"])
            ]
    for module in PURE:
        problems += [f"pure module does I/O: {chain}" for chain in io_violations(module, graph)]
    problems += [
        f"the run loop imports a client: {n}" for n in forbidden(graph.get(LOOP, []), NETWORK, NOT_NETWORK)
    ]
    return problems


@pytest.fixture(scope="module")
def graph() -> Mapping[str, list[str]]:
    return load_graph()


def test_every_package_is_read(graph: Mapping[str, list[str]]) -> None:
    for module in (
        *PURE,
        *IO_MODULES,
        "consumer",
        "consumer.cli",
        "consumer.commands.map_cmd",
        "capi_emulator",
        "capi_emulator.app",
        "capi_devstack",
        "capi_devstack.stack",
        "capi_devstack.demo",
        "capi_devstack.samples",
    ):
        assert module in graph, f"{module} not found under {REPO}"


def test_the_service_package_holds_no_tooling(graph: Mapping[str, list[str]]) -> None:
    old_homes = ("consumer.emulator", "consumer.devstack", "consumer.demo", "consumer.samples")
    assert [m for m in graph if within(m, old_homes)] == []


def test_the_layering_holds(graph: Mapping[str, list[str]]) -> None:
    assert layering_violations(graph) == []


def test_the_pure_modules_rely_on_more_than_themselves(graph: Mapping[str, list[str]]) -> None:
    # The transitive check is not vacuous: mapping reaches normalize, validate and config.
    reached = reachable("consumer.mapping", graph)
    assert {"consumer.normalize", "consumer.validate", "consumer.config", "consumer.us_states"} <= set(
        reached
    )
    assert reached["consumer.us_states"][0] == "consumer.mapping"


def _synthetic(modules: dict[str, str]) -> dict[str, list[str]]:
    """The real modules, with the source of `modules` in place of theirs."""
    graph = dict(load_graph())
    for module, source in modules.items():
        graph[module] = imports_of(source, module, is_package=module in ("consumer", *TOOLING))
    return graph


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("consumer.cli", "import capi_emulator.app", "consumer.cli imports the tooling: capi_emulator.app"),
        (
            "consumer.commands.map_cmd",
            "def f():\n    from capi_devstack import samples\n",
            "consumer.commands.map_cmd imports the tooling: capi_devstack.samples",
        ),
        (
            "capi_emulator.app",
            "from consumer.normalize import Normalizer",
            "capi_emulator.app imports consumer.normalize.Normalizer: the emulator is independent",
        ),
        (
            "capi_emulator.store",
            "import capi_devstack",
            "capi_emulator.store imports capi_devstack: the emulator is independent",
        ),
        (
            "consumer.mapping",
            "from consumer.source import KafkaSource",
            "pure module does I/O: consumer.mapping -> consumer.source.KafkaSource",
        ),
        (
            "consumer.normalize",
            "from . import deliver",
            "pure module does I/O: consumer.normalize -> consumer.deliver",
        ),
        (
            "consumer.validate",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import aiohttp\n",
            "pure module does I/O: consumer.validate -> aiohttp",
        ),
        (
            "consumer.avro_json",
            "def f():\n    return __import__('socket')\n",
            "pure module does I/O: consumer.avro_json -> socket",
        ),
        (
            "consumer.us_states",
            "from urllib import request",
            "pure module does I/O: consumer.us_states -> urllib.request",
        ),
        (
            "consumer.pipeline",
            "from confluent_kafka import KafkaError",
            "the run loop imports a client: confluent_kafka.KafkaError",
        ),
        # Through another module: config is not pure itself, but mapping relies on it.
        (
            "consumer.config",
            "import confluent_kafka",
            "pure module does I/O: consumer.mapping -> consumer.config -> confluent_kafka",
        ),
    ],
)
def test_a_broken_rule_is_reported(module: str, source: str, expected: str) -> None:
    assert expected in layering_violations(_synthetic({module: source}))


def test_url_parsing_is_not_network_io() -> None:
    graph = _synthetic({"consumer.validate": "from urllib.parse import urlsplit\nfrom urllib import parse\n"})
    assert layering_violations(graph) == []


def test_relative_imports_resolve_against_the_package() -> None:
    assert imports_of("from . import x\nfrom .y import z", "consumer.commands.map_cmd") == [
        "consumer.commands.x",
        "consumer.commands.y.z",
    ]
    assert imports_of("from .. import app", "consumer.commands", is_package=True) == ["consumer.app"]
    assert imports_of("from .errors import ApiError", "capi_emulator", is_package=True) == [
        "capi_emulator.errors.ApiError"
    ]
