"""The piece manifest: the digest of every piece of a blob, learned as pieces leave the origin.

Piece digests are BLAKE3-256. The blob's own digest (sha256, from the manifest) is the root of trust
and is checked over every byte before a blob is committed; piece digests let a node reject a bad
piece from a peer at once, and make every byte received cost one hash more. BLAKE3 does that pass at
~5.6 GiB/s on one core here against sha256's 1.7 GiB/s (SHA-NI), with the same 128-bit collision
resistance, so the per-byte cost of a download is one sha256 pass, not two.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import blake3

from ..errors import P2pdistError
from .layout import PieceLayout

PIECE_DIGEST_SIZE = 32  # raw BLAKE3-256
PIECE_HASH = "blake3"  # recorded beside stored piece digests: digests of another kind are not reused


class ManifestError(P2pdistError, ValueError):
    """A piece digest that is malformed or contradicts one already known."""


def piece_hasher() -> blake3.blake3:
    """A hasher for one piece fed in parts (``update``, then ``digest()``)."""
    return blake3.blake3()


def piece_digest(data: bytes | bytearray | memoryview) -> bytes:
    # blake3 releases the GIL for inputs this large, so worker threads hash pieces in parallel.
    return blake3.blake3(data).digest()


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
