"""Store internals shared by blobs and partials: errors, constants, file helpers."""

from __future__ import annotations

import enum
import os
import struct
import uuid
from pathlib import Path
from typing import Any

import msgpack

from p2pdist.core.digest import Digest
from p2pdist.store.durable import fsync_dir as _fsync_dir

from ..errors import P2pdistError

CHUNK = 1 << 20  # disk reads for hashing: bounded memory whatever the blob size
_RECORD = struct.Struct(">I32s")  # journal record: piece index, piece digest (BLAKE3)
_SIDECAR = ".pieces"
_MAX_CANDIDATES = 2  # distinct journalled digests kept per piece; more means a corrupt journal


class StoreError(P2pdistError):
    """Base class for store failures."""


class BlobNotFound(StoreError):
    """The blob is not (or no longer) complete in the store."""


class BlobExists(StoreError):
    """The blob is already complete: there is nothing left to download."""


class LayoutMismatch(StoreError):
    """A partial of this blob is already open with a different piece layout."""


class PartialClosed(StoreError):
    """The partial was committed, discarded or closed and accepts no more pieces."""


class IncompleteBlob(StoreError):
    """Commit was asked for before every piece was written."""


class PieceError(StoreError, ValueError):
    """A piece index, length or digest that does not fit this partial."""


class StoreFull(StoreError):
    """The store's disk has no room for the blob: the message names the directory and the sizes."""


class CorruptData(StoreError):
    """A data file is shorter than its layout says: it was truncated behind the store's back."""


def _checked(digest: Digest) -> Digest:
    """Re-parse, so even a hand-built ``Digest("sha256", "../..")`` can never become a path."""
    if not isinstance(digest, Digest):
        raise TypeError(f"expected a Digest, got {type(digest).__name__}")
    return Digest.parse(str(digest))


def _write_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _write_atomic(path: Path, data: bytes) -> None:
    """tmp + fsync + rename + fsync dir: readers see the old file or the whole new one, never a torn one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data, 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _read_exact(fd: int, offset: int, length: int) -> bytes:
    parts = []
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, end - offset, offset)
        if not chunk:
            raise CorruptData(f"short read at offset {offset}: the file was truncated")
        parts.append(chunk)
        offset += len(chunk)
    return b"".join(parts)


def read_range(path: os.PathLike[str] | str, offset: int, length: int) -> bytes:
    """Bytes [offset, offset + length) of a store file; CorruptData if it is shorter (truncated)."""
    with open(path, "rb", buffering=0) as f:
        return _read_exact(f.fileno(), offset, length)


def _hash_range(fd: int, offset: int, length: int, hashers: list[Any]) -> None:
    end = offset + length
    while offset < end:
        chunk = os.pread(fd, min(CHUNK, end - offset), offset)
        if not chunk:
            raise CorruptData(f"short read at offset {offset}: the file was truncated")
        for h in hashers:
            h.update(chunk)
        offset += len(chunk)


def _unpack(raw: bytes, **limits: int) -> Any:
    """Decode our own small msgpack files; anything malformed reads as None (treated as absent)."""
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=True, max_ext_len=0, **limits)
    except Exception:
        return None


class PartialState(enum.Enum):
    OPEN = "open"
    COMMITTING = "committing"
    COMMITTED = "committed"
    DISCARDED = "discarded"
