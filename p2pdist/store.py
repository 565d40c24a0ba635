"""The store: complete, verified blobs and resumable partial downloads on local disk.

Layout under ``root``::

    blobs/<alg>/<hex>            complete, verified blob (immutable once renamed in)
    blobs/<alg>/<hex>.pieces     msgpack {"piece_size", "digests"}: per-piece sha256 of the blob
    partial/<alg>/<hex>/meta     msgpack {"digest", "size", "piece_size"}, written atomically at creation
    partial/<alg>/<hex>/data     the blob being filled with positional writes
    partial/<alg>/<hex>/journal  36-byte records (piece index, piece sha256), written after the data

The journal is not fsynced per piece. On resume every journalled piece is re-hashed from ``data``
and dropped if it no longer matches: that survives kill -9 and power loss alike without paying a
flush per piece. Commit is verify + fsync + rename, so a crash leaves either a resumable partial or a
complete verified blob. Every path comes from a re-parsed core ``Digest``, so none can escape ``root``.

Synchronous and thread-safe; the agent calls the slow parts (open_partial, commit, gc) through
``asyncio.to_thread``. One ``Store`` per root directory.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import os
import shutil
import struct
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import msgpack

from p2pdist.core.bitfield import Bitfield
from p2pdist.core.digest import Digest, DigestError, DigestMismatch
from p2pdist.core.layout import MAX_PIECES, LayoutError, PieceLayout
from p2pdist.core.manifest import PIECE_DIGEST_SIZE, ManifestError, PieceManifest

CHUNK = 1 << 20  # disk reads for hashing: bounded memory whatever the blob size
_RECORD = struct.Struct(">I32s")  # journal record: piece index, piece sha256
_SIDECAR = ".pieces"
_MAX_CANDIDATES = 2  # distinct journalled digests kept per piece; more means a corrupt journal


class StoreError(Exception):
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


class CorruptData(StoreError):
    """A data file is shorter than its layout says: it was truncated behind the store's back."""


def _checked(digest: Digest) -> Digest:
    """Re-parse, so even a hand-built ``Digest("sha256", "../..")`` can never become a path."""
    if not isinstance(digest, Digest):
        raise TypeError(f"expected a Digest, got {type(digest).__name__}")
    return Digest.parse(str(digest))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


