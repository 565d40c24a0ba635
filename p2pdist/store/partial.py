"""A blob being downloaded: verified pieces, the journal, the running whole-blob hash, commit."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import msgpack

from p2pdist.core.bitfield import Bitfield
from p2pdist.core.digest import Digest, DigestMismatch
from p2pdist.core.layout import LayoutError, PieceLayout
from p2pdist.core.manifest import PIECE_DIGEST_SIZE, PIECE_HASH, ManifestError, PieceManifest, piece_hasher
from p2pdist.store.durable import start_writeback

from .common import (
    _MAX_CANDIDATES,
    _RECORD,
    CHUNK,
    CorruptData,
    IncompleteBlob,
    PartialClosed,
    PartialState,
    PieceError,
    StoreError,
    StoreFull,
    _hash_range,
    _read_exact,
    _unpack,
    _write_all,
    _write_atomic,
)
from .prefix_hash import PrefixHasher

if TYPE_CHECKING:
    from .blobs import Store


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
        # Whole-blob hash over pieces [0, _prefix), as far as resume re-read them; then the
        # PrefixHasher carries it on as pieces land. Lock order: never take its lock inside ours.
        self._blob_hash = digest.hasher()
        self._prefix = 0
        self._prefix_hasher: PrefixHasher | None = None

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def _open(cls, store: Store, digest: Digest, layout: PieceLayout, directory: Path) -> Partial:
        partial = cls(store, digest, layout, directory)
        try:
            if not partial._resume():
                partial._create()
            partial._prefix_hasher = PrefixHasher(partial._data_fd, layout, partial._blob_hash, partial._prefix,
                                                  partial._present)
        except BaseException:
            partial._close_fds()
            raise
        return partial

    def _meta(self) -> dict[str, Any]:
        # The piece hash is part of it: journalled digests of another kind (an older version's sha256)
        # would fail every re-hash; starting over says so plainly.
        return {"digest": str(self.digest), "size": self.layout.blob_size, "piece_size": self.layout.piece_size,
                "piece_hash": PIECE_HASH}

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
            piece_hash = piece_hasher()
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
        """Pieces [0, n) already folded into the whole-blob hash (a thread moves it on)."""
        return self._prefix_hasher.prefix if self._prefix_hasher is not None else self._prefix

    def settle_hash(self) -> int:
        """Wait until every piece stored so far that the whole-blob hash can take is in it; the prefix."""
        assert self._prefix_hasher is not None
        return self._prefix_hasher.settle()

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

    def write_piece(self, index: int, data: bytes | memoryview, digest: bytes, from_origin: bool = False) -> bool:
        """Store a piece the caller has already verified against ``digest`` (raw piece digest).

        ``from_origin``: the bytes came from the origin, whose word beats a digest learned from the
        cluster: a contradicting one is replaced (returns True), not an error.
        """
        try:
            offset, length = self.layout.span(index)
        except LayoutError as e:
            raise PieceError(str(e)) from None
        view = memoryview(data).cast("B")
        disputed = False
        if view.nbytes != length:
            raise PieceError(f"piece {index} of {self.digest} is {length} bytes, got {view.nbytes}")
        if not isinstance(digest, bytes) or len(digest) != PIECE_DIGEST_SIZE:
            raise PieceError(f"piece digest must be {PIECE_DIGEST_SIZE} raw bytes")
        with self._cond:
            while True:
                self._check_open()
                known = self.manifest.get(index)
                if index in self.have:
                    return False  # a duplicate from a second peer: the verified copy is already there
                if known is not None and known != digest:
                    if not from_origin:
                        raise PieceError(f"piece {index} of {self.digest}: digest contradicts the manifest")
                    self.manifest.forget(index)
                    disputed = True
                if index not in self._writing:
                    break
                self._cond.wait()  # never two pwrites into one range at once
            self._writing.add(index)
        try:
            try:
                _write_all(self._data_fd, view, offset)  # outside the lock: pieces are written in parallel
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StoreFull(f"no space left on {self._dir.parent} for {self.digest} "
                                    f"({self.layout.blob_size} bytes): free space there, or lower the "
                                    "agent's capacity so older blobs make room") from e
                raise
            start_writeback(self._data_fd, offset, length)  # so the commit's fsync finds little left
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
        self._prefix_hasher.landed()
        return disputed

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
            try:
                blob_hash = self._prefix_hasher.result()
                actual = str(Digest(self.digest.algorithm, blob_hash.hexdigest()))
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
        if self._prefix_hasher is not None:
            self._prefix_hasher.stop()
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
        if self._prefix_hasher is not None:
            self._prefix_hasher.stop()  # before the fd goes: the thread may be mapping it
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
