"""The block digests the peer server sends with each piece (core.blocks), kept for the pieces asked most.

A piece's block digests are known where it was just verified (the peer it came from sent them, or
the origin reader hashed it block by block): those are kept here. Any other piece (a blob stored
before, or one that left this cache) is hashed again from its bytes when it is asked for, in a
worker thread: 4 MiB costs ~1 ms of BLAKE3 and a read from the page cache, once, since the answer
is kept. Fresh pieces are the ones a swarm asks for, so most requests find theirs here.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import OrderedDict
from collections.abc import Callable

from p2pdist.core.manifest import block_digests

from ..store import read_range


class BlockLists:
    """A least-recently-used map (blob, offset, length) -> block digests, bounded in bytes.

    Filled from worker threads (origin reads) and the loop, read on the loop: one lock.
    """

    def __init__(self, capacity: int = 8 << 20, on_hash: Callable[[], None] | None = None) -> None:
        self.capacity = capacity  # bytes of digests: 8 MiB covers 64 GiB of 4 MiB pieces
        self._on_hash = on_hash  # a piece was hashed again (a metric)
        self._lists: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hashed = 0  # pieces hashed again on request (the cache's misses)

    def put(self, blob: str, offset: int, length: int, blocks: bytes) -> None:
        key = (blob, offset, length)
        with self._lock:
            old = self._lists.pop(key, None)
            if old is not None:
                self._bytes -= len(old)
            self._lists[key] = blocks
            self._bytes += len(blocks)
            while self._bytes > self.capacity and self._lists:
                _, dropped = self._lists.popitem(last=False)
                self._bytes -= len(dropped)

    def get(self, blob: str, offset: int, length: int) -> bytes | None:
        key = (blob, offset, length)
        with self._lock:
            blocks = self._lists.get(key)
            if blocks is not None:
                self._lists.move_to_end(key)
            return blocks

    def forget(self, blob: str) -> None:
        """The blob left this node: its lists go too (a later copy may be cut otherwise)."""
        with self._lock:
            for key in [k for k in self._lists if k[0] == blob]:
                self._bytes -= len(self._lists.pop(key))

    async def for_range(self, blob: str, path: os.PathLike[str] | str, offset: int, length: int) -> bytes:
        """The block digests of bytes [offset, offset + length) of ``blob``, stored at ``path``.
        Raises store.CorruptData if the file is shorter than that (it was truncated behind our back)."""
        blocks = self.get(blob, offset, length)
        if blocks is None:
            blocks = await asyncio.to_thread(_hash_file_range, path, offset, length)
            self.hashed += 1
            if self._on_hash is not None:
                self._on_hash()
            self.put(blob, offset, length, blocks)
        return blocks


def _hash_file_range(path: os.PathLike[str] | str, offset: int, length: int) -> bytes:
    return block_digests(read_range(path, offset, length))
