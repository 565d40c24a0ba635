"""The piece manifest: the sha256 of every piece of a blob, learned as pieces leave the origin."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator

from .layout import PieceLayout

PIECE_DIGEST_SIZE = 32  # raw sha256


class ManifestError(ValueError):
    """A piece digest that is malformed or contradicts one already known."""


def piece_digest(data: bytes | memoryview) -> bytes:
    return hashlib.sha256(data).digest()


class PieceManifest:
    """Per-piece sha256 digests; entries are None until someone authoritative reports them."""

    __slots__ = ("_digests", "_known", "layout")

    def __init__(self, layout: PieceLayout, digests: Iterable[tuple[int, bytes]] = ()) -> None:
        self.layout = layout
        self._digests: list[bytes | None] = [None] * layout.count
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
        current = self._digests[index]
        if current is not None:
            if current != digest:
                raise ManifestError(f"conflicting digest for piece {index}")
            return False
        self._digests[index] = digest
        self._known += 1
        return True

    def get(self, index: int) -> bytes | None:
        self._check(index)
        return self._digests[index]

    def known(self, index: int) -> bool:
        self._check(index)
        return self._digests[index] is not None

    def verify(self, index: int, data: bytes | memoryview) -> bool:
        """True only if the digest is known and the data matches it and the piece's length."""
        self._check(index)
        expected = self._digests[index]
        if expected is None or len(data) != self.layout.length(index):
            return False
        return piece_digest(data) == expected

    def items(self) -> Iterator[tuple[int, bytes]]:
        for i, d in enumerate(self._digests):
            if d is not None:
                yield i, d

    @property
    def complete(self) -> bool:
        return self._known == self.layout.count

    def __len__(self) -> int:
        return self._known
