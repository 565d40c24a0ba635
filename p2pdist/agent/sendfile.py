"""File bytes to an HTTP client: a FileResponse a handler can send itself, and a copying sender.

sendfile hands the client page-cache pages that are cold in the CPU's caches. A client on the
same host that hashes and writes what it reads (every container runtime verifies digests) is faster
with bytes just copied through a small buffer, which arrive hot. Measured on loopback, 256 MiB to a
reader hashing in 32 KiB steps as containers/image does: sendfile 0.50 s, copied 0.45 s
(docker-registry, which copies in 32 KiB writes: 0.44 s); `skopeo copy` of a warm 336 MiB image
through the mirror: 1.10x the registry's time with sendfile, 1.01x copied. Peers on other hosts read
over a real network, where sendfile's saved copy counts: the peer server keeps sendfile.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import IO, Any

from aiohttp import web
from aiohttp.abc import AbstractStreamWriter

COPY_CHUNK = 256 << 10  # small enough to stay in the CPU's caches between our copy and the client's


async def copy_range(fd: int, offset: int, count: int, write: Callable[[bytes], Awaitable[None]]) -> None:
    """Send ``count`` bytes of ``fd`` from ``offset`` through ``write``, COPY_CHUNK at a time.

    A chunk in the page cache is read on the event loop (RWF_NOWAIT: no thread hop for what was just
    written or recently read); one that would wait for the disk is read in a worker thread.
    """
    end = offset + count
    while offset < end:
        # A fresh buffer each time: the transport may keep it queued while we read the next.
        chunk = bytearray(min(COPY_CHUNK, end - offset))
        try:
            n = os.preadv(fd, [chunk], offset, os.RWF_NOWAIT)
        except BlockingIOError:
            n = await asyncio.to_thread(os.preadv, fd, [chunk], offset)
        if n <= 0:
            raise ConnectionAbortedError(f"file ended at {offset}, {end - offset} bytes short")
        await write(chunk if n == len(chunk) else chunk[:n])
        offset += n


class SentFile(web.FileResponse):
    """aiohttp's FileResponse (Range, HEAD, conditional requests), safe to prepare inside the handler.

    aiohttp prepares a returned response again; FileResponse would then try to send a second
    status line, fail, and drop the keep-alive connection. Preparing twice is a no-op here.
    ``copy=True``: copied through a small buffer instead of sendfile (a client on this host).
    """

    def __init__(self, *args: Any, copy: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._copy = copy

    async def prepare(self, request: web.BaseRequest):
        if self.prepared:
            return None
        return await super().prepare(request)

    async def _sendfile(self, request: web.BaseRequest, fobj: IO[Any], offset: int,
                        count: int) -> AbstractStreamWriter:
        if not self._copy:
            return await super()._sendfile(request, fobj, offset, count)
        writer = await web.StreamResponse.prepare(self, request)
        assert writer is not None
        await copy_range(fobj.fileno(), offset, count, writer.write)
        await writer.drain()
        return writer
