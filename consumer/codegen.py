"""Python source generated at start-up (the mapping's and the Avro readers' specialized functions)."""

from __future__ import annotations

from typing import Any


class Code:
    """Python source being generated, and the namespace it runs in."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.namespace = namespace
        self._names = 0

    def const(self, value: Any) -> str:
        """A name bound to `value` in the namespace (configured values never enter the source)."""
        name = f"_k{self._names}"
        self._names += 1
        self.namespace[name] = value
        return name

    def var(self, stem: str) -> str:
        self._names += 1
        return f"{stem}{self._names}"

    def __call__(self, indent: int, line: str) -> None:
        self.lines.append("    " * indent + line)

    @property
    def source(self) -> str:
        return "\n".join(self.lines) + "\n"

    def run(self, filename: str) -> dict[str, Any]:
        """Execute the source in the namespace (`filename` names it in tracebacks); returns the namespace."""
        exec(compile(self.source, filename, "exec"), self.namespace)
        return self.namespace
