"""Child processes that cannot outlive the dev stack.

Each service runs in its own process group (so SIGTERM reaches the JVM's whole tree) and, on Linux,
with PR_SET_PDEATHSIG=SIGKILL so the kernel kills it even if the dev stack itself is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now.

    SO_REUSEADDR as the JVM's (and most servers') listening sockets set it: connections of clients
    that were connected when the previous run stopped linger in TIME_WAIT on the port for a minute, and
    without it the port would look taken although the broker could bind it again.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class ManagedProcess:
    """A service process whose output goes to a log file; stop() terminates its whole group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
    ) -> None:
        """`stdout_pipe`: keep stdout readable (`self.proc.stdout`) and log only stderr."""
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[bytes] = log_path.open("ab")
        self.proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._log,
            stderr=self._log if stdout_pipe else subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal_group(self, sig: signal.Signals) -> None:
        """Send `sig` to the whole process group (SIGSTOP/SIGCONT pause and resume a JVM with its threads)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process group at once (a crash: nothing is flushed), reap it, close the log."""
        self.signal_group(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.stop()

    def terminate(self) -> None:
        """SIGTERM the process group without waiting (a paused, SIGSTOPped, group handles it too)."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
                os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout_s` seconds."""
        stop_all([self], timeout_s)

    def _finish(self, deadline: float) -> str | None:
        """Wait for the terminated group until `deadline`, then SIGKILL it; close the log.

        Returns what went wrong (for the dev stack's stderr), or None after a clean exit."""
        problem = None
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            problem = "did not exit after SIGTERM; killed"
        # SIGKILL also reaps stragglers of the group when the leader exited on its own.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            problem = "still running 10 s after SIGKILL"
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return problem

    def read_line(self, timeout_s: float) -> str:
        """One line from a `stdout_pipe` process, or "" after `timeout_s` seconds."""
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        if not ready:
            return ""
        return self.proc.stdout.readline().decode(errors="replace").strip()


def wait_until(
    ready: Callable[[], bool], *, process: ManagedProcess, timeout_s: float, interval_s: float = 0.25
) -> bool:
    """Poll `ready` until it is true; False when the process died or `timeout_s` seconds passed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive():
            return False
        try:
            if ready():
                return True
        except Exception:  # readiness probes fail in many ways while a service boots
            pass
        time.sleep(interval_s)
    return False


def stop_all(procs: Sequence[ManagedProcess], timeout_s: float = 20.0) -> list[str]:
    """Stop `procs` together: SIGTERM all at once, SIGKILL whatever still runs `timeout_s` seconds later.

    Together, so stopping a stack takes as long as its slowest service, not the sum of them. Returns one
    line per service that had to be killed (name, what happened, seconds), for the caller to report."""
    started = time.monotonic()
    for proc in procs:
        proc.terminate()
    problems = []
    for proc in procs:
        problem = proc._finish(started + timeout_s)
        if problem is not None:
            problems.append(f"{proc.name} {problem} ({time.monotonic() - started:.0f} s)")
    return problems
