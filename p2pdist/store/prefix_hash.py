"""The whole-blob hash of a download, kept up to date by one thread of its own.

A blob is committed only after sha256 over all its bytes matches its digest. That hash is one
sequential chain, so it can only follow the contiguous prefix of stored pieces. It used to be
advanced by whichever writer stored the next piece, in that writer's thread: a stream of origin
bytes then stopped receiving while it hashed other streams' pieces (read back with ``pread``, one
copy more), and the registry sat idle meanwhile (perf, 1 GiB alone: 22 % of the CPUs idle).

Here one thread per download hashes the prefix as pieces land, straight from the page cache through
a read-only ``mmap`` (no copy: as fast as hashing from memory, measured 0.60 s/GiB either way,
against 0.75 s with ``pread``). Writers only say that a piece landed. By the time the last piece is
written, the hash is usually a piece behind.
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Callable
from typing import Any

from p2pdist.core.layout import PieceLayout

from .common import CorruptData, _hash_range

_MAP_FLAGS = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)  # populate: one fault pass, not 2,048
_MIN_MAP = 256 << 10  # below this a pread costs less than setting up a mapping


def hash_span(fd: int, offset: int, length: int, hasher: Any) -> None:
    """Feed bytes [offset, offset + length) of ``fd`` to ``hasher`` from the page cache, without a copy.

    A file shorter than the span was truncated behind our back: CorruptData, checked before mapping
    because touching a mapped page past the end of a file is SIGBUS, not an error.
    """
    if length <= 0:
        return
    if os.fstat(fd).st_size < offset + length:
        raise CorruptData(f"short file: bytes {offset}..{offset + length} are not there (truncated)")
    if length < _MIN_MAP:
        _hash_range(fd, offset, length, [hasher])
        return
    skip = offset % mmap.ALLOCATIONGRANULARITY  # a mapping starts on a page; pieces of tests may not
    with (mmap.mmap(fd, skip + length, flags=_MAP_FLAGS, prot=mmap.PROT_READ, offset=offset - skip) as mapped,
          memoryview(mapped) as view, view[skip:] as span):
        hasher.update(span)  # hashlib releases the GIL for buffers this large


class PrefixHasher:
    """Hashes pieces [0, prefix) of a download into ``hasher``, in a thread, as ``present`` allows.

    ``present(i)`` says whether piece i is stored (verified and written). ``landed()`` wakes the
    thread; ``result()`` waits for the whole blob and returns the hasher; ``stop()`` ends the thread
    (the download is closed or discarded). The thread exists only while there is work.
    """

    def __init__(self, fd: int, layout: PieceLayout, hasher: Any, prefix: int,
                 present: Callable[[int], bool]) -> None:
        self._fd = fd
        self._layout = layout
        self._hasher = hasher
        self._prefix = prefix
        self._present = present
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._stopped = False
        self._idle = True  # no thread, or it waits for the piece at the prefix
        self._error: CorruptData | None = None

    @property
    def prefix(self) -> int:
        """Pieces [0, n) already folded into the hash."""
        return self._prefix

    def landed(self) -> None:
        """A piece was stored: hash forward from the prefix if that made it longer."""
        with self._cond:
            if self._stopped or self._error is not None:
                return
            if self._prefix >= self._layout.count or not self._present(self._prefix):
                return  # a piece past a hole: the hash cannot take it yet
            self._idle = False  # work to do: settle() waits for it
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="prefix-hash", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _run(self) -> None:
        count = self._layout.count
        while True:
            with self._cond:
                while not self._stopped and self._prefix < count and not self._present(self._prefix):
                    self._idle = True
                    self._cond.notify_all()
                    self._cond.wait()
                self._idle = False
                if self._stopped or self._prefix >= count:
                    self._idle = True
                    self._thread = None
                    self._cond.notify_all()
                    return
                index = self._prefix
            offset, length = self._layout.span(index)
            try:
                hash_span(self._fd, offset, length, self._hasher)
            except (CorruptData, OSError, ValueError) as e:
                with self._cond:
                    why = e if isinstance(e, CorruptData) else CorruptData(f"cannot read back piece {index}: {e}")
                    self._error = why
                    self._idle = True
                    self._thread = None
                    self._cond.notify_all()
                return
            with self._cond:
                self._prefix = index + 1
                self._cond.notify_all()

    def settle(self) -> int:
        """Wait until everything stored so far is hashed (the thread waits for a hole, or is done);
        returns the prefix. For tests and for readers that want a stable figure."""
        with self._cond:
            while not self._idle:
                self._cond.wait()
            return self._prefix

    def result(self) -> Any:
        """The hasher once every piece is in it: waits for the thread, or hashes what it left.

        Raises CorruptData if the data file cannot be read back. Every piece must be present.
        """
        with self._cond:
            while self._thread is not None and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise self._error
            self._stopped = True  # no thread from here on: the rest is hashed in this one
        while self._prefix < self._layout.count:
            offset, length = self._layout.span(self._prefix)
            try:
                hash_span(self._fd, offset, length, self._hasher)
            except OSError as e:
                raise CorruptData(f"cannot read back piece {self._prefix}: {e}") from e
            self._prefix += 1
        return self._hasher

    def stop(self) -> None:
        """No more hashing: the download is closing. Returns once the thread has let go of the file."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
            while self._thread is not None:
                self._cond.wait()
