"""A piece's block digests on the wire, and checking a piece block by block as it arrives.

A peer answering a piece request sends the piece's block digests (``core.manifest.block_digests``)
in the ``P2pdist-Blocks`` header, base64. The asker checks first that they make the piece digest it
knows from the tracker (``piece_root``), then each 256 KiB block against its digest as the block
lands. A peer that sends a bad piece is caught at its first bad block instead of after the whole
piece, and a node can pass on the blocks it has checked before the rest arrive (verified
cut-through, simulations/README.md "Where the excess goes").
"""

from __future__ import annotations

import base64
import binascii

import blake3

from ..errors import P2pdistError
from .layout import MAX_PIECE_SIZE
from .manifest import BLOCK_SIZE, PIECE_DIGEST_SIZE, block_count, piece_root

HEADER = "P2pdist-Blocks"
# The longest header a piece can need (16 MiB: 64 digests, 2,732 characters); anything longer is refused
# before it is decoded.
MAX_HEADER = 4 * ((block_count(MAX_PIECE_SIZE) * PIECE_DIGEST_SIZE + 2) // 3)


class BlockError(P2pdistError):
    """A peer's block digests or bytes do not check out against the piece digest."""


class MissingBlocks(BlockError):
    """The answer carried no block digests (a peer of another version, or not a whole piece)."""


class BadBlocks(BlockError):
    """The block digests are malformed or do not make the piece digest: the peer lied."""


class BadBlock(BlockError):
    """A block's bytes do not match its digest: the peer lied."""


def encode(blocks: bytes) -> str:
    return base64.b64encode(blocks).decode("ascii")


def decode(text: str | None, length: int, expected: bytes) -> bytes:
    """The block digests a peer sent for a piece of ``length`` bytes whose digest is ``expected``."""
    if text is None:
        raise MissingBlocks(f"no {HEADER} header with the piece")
    if len(text) > MAX_HEADER:
        raise BadBlocks(f"{HEADER} is {len(text)} characters, more than a piece ever needs ({MAX_HEADER})")
    try:
        blocks = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadBlocks(f"{HEADER} is not base64") from None
    want = block_count(length) * PIECE_DIGEST_SIZE
    if len(blocks) != want:
        raise BadBlocks(f"{HEADER} carries {len(blocks)} bytes of digests, a {length}-byte piece has {want}")
    if piece_root(blocks) != expected:
        raise BadBlocks(f"the digests in {HEADER} do not make the piece's digest")
    return blocks


class BlockCheck:
    """Checks a piece's bytes block by block while they arrive; ``checked`` bytes are verified."""

    __slots__ = ("blocks", "checked", "length")

    def __init__(self, blocks: bytes, length: int) -> None:
        self.blocks = blocks
        self.length = length
        self.checked = 0

    def advance(self, data: bytes | bytearray | memoryview) -> int:
        """Check every block ``data`` (the piece's first bytes, as far as they came) now completes;
        returns the bytes verified so far. Raises BadBlock at the first bad one."""
        have = min(len(data), self.length)
        view = memoryview(data)
        try:
            while self.checked < self.length:
                end = min(self.checked + BLOCK_SIZE, self.length)
                if end > have:
                    break
                k = self.checked // BLOCK_SIZE
                if blake3.blake3(view[self.checked:end]).digest() != self.blocks[k * 32:(k + 1) * 32]:
                    raise BadBlock(f"block {k} (bytes {self.checked}-{end - 1}) does not match its digest")
                self.checked = end
        finally:
            view.release()  # a bytearray with a live view cannot grow: the caller appends the next bytes
        if self.length == 0 and blake3.blake3(b"").digest() != self.blocks[:32]:
            raise BadBlock("the empty block does not match its digest")  # an empty piece has one empty block
        return self.checked

    @property
    def done(self) -> bool:
        return self.checked >= self.length
