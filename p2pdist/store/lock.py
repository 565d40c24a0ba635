"""One owner per store directory: the daemon, or an offline `p2pdist cache`/`import` run.

A ``Store`` keeps its index in memory, so two processes changing one directory would each believe
their own picture (a blob the other removed, usage the other filled). The daemon holds this lock
for as long as it runs; the command line works on the directory directly only when it gets the
lock, and otherwise goes through the daemon's API. ``flock`` dies with its process, so a daemon
killed with -9 leaves nothing stale behind.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Self

from .common import StoreError

LOCK_FILE = ".lock"


class StoreLocked(StoreError):
    """Another process (normally the daemon) owns the store directory."""


class StoreLock:
    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_FILE
        self._fd = -1

    def acquire(self) -> Self:
        """Take the lock without waiting; StoreLocked if another process holds it."""
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(f"the store at {self.path.parent} is in use by another process "
                              "(a running p2pdist daemon)") from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1

    def __enter__(self) -> Self:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
