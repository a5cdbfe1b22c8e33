"""Shopify's toxiproxy: the server process (built by get-toxiproxy.sh) and a small client of its HTTP API.

No client library: the harness needs six calls of a stable JSON API (create a proxy, enable/disable it,
add/remove a toxic, reset), which urllib covers in a few lines; the Python clients on PyPI are
unmaintained and would be a dependency for that alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from capi_devstack.processes import ManagedProcess, free_port, wait_until

GET_TOXIPROXY = Path(__file__).resolve().parent / "get-toxiproxy.sh"


def toxiproxy_binary() -> Path:
    """Path of toxiproxy-server, built once into the cache (about 10 s with a warm Go module cache)."""
    out = subprocess.run([str(GET_TOXIPROXY)], capture_output=True, text=True, check=False, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"get-toxiproxy.sh failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


class Toxiproxy:
    """A toxiproxy-server on 127.0.0.1 and its API. Proxies listen on 127.0.0.1 ports of our choosing."""

    def __init__(self, log_path: Path) -> None:
        self.api_port = free_port()
        self.url = f"http://127.0.0.1:{self.api_port}"
        argv = [str(toxiproxy_binary()), "-host", "127.0.0.1", "-port", str(self.api_port)]
        self.process = ManagedProcess("toxiproxy", argv, log_path, env={**os.environ, "LOG_LEVEL": "warn"})
        if not wait_until(
            lambda: self._call("GET", "/version") is not None, process=self.process, timeout_s=30
        ):
            self.process.stop()
            raise RuntimeError(f"toxiproxy did not start:\n{self.process.log_tail()}")

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"toxiproxy {method} {path}: {exc.code} {exc.read()[:500]!r}") from exc
        try:
            return json.loads(raw) if raw else {}
        except ValueError:  # /version answers plain text
            return raw.decode()

    def create(self, name: str, listen_port: int, upstream: str) -> str:
        """A proxy 127.0.0.1:`listen_port` -> `upstream` (host:port); returns its listen address."""
        listen = f"127.0.0.1:{listen_port}"
        self._call(
            "POST", "/proxies", {"name": name, "listen": listen, "upstream": upstream, "enabled": True}
        )
        return listen

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Disabled: open connections are closed and new ones refused (a cut link)."""
        self._call("POST", f"/proxies/{name}", {"enabled": enabled})

    def add_toxic(
        self, proxy: str, kind: str, stream: str = "downstream", toxicity: float = 1.0, **attributes: int
    ) -> str:
        """A toxic (latency, bandwidth, timeout, reset_peer, limit_data, slicer, slow_close) on one
        direction: downstream = answers to the client, upstream = requests. Returns its name."""
        name = f"{kind}_{stream}"
        body = {"name": name, "type": kind, "stream": stream, "toxicity": toxicity, "attributes": attributes}
        self._call("POST", f"/proxies/{proxy}/toxics", body)
        return name

    def remove_toxic(self, proxy: str, toxic: str) -> None:
        self._call("DELETE", f"/proxies/{proxy}/toxics/{toxic}")

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self._call("POST", "/reset")

    def stop(self) -> None:
        self.process.stop()
