"""Verified cut-through: a piece passed on to askers while it still arrives, block by block.

A piece coming from a peer is checked one 256 KiB block at a time (core.blocks). From its first good
block on, the download machine may offer it to the neighbours (``Download.piece_arriving``), and
their requests are answered from here: the piece's block digests first, then each block once it
has checked out, as it does. Nothing unchecked leaves the node. Should the piece fail (its sender
lies, stalls or goes away), the answers in progress are cut off, and the askers fail the request
without blaming this node more than for any failed transfer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ..errors import P2pdistError


class RelayFailed(P2pdistError):
    """The piece being passed on did not arrive whole here: the answer is cut off."""


class Relay:
    """One piece arriving from a peer: the bytes checked so far, and the askers waiting for more."""

    __slots__ = ("_waiters", "blob_size", "blocks", "checked", "data", "failed", "length")

    def __init__(self, blocks: bytes, length: int, blob_size: int) -> None:
        self.blocks = blocks  # the piece's block digests, checked against its digest
        self.length = length
        self.blob_size = blob_size
        self.data = bytearray()  # the arriving piece (its receiver's buffer): bytes [0, checked) are good
        self.checked = 0
        self.failed = False
        self._waiters: list[asyncio.Future[None]] = []

    def progress(self, data: bytearray, checked: int) -> None:
        """The receiver checked the piece up to ``checked``; ``data`` holds at least that much."""
        self.data = data
        self.checked = checked
        self._wake()

    def fail(self) -> None:
        """The piece will not arrive whole here (no-op once it did)."""
        if self.checked < self.length:
            self.failed = True
            self._wake()

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    async def stream(self, write: Callable[[bytearray], Awaitable[None]]) -> None:
        """Send the piece through ``write`` as it checks out; raises RelayFailed if it does not."""
        sent = 0
        while sent < self.length:
            while self.checked <= sent and not self.failed:
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.append(waiter)
                await waiter
            if self.failed:
                raise RelayFailed(f"the piece stopped arriving after {self.checked} of {self.length} bytes")
            end = self.checked
            # One copy (a bytearray slice): the receiver's buffer grows while this waits on the
            # asker's socket. bytes() of the slice copied every relayed byte twice.
            await write(self.data[sent:end])
            sent = end
