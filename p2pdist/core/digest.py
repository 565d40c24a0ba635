"""OCI content digests: parsing per the OCI grammar and streaming verification."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from ..errors import P2pdistError

# Only registered algorithms with their exact encoded lengths: anything else could be a path
# traversal attempt or a typo, and we never want it near the filesystem.
_ALGORITHMS = {"sha256": 64, "sha512": 128}
_ENCODED = re.compile(r"[a-f0-9]+")


class DigestError(P2pdistError, ValueError):
    """A digest string that is not a valid OCI sha256/sha512 digest."""


class DigestMismatch(P2pdistError):
    """Content did not hash to the digest it claimed."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"content digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


@dataclass(frozen=True, slots=True)
class Digest:
    algorithm: str
    encoded: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        if not isinstance(text, str):
            raise DigestError(f"digest must be a string, got {type(text).__name__}")
        algorithm, sep, encoded = text.partition(":")
        if not sep:
            raise DigestError(f"invalid digest {text[:80]!r}: expected 'algorithm:hex'")
        length = _ALGORITHMS.get(algorithm)
        if length is None:
            raise DigestError(
                f"invalid digest {text[:80]!r}: unsupported algorithm {algorithm[:20]!r}"
                " (use sha256 or sha512)"
            )
        if len(encoded) != length or not _ENCODED.fullmatch(encoded):
            raise DigestError(
                f"invalid digest {text[:80]!r}: {algorithm} needs {length} lowercase hex characters"
            )
        return cls(algorithm, encoded)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def hasher(self) -> hashlib._Hash:
        return hashlib.new(self.algorithm)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.encoded}"


class Verifier:
    """Hashes content as it streams by and checks it against the expected digest at the end."""

    def __init__(self, expected: Digest) -> None:
        self.expected = expected
        self._hash = expected.hasher()
        self.size = 0

    def update(self, chunk: bytes | memoryview) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def actual(self) -> Digest:
        return Digest(self.expected.algorithm, self._hash.hexdigest())

    def verified(self) -> bool:
        return self.actual() == self.expected

    def check(self) -> None:
        actual = self.actual()
        if actual != self.expected:
            raise DigestMismatch(str(self.expected), str(actual))