class BlobReader:
    """An open complete blob. Pins it against gc/delete until closed."""

    def __init__(self, store: Store, digest: Digest, path: Path, fd: int, size: int) -> None:
        self._store = store
        self.digest = digest
        self.path = path
        self.size = size
        self._fd = fd
        self._closed = False

    def fileno(self) -> int:
        if self._closed:
            raise StoreError(f"reader for {self.digest} is closed")
        return self._fd

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset}+{length} outside blob of {self.size} bytes")
        return _read_exact(self.fileno(), offset, length)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)
            self._store._unpin(self.digest)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Partial:
    """A blob being downloaded: verified pieces land here until the whole blob verifies and commits.

    Lock order: a Partial's lock before the Store's lock, never the reverse. ``_state`` changes only
    while holding both, so either one is enough to read it.
    """

    def __init__(self, store: Store, digest: Digest, layout: PieceLayout, directory: Path) -> None:
        self._store = store
        self.digest = digest
        self.layout = layout
        self.have = Bitfield(layout.count)
        self.manifest = PieceManifest(layout)
        self._dir = directory
        self._data_fd = -1
        self._journal_fd = -1
        self._journal_len = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._writing: set[int] = set()  # pieces being written right now: one writer per piece
        self._state = PartialState.OPEN
        self._closed = False
        self._refs = 1  # guarded by the store's lock
        # Whole-blob hash over pieces [0, _prefix): lets commit skip re-reading a sequential download.
        self._hash_lock = threading.Lock()
        self._blob_hash = digest.hasher()
        self._prefix = 0

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def _open(cls, store: Store, digest: Digest, layout: PieceLayout, directory: Path) -> Partial:
        partial = cls(store, digest, layout, directory)
        try:
            if not partial._resume():
                partial._create()
        except BaseException:
            partial._close_fds()
            raise
        return partial

    def _meta(self) -> dict[str, Any]:
        return {"digest": str(self.digest), "size": self.layout.blob_size, "piece_size": self.layout.piece_size}

    def _create(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)
        self._dir.mkdir(parents=True)
        self._data_fd = os.open(self._dir / "data", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        os.ftruncate(self._data_fd, self.layout.blob_size)
        self._journal_fd = os.open(self._dir / "journal", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        # Meta last: a directory without meta is never mistaken for a resumable partial.
        _write_atomic(self._dir / "meta", msgpack.packb(self._meta(), use_bin_type=True))

    def _resume(self) -> bool:
        """Recover verified pieces from an earlier run; False if there is nothing usable to resume."""
        try:
            meta = _unpack((self._dir / "meta").read_bytes(), max_str_len=256, max_bin_len=0,
                           max_array_len=0, max_map_len=8)
            self._data_fd = os.open(self._dir / "data", os.O_RDWR)
        except OSError:
            return False
        if meta != self._meta():
            self._close_fds()
            return False  # another layout (or garbage): start over rather than trust any of it
        if os.fstat(self._data_fd).st_size != self.layout.blob_size:
            # Power loss can lose the creation-time truncate; pieces in a short file fail re-hashing.
            os.ftruncate(self._data_fd, self.layout.blob_size)
        self._journal_fd = os.open(self._dir / "journal", os.O_RDWR | os.O_CREAT, 0o644)
        candidates, records, torn = self._read_journal()
        kept = self._verify_journalled(candidates)
        self._journal_len = len(kept) * _RECORD.size
        if torn or len(kept) != records:
            # Compact: drops stale records and a torn tail, so new records stay aligned.
            path = self._dir / "journal"
            _write_atomic(path, b"".join(_RECORD.pack(i, d) for i, d in kept))
            os.close(self._journal_fd)
            self._journal_fd = os.open(path, os.O_RDWR)
        return True

    def _read_journal(self) -> tuple[dict[int, list[bytes]], int, bool]:
        candidates: dict[int, list[bytes]] = {}
        size = os.fstat(self._journal_fd).st_size
        whole = size - size % _RECORD.size  # a torn trailing record is ignored
        step = _RECORD.size * (CHUNK // _RECORD.size)
        for offset in range(0, whole, step):
            chunk = os.pread(self._journal_fd, min(step, whole - offset), offset)
            for index, digest in _RECORD.iter_unpack(chunk[: len(chunk) - len(chunk) % _RECORD.size]):
                if index < self.layout.count:
                    seen = candidates.setdefault(index, [])
                    if digest not in seen and len(seen) < _MAX_CANDIDATES:
                        seen.append(digest)
        return candidates, whole // _RECORD.size, whole != size

    def _verify_journalled(self, candidates: dict[int, list[bytes]]) -> list[tuple[int, bytes]]:
        kept: list[tuple[int, bytes]] = []
        for index in sorted(candidates):
            offset, length = self.layout.span(index)
            piece_hash = hashlib.sha256()
            # Feed the whole-blob hash speculatively while re-reading the contiguous prefix anyway.
            trial = self._blob_hash.copy() if index == self._prefix else None
            try:
                _hash_range(self._data_fd, offset, length, [piece_hash] if trial is None else [piece_hash, trial])
            except CorruptData:
                continue
            actual = piece_hash.digest()
            if actual in candidates[index]:
                self.have.add(index)
                self.manifest.set(index, actual)
                kept.append((index, actual))
                if trial is not None:
                    self._blob_hash, self._prefix = trial, self._prefix + 1
        return kept

    # -- pieces --------------------------------------------------------------------------------

    @property
    def state(self) -> PartialState:
        return self._state

    @property
    def hashed_prefix(self) -> int:
        """Pieces [0, n) already folded into the whole-blob hash."""
        return self._prefix

    def _check_open(self) -> None:
        if self._closed or self._state is not PartialState.OPEN:
            state = "closed" if self._closed else self._state.value
            raise PartialClosed(f"partial {self.digest} is {state}")

    @property
    def data_path(self) -> Path:
        """The data file while the partial is open; gone after commit or discard, so prefer ``fileno()``."""
        return self._dir / "data"

    def fileno(self) -> int:
        """The data file (after commit: the blob's inode), for sendfile of pieces in ``have``."""
        if self._closed:
            raise PartialClosed(f"partial {self.digest} is closed")
        return self._data_fd

    def write_piece(self, index: int, data: bytes | memoryview, digest: bytes) -> None:
        """Store a piece the caller has already verified against ``digest`` (raw sha256)."""
        try:
            offset, length = self.layout.span(index)
        except LayoutError as e:
            raise PieceError(str(e)) from None
        view = memoryview(data).cast("B")
        if view.nbytes != length:
            raise PieceError(f"piece {index} of {self.digest} is {length} bytes, got {view.nbytes}")
        if not isinstance(digest, bytes) or len(digest) != PIECE_DIGEST_SIZE:
            raise PieceError(f"piece digest must be {PIECE_DIGEST_SIZE} raw bytes")
        with self._cond:
            while True:
                self._check_open()
                known = self.manifest.get(index)
                if known is not None and known != digest:
                    raise PieceError(f"piece {index} of {self.digest}: digest contradicts the manifest")
                if index in self.have:
                    return  # a duplicate from a second peer: the verified copy is already there
                if index not in self._writing:
                    break
                self._cond.wait()  # never two pwrites into one range at once
            self._writing.add(index)
        try:
            _write_all(self._data_fd, view, offset)  # outside the lock: pieces are written in parallel
            with self._lock:
                self._check_open()
                try:
                    self.manifest.set(index, digest)
                except ManifestError as e:
                    raise PieceError(f"piece {index} of {self.digest}: {e}") from None
                self._append_journal(index, digest)
                self.have.add(index)
        finally:
            with self._cond:
                self._writing.discard(index)
                self._cond.notify_all()
        self._advance_prefix(index, view)

    def _append_journal(self, index: int, digest: bytes) -> None:
        record = _RECORD.pack(index, digest)
        try:
            if os.pwrite(self._journal_fd, record, self._journal_len) != len(record):
                raise StoreError(f"short journal write for {self.digest}")
        except BaseException:
            # Never leave a torn record mid-journal: later records would be misaligned.
            os.ftruncate(self._journal_fd, self._journal_len)
            raise
        self._journal_len += len(record)

    def _present(self, index: int) -> bool:
        with self._lock:
            return index in self.have

    def _advance_prefix(self, index: int, data: memoryview) -> None:
        """Extend the whole-blob hash: this piece from memory if it is next, then present ones from disk.

        Never waits for the hash lock (a writer must not stall behind another's read-forward). The
        holder re-checks after releasing, so a piece that lands meanwhile is not left behind.
        """
        count = self.layout.count
        pending: memoryview | None = data
        while self._hash_lock.acquire(blocking=False):
            try:
                if pending is not None and self._prefix == index:
                    self._blob_hash.update(pending)
                    self._prefix += 1
                pending = None
                while self._prefix < count and self._present(self._prefix):
                    offset, length = self.layout.span(self._prefix)
                    _hash_range(self._data_fd, offset, length, [self._blob_hash])
                    self._prefix += 1
            except (OSError, CorruptData):
                return  # commit re-reads from the prefix and reports the problem properly
            finally:
                self._hash_lock.release()
            if not (self._prefix < count and self._present(self._prefix)):
                return

    def read_piece(self, index: int) -> bytes:
        """A verified piece's bytes; only pieces in ``have``."""
        with self._lock:
            if self._closed:
                raise PartialClosed(f"partial {self.digest} is closed")
            if index not in self.have:
                raise PieceError(f"piece {index} of {self.digest} is not here")
        offset, length = self.layout.span(index)
        return _read_exact(self._data_fd, offset, length)

    # -- endings -------------------------------------------------------------------------------

    def commit(self, on_verified: Callable[[], None] | None = None) -> Path:
        """Verify the whole blob against its digest and move it into ``blobs/``; returns its path.

        ``on_verified`` runs once the digest matched, before the fsync: a reader streaming the blob
        may release its last bytes then, without waiting for the disk.
        """
        with self._lock, self._store._lock:
            self._check_open()
            if not self.have.complete:
                raise IncompleteBlob(f"{self.digest}: {self.layout.count - len(self.have)} pieces missing")
            self._state = PartialState.COMMITTING  # no writes, no discard from here on
        committed = False
        try:
            with self._hash_lock:
                try:
                    while self._prefix < self.layout.count:
                        offset, length = self.layout.span(self._prefix)
                        _hash_range(self._data_fd, offset, length, [self._blob_hash])
                        self._prefix += 1
                    actual = str(Digest(self.digest.algorithm, self._blob_hash.hexdigest()))
                except CorruptData as e:
                    actual = f"unreadable data ({e})"
            if actual != str(self.digest):
                self._discard(PartialState.COMMITTING)
                raise DigestMismatch(str(self.digest), actual)
            if on_verified is not None:
                on_verified()
            # The data can only be longer by tampering; cutting it makes the blob exactly what we hashed.
            os.ftruncate(self._data_fd, self.layout.blob_size)
            os.fsync(self._data_fd)
            path = self._store._commit(self)
            committed = True
        finally:
            if not committed:
                with self._lock, self._store._lock:
                    if self._state is PartialState.COMMITTING:
                        self._state = PartialState.OPEN  # e.g. disk full: the caller may retry or discard
        self._store.gc()
        return path

    def discard(self) -> None:
        """Delete the partial's files; other holders see it as discarded."""
        with self._lock:
            # A closed partial's directory may already belong to a newer Partial of the same blob.
            if self._closed or self._state in (PartialState.COMMITTING, PartialState.COMMITTED):
                raise PartialClosed(f"partial {self.digest} is {'closed' if self._closed else self._state.value}")
        self._discard(PartialState.OPEN)

    def _discard(self, expect: PartialState) -> None:
        with self._lock, self._store._lock:
            if self._state is not expect:
                return
            self._state = PartialState.DISCARDED
            for i in list(self.have):
                self.have.discard(i)  # nothing of a discarded partial may be served
            self._store._forget_partial(self)
            trash = self._store._trash(self._dir)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def close(self) -> None:
        """Drop one reference; the last one closes the files. An open partial stays on disk for resume."""
        with self._store._lock:
            if self._refs == 0:
                return
            self._refs -= 1
            if self._state is PartialState.COMMITTED:
                self._store._unpin(self.digest)
            if self._refs:
                return
            self._store._forget_partial(self)
        with self._lock:
            self._closed = True
        self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self._data_fd, self._journal_fd):
            if fd >= 0:
                os.close(fd)
        self._data_fd = self._journal_fd = -1

    def __enter__(self) -> Self:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Partial({self.digest}, {self._state.value}, have={len(self.have)}/{self.layout.count})"


class Store:
    """Complete blobs (LRU-evicted beyond ``capacity`` bytes) and resumable partials under ``root``."""

    def __init__(self, root: Path, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 0:
            raise ValueError(f"capacity must be >= 0 or None, got {capacity}")
        self.root = Path(root)
        self.capacity = capacity
        self._blobs_dir = self.root / "blobs"
        self._partial_dir = self.root / "partial"
        self._blobs_dir.mkdir(parents=True, exist_ok=True)
        self._partial_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._blobs: OrderedDict[Digest, int] = OrderedDict()  # least recently used first
        self._usage = 0
        self._pins: dict[Digest, int] = {}
        self._partials: dict[Digest, Partial] = {}
        self._opening: dict[Digest, threading.Event] = {}
        self._scan()

    # -- startup -------------------------------------------------------------------------------

    def _scan(self) -> None:
        """Index complete blobs (recency from mtime) and sweep what an interrupted run left behind."""
        found: list[tuple[int, str, Digest, int]] = []
        for alg_dir in self._blobs_dir.iterdir():
            if not alg_dir.is_dir():
                continue
            sidecars: list[Path] = []
            for entry in alg_dir.iterdir():
                if entry.name.startswith("."):
                    entry.unlink(missing_ok=True)  # tmp file of an interrupted atomic write
                    continue
                if entry.name.endswith(_SIDECAR):
                    sidecars.append(entry)
                    continue
                try:
                    digest = Digest.parse(f"{alg_dir.name}:{entry.name}")
                except DigestError:
                    continue  # not ours: leave it alone
                st = entry.stat()
                found.append((st.st_mtime_ns, entry.name, digest, st.st_size))
            for sidecar in sidecars:
                # The sidecar is written before the blob is renamed in: alone, it is a crash leftover.
                if not sidecar.with_name(sidecar.name[: -len(_SIDECAR)]).exists():
                    sidecar.unlink(missing_ok=True)
        for _, _, digest, size in sorted(found, key=lambda f: (f[0], f[1])):
            self._blobs[digest] = size
            self._usage += size
        for alg_dir in self._partial_dir.iterdir():
            if not alg_dir.is_dir():
                continue
            for entry in alg_dir.iterdir():
                if entry.name.startswith("."):
                    shutil.rmtree(entry, ignore_errors=True)  # trash of a discard or commit
                    continue
                try:
                    digest = Digest.parse(f"{alg_dir.name}:{entry.name}")
                except DigestError:
                    continue
                if digest in self._blobs:
                    shutil.rmtree(entry, ignore_errors=True)  # crash between commit's rename and cleanup

    # -- paths ---------------------------------------------------------------------------------

    def blob_path(self, digest: Digest) -> Path:
        d = _checked(digest)
        return self._blobs_dir / d.algorithm / d.encoded

    def _sidecar_path(self, digest: Digest) -> Path:
        path = self.blob_path(digest)
        return path.with_name(path.name + _SIDECAR)

    def _partial_path(self, digest: Digest) -> Path:
        d = _checked(digest)
        return self._partial_dir / d.algorithm / d.encoded

    # -- complete blobs ------------------------------------------------------------------------

    def has(self, digest: Digest) -> bool:
        d = _checked(digest)
        with self._lock:
            return d in self._blobs

    def size(self, digest: Digest) -> int | None:
        d = _checked(digest)
        with self._lock:
            return self._blobs.get(d)

    def usage(self) -> int:
        with self._lock:
            return self._usage

    def blobs(self) -> list[tuple[Digest, int]]:
        """Complete blobs and sizes, least recently used first."""
        with self._lock:
            return list(self._blobs.items())

    def piece_manifest(self, digest: Digest) -> PieceManifest | None:
        """Per-piece digests of a complete blob, from its sidecar; None if absent or unreadable."""
        d = _checked(digest)
        size = self.size(d)
        if size is None:
            return None
        try:
            raw = self._sidecar_path(d).read_bytes()
        except OSError:
            return None
        data = _unpack(raw, max_str_len=64, max_bin_len=PIECE_DIGEST_SIZE, max_array_len=MAX_PIECES,
                       max_map_len=4)
        if not isinstance(data, dict):
            return None
        piece_size, digests = data.get("piece_size"), data.get("digests")
        if not isinstance(piece_size, int) or isinstance(piece_size, bool) or not isinstance(digests, list):
            return None
        try:
            layout = PieceLayout(size, piece_size)
            if len(digests) != layout.count:
                return None
            return PieceManifest(layout, enumerate(digests))
        except (LayoutError, ManifestError):
            return None

    def open_blob(self, digest: Digest) -> BlobReader:
        """Open a complete blob for reading; pinned against gc and delete until the reader closes."""
        d = _checked(digest)
        path = self.blob_path(d)
        with self._lock:
            size = self._blobs.get(d)
            if size is None:
                raise BlobNotFound(f"blob {d} is not in the store")
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                self._drop_index(d)  # removed behind our back
                raise BlobNotFound(f"blob {d} is not in the store") from None
            self._pins[d] = self._pins.get(d, 0) + 1
            self._blobs.move_to_end(d)
        # mtime carries LRU recency across restarts (on a read-only filesystem it is in-memory only).
        with contextlib.suppress(OSError):
            os.utime(fd)
        return BlobReader(self, d, path, fd, size)

    def _unpin(self, digest: Digest) -> None:
        with self._lock:
            left = self._pins.get(digest, 0) - 1
            if left > 0:
                self._pins[digest] = left
            else:
                self._pins.pop(digest, None)

    def _drop_index(self, digest: Digest) -> None:
        size = self._blobs.pop(digest, None)
        if size is not None:
            self._usage -= size

    def _remove_blob(self, digest: Digest) -> None:
        # Blob before sidecar: a crash in between leaves an orphan sidecar, which startup sweeps.
        self.blob_path(digest).unlink(missing_ok=True)
        self._sidecar_path(digest).unlink(missing_ok=True)
        self._drop_index(digest)

    def _evictable(self, digest: Digest) -> bool:
        return not self._pins.get(digest) and digest not in self._partials and digest not in self._opening

    def gc(self) -> list[Digest]:
        """Evict least recently used unpinned blobs until usage <= capacity; returns the evicted ones.

        Pinned blobs are never evicted, so usage can stay above capacity while they are in use.
        """
        evicted: list[Digest] = []
        with self._lock:
            if self.capacity is None:
                return evicted
            for digest in list(self._blobs):
                if self._usage <= self.capacity:
                    break
                if self._evictable(digest):
                    self._remove_blob(digest)  # under the lock: a concurrent commit of it cannot interleave
                    evicted.append(digest)
        return evicted

    def delete(self, digest: Digest) -> bool:
        """Remove a complete blob unless it is in use; True if it was removed."""
        d = _checked(digest)
        with self._lock:
            if d not in self._blobs or not self._evictable(d):
                return False
            self._remove_blob(d)
            return True

    # -- partials ------------------------------------------------------------------------------

    def open_partial(self, digest: Digest, layout: PieceLayout) -> Partial:
        """Open (resume, or start) the download of a blob; every open_partial needs one close()."""
        d = _checked(digest)
        if not isinstance(layout, PieceLayout):
            raise TypeError(f"expected a PieceLayout, got {type(layout).__name__}")
        while True:
            with self._lock:
                if d in self._blobs:
                    raise BlobExists(f"blob {d} is already complete")
                existing = self._partials.get(d)
                if existing is not None:
                    if existing.layout != layout:
                        raise LayoutMismatch(f"partial {d} is open with {existing.layout}, asked for {layout}")
                    existing._refs += 1
                    return existing
                waiter = self._opening.get(d)
                if waiter is None:
                    waiter = self._opening[d] = threading.Event()
                    break
            waiter.wait()  # someone else is resuming it: then share theirs
        try:
            # Resuming re-hashes every journalled piece: done outside the store lock.
            partial = Partial._open(self, d, layout, self._partial_path(d))
            with self._lock:
                self._partials[d] = partial
            return partial
        finally:
            with self._lock:
                del self._opening[d]
            waiter.set()

    def partial(self, digest: Digest) -> Partial | None:
        """The open partial of a blob, if any (no reference is taken)."""
        d = _checked(digest)
        with self._lock:
            return self._partials.get(d)

    def resumable(self) -> list[Digest]:
        """Blobs with a partial on disk, e.g. to resume downloads after a restart."""
        out = []
        for alg_dir in self._partial_dir.iterdir():
            for entry in alg_dir.iterdir() if alg_dir.is_dir() else ():
                try:
                    out.append(Digest.parse(f"{alg_dir.name}:{entry.name}"))
                except DigestError:
                    continue
        return sorted(out, key=str)

    def _forget_partial(self, partial: Partial) -> None:
        with self._lock:
            if self._partials.get(partial.digest) is partial:
                del self._partials[partial.digest]

    def _trash(self, directory: Path) -> Path | None:
        """Rename a partial dir aside (under the lock) so deleting it cannot hit a newer partial."""
        trash = directory.with_name(f".{directory.name}.{uuid.uuid4().hex}.trash")
        try:
            directory.rename(trash)
        except FileNotFoundError:
            return None
        return trash

    def _commit(self, partial: Partial) -> Path:
        """Publish a verified, fsynced partial as a complete blob."""
        d = partial.digest
        path = self.blob_path(d)
        path.parent.mkdir(parents=True, exist_ok=True)
        layout = partial.layout
        digests = [partial.manifest.get(i) for i in range(layout.count)]
        # Every piece in have was journalled with its digest, so the manifest is complete here.
        assert all(digests), "complete partial without a complete manifest"
        # Sidecar before the blob: a visible blob always has its piece digests.
        sidecar = {"piece_size": layout.piece_size, "digests": digests}
        _write_atomic(self._sidecar_path(d), msgpack.packb(sidecar, use_bin_type=True))
        with partial._lock, self._lock:
            os.rename(partial._dir / "data", path)
            self._drop_index(d)
            self._blobs[d] = layout.blob_size
            self._usage += layout.blob_size
            self._forget_partial(partial)
            # Holders of the partial keep reading through its fd: each of their references pins the blob.
            self._pins[d] = self._pins.get(d, 0) + partial._refs
            partial._state = PartialState.COMMITTED
            trash = self._trash(partial._dir)
        _fsync_dir(path.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return path
