"""The piece manifest: the digest of every piece of a blob, learned as pieces leave the origin.

A piece digest is the root over the BLAKE3-256 digests of the piece's 256 KiB blocks: BLAKE3, in
its key-derivation mode (a context of its own, so a root is never a block digest), of the blocks'
digests end to end. The blob's own digest (sha256, from the manifest) is the root of trust and is
checked over every byte before a blob is committed; piece digests let a node reject a bad piece
from a peer at once. With the block digests sent ahead of a piece (512 bytes for 4 MiB) a receiver
checks each block as it arrives, which is what lets a node pass a piece on before all of it is here
(simulations/README.md, "Where the excess goes": verified cut-through). The tracker, its audits and
the leases see only the per-piece root. BLAKE3 does that pass at ~5.6 GiB/s on one core here
against sha256's 1.7 GiB/s (SHA-NI), with the same 128-bit collision resistance; hashing a piece as
16 blocks costs what hashing it whole does (0.76 against 0.73 ms for 4 MiB).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import blake3

from ..errors import P2pdistError
from .layout import PieceLayout

PIECE_DIGEST_SIZE = 32  # raw BLAKE3-256
BLOCK_SIZE = 256 << 10  # verified unit inside a piece (simulated: 1.031 x the bound at 1,000 nodes, 1 MiB 1.039)
# Recorded beside stored piece digests: digests of another kind (plain BLAKE3 of the piece, before
# blocks) are not reused.
PIECE_HASH = "blake3-256k-blocks"
_ROOT_CONTEXT = "p2pdist 2026-12-07 piece root over 256 KiB block digests"


class ManifestError(P2pdistError, ValueError):
    """A piece digest that is malformed or contradicts one already known."""


def block_digests(data: bytes | bytearray | memoryview) -> bytes:
    """The piece's block digests, 32 bytes each, end to end. An empty piece has one empty block."""
    view = memoryview(data).cast("B")
    # blake3 releases the GIL for inputs this large, so worker threads hash pieces in parallel.
    return b"".join(blake3.blake3(view[o : o + BLOCK_SIZE]).digest() for o in range(0, len(view) or 1, BLOCK_SIZE))


def block_count(length: int) -> int:
    """Blocks in a piece of ``length`` bytes."""
    return max(1, -(-length // BLOCK_SIZE))


def piece_root(blocks: bytes) -> bytes:
    """The piece digest over its block digests (``block_digests``)."""
    if not blocks or len(blocks) % PIECE_DIGEST_SIZE:
        raise ManifestError(f"a block list is a positive multiple of {PIECE_DIGEST_SIZE} bytes, got {len(blocks)}")
    return blake3.blake3(blocks, derive_key_context=_ROOT_CONTEXT).digest()


def piece_digest(data: bytes | bytearray | memoryview) -> bytes:
    return piece_root(block_digests(data))


def hash_piece(data: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """(piece digest, block digests): a piece's digest, and what to send with it to a peer."""
    blocks = block_digests(data)
    return piece_root(blocks), blocks


class PieceHasher:
    """``piece_digest`` of a piece fed in parts: ``update`` in any cuts, then ``digest()`` (or
    ``blocks()``, the block digests)."""

    __slots__ = ("_block", "_digests", "_filled")

    def __init__(self) -> None:
        self._block = blake3.blake3()
        self._filled = 0  # bytes of the current block so far
        self._digests: list[bytes] = []

    def update(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B")
        while len(view):
            take = min(len(view), BLOCK_SIZE - self._filled)
            self._block.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == BLOCK_SIZE:
                self._digests.append(self._block.digest())
                self._block = blake3.blake3()
                self._filled = 0

    def blocks(self) -> bytes:
        tail = [self._block.digest()] if self._filled or not self._digests else []
        return b"".join(self._digests + tail)

    def digest(self) -> bytes:
        return piece_root(self.blocks())


def piece_hasher() -> PieceHasher:
    """A hasher for one piece fed in parts (``update``, then ``digest()``)."""
    return PieceHasher()


class PieceManifest:
    """Per-piece digests; entries are None until someone authoritative reports them.

    Sparse (a dict of the known ones): a tracker keeps one per blob from the first announce, and a
    list per piece made 4,096 announces of 1 TiB blobs cost gigabytes before any digest was known.
    """

    __slots__ = ("_digests", "_known", "layout")

    def __init__(self, layout: PieceLayout, digests: Iterable[tuple[int, bytes]] = ()) -> None:
        self.layout = layout
        self._digests: dict[int, bytes] = {}
        self._known = 0
        for index, digest in digests:
            self.set(index, digest)

    def _check(self, index: int) -> None:
        if not 0 <= index < self.layout.count:
            raise ManifestError(f"piece {index} outside 0..{self.layout.count - 1}")

    def set(self, index: int, digest: bytes) -> bool:
        """Record a digest; True if new. A different digest for a known piece is an error."""
        self._check(index)
        if not isinstance(digest, bytes) or len(digest) != PIECE_DIGEST_SIZE:
            raise ManifestError(f"piece digest for {index} must be {PIECE_DIGEST_SIZE} raw bytes")
        current = self._digests.get(index)
        if current is not None:
            if current != digest:
                raise ManifestError(f"conflicting digest for piece {index}")
            return False
        self._digests[index] = digest
        self._known += 1
        return True

    def forget(self, index: int) -> None:
        """Drop a learned digest (the origin's bytes contradicted it) before the piece is stored."""
        self._check(index)
        if self._digests.pop(index, None) is not None:
            self._known -= 1

    def get(self, index: int) -> bytes | None:
        self._check(index)
        return self._digests.get(index)

    def known(self, index: int) -> bool:
        self._check(index)
        return index in self._digests

    def verify(self, index: int, data: bytes | memoryview) -> bool:
        """True only if the digest is known and the data matches it and the piece's length."""
        self._check(index)
        expected = self._digests.get(index)
        if expected is None or len(data) != self.layout.length(index):
            return False
        return piece_digest(data) == expected

    def items(self) -> Iterator[tuple[int, bytes]]:
        """The known digests, by piece index."""
        for i in sorted(self._digests):
            yield i, self._digests[i]

    @property
    def complete(self) -> bool:
        return self._known == self.layout.count

    def __len__(self) -> int:
        return self._known
