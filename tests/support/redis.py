"""A real redis-server for tests (Debian's package): started on a free port, stopped by PID."""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from tests.support.procs import Proc
from tests.support.registry import free_port


class RedisServer(Proc):
    """``redis-server`` with no persistence, on 127.0.0.1; ``url`` for the trackers."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `bash scripts/setup.sh` "
                               "(Debian package redis-server)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        super().__init__([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                          "--appendonly", "no", "--dir", str(workdir), "--daemonize", "no"], workdir / "redis.log")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, deadline: float = 15.0) -> RedisServer:
        super().start()
        self.until_ready(lambda: self._ping(deadline))
        return self

    def _ping(self, deadline: float) -> None:
        assert self.popen is not None
        end = time.monotonic() + deadline
        while time.monotonic() < end:  # bounded poll until it answers PING
            if self.popen.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.popen.returncode}: {self.output()[-500:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError(f"redis-server on port {self.port} did not answer within {deadline}s")
