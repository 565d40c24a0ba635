"""Child processes for the demo: free loopback ports, start with a log file, stop by PID."""

from __future__ import annotations

import os
import socket
import subprocess
import threading
from pathlib import Path

STOP_TIMEOUT = 10.0

# Ports handed out by this process. The kernel may give a port it just handed out again once
# the probing socket is closed, and two such ports in one daemon's arguments (its peer and API
# listeners) make it exit at bind: a port is given once per process.
_given: set[int] = set()
_given_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and not handed out before by this process.

    Another process may still take it before the caller binds it; callers that start servers
    retry on that rare race.
    """
    with _given_lock:
        while True:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _given:
                _given.add(port)
                return port


def start_process(args: list[str], log: Path, *, env: dict[str, str] | None = None,
                  cwd: Path | None = None) -> subprocess.Popen:
    """Start ``args`` with stdout and stderr appended to ``log``.

    A session of its own: Ctrl-C in the terminal reaches only the demo, which then stops its
    children in order instead of having them die mid-request.
    """
    with open(log, "ab") as out:
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True)


def stop_process(proc: subprocess.Popen, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, wait, then SIGKILL: only this process, by its PID."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


def stop_all(procs: list[subprocess.Popen], timeout: float = STOP_TIMEOUT) -> None:
    """Stop several processes at once: SIGTERM to each, then wait for all, SIGKILL what lingers."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        proc.terminate()
    for proc in running:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
