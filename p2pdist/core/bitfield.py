"""Bitfields: which pieces of a blob a node has, MSB-first like BitTorrent."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from ..errors import P2pdistError


class BitfieldError(P2pdistError, ValueError):
    """Bytes that do not encode a bitfield of the expected length."""


class Bitfield:
    __slots__ = ("_bits", "_count", "size")

    def __init__(self, size: int, indices: Iterable[int] = ()) -> None:
        if size < 0:
            raise BitfieldError(f"bitfield size must be >= 0, got {size}")
        self.size = size
        self._bits = bytearray((size + 7) // 8)
        self._count = 0
        for i in indices:
            self.add(i)

    @classmethod
    def full(cls, size: int) -> Bitfield:
        bf = cls(size)
        for i in range(size):
            bf.add(i)
        return bf

    @classmethod
    def from_bytes(cls, size: int, data: bytes) -> Bitfield:
        if size < 0:
            raise BitfieldError(f"bitfield size must be >= 0, got {size}")
        if len(data) != (size + 7) // 8:
            raise BitfieldError(f"bitfield of {size} pieces needs {(size + 7) // 8} bytes, got {len(data)}")
        spare = len(data) * 8 - size
        if spare and data[-1] & ((1 << spare) - 1):
            raise BitfieldError("bitfield has bits set past its last piece")
        bf = cls(size)
        bf._bits[:] = data
        bf._count = sum(b.bit_count() for b in data)
        return bf

    def to_bytes(self) -> bytes:
        return bytes(self._bits)

    def as_int(self) -> int:
        """The bits as one integer, piece i at bit ``width - 1 - i`` (``width`` = 8 x bytes).

        OR-ing several of them answers "does anyone have piece i" with one shift per piece.
        """
        return int.from_bytes(self._bits, "big")

    @property
    def width(self) -> int:
        return len(self._bits) * 8

    def _check(self, i: int) -> None:
        if not 0 <= i < self.size:
            raise BitfieldError(f"piece {i} outside bitfield of {self.size}")

    def __contains__(self, i: object) -> bool:
        if not isinstance(i, int) or not 0 <= i < self.size:
            return False
        return bool(self._bits[i >> 3] & (0x80 >> (i & 7)))

    def add(self, i: int) -> bool:
        """Set bit i; returns True if it was newly set."""
        self._check(i)
        mask = 0x80 >> (i & 7)
        if self._bits[i >> 3] & mask:
            return False
        self._bits[i >> 3] |= mask
        self._count += 1
        return True

    def discard(self, i: int) -> None:
        self._check(i)
        mask = 0x80 >> (i & 7)
        if self._bits[i >> 3] & mask:
            self._bits[i >> 3] &= ~mask & 0xFF
            self._count -= 1

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[int]:
        for byte_index, byte in enumerate(self._bits):
            if byte:
                for bit in range(8):
                    if byte & (0x80 >> bit):
                        yield byte_index * 8 + bit

    def missing(self) -> Iterator[int]:
        return (i for i in range(self.size) if i not in self)

    @property
    def complete(self) -> bool:
        return self._count == self.size

    def copy(self) -> Bitfield:
        return Bitfield.from_bytes(self.size, self.to_bytes())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bitfield) and self.size == other.size and self._bits == other._bits

    def __repr__(self) -> str:
        return f"Bitfield({self.size}, have={self._count})"
