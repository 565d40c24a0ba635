"""Complete blobs: the content-addressed directory, readers that pin, LRU garbage collection."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Self

import msgpack

from p2pdist.core.digest import Digest, DigestError
from p2pdist.core.layout import MAX_PIECES, LayoutError, PieceLayout
from p2pdist.core.manifest import PIECE_DIGEST_SIZE, PIECE_HASH, ManifestError, PieceManifest, piece_hasher

from .common import (
    _SIDECAR,
    BlobExists,
    BlobNotFound,
    CorruptData,
    LayoutMismatch,
    PartialState,
    StoreError,
    StoreFull,
    _checked,
    _fsync_dir,
    _hash_range,
    _read_exact,
    _unpack,
    _write_atomic,
)
from .partial import Partial


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
        if data.get("piece_hash") != PIECE_HASH:
            return None  # an older version's sha256 piece digests: not what peers verify against
        if not isinstance(piece_size, int) or isinstance(piece_size, bool) or not isinstance(digests, list):
            return None
        try:
            layout = PieceLayout(size, piece_size)
            if len(digests) != layout.count:
                return None
            return PieceManifest(layout, enumerate(digests))
        except (LayoutError, ManifestError):
            return None

    def rebuild_piece_manifest(self, digest: Digest, piece_size: int) -> PieceManifest | None:
        """Recompute a complete blob's piece digests for ``piece_size`` from its bytes, and keep them.

        For a sidecar an older version wrote (sha256 piece digests), or a layout other than the one
        the tracker decides. The blob's own digest is checked in the same read: piece digests of
        bytes that no longer match it would be lies, so such a blob is deleted instead (None). None
        too if the blob is not here.
        """
        d = _checked(digest)
        try:
            reader = self.open_blob(d)
        except BlobNotFound:
            return None
        with reader:
            layout = PieceLayout(reader.size, piece_size)
            whole = d.hasher()
            digests: list[bytes] = []
            try:
                for i in range(layout.count):
                    offset, length = layout.span(i)
                    piece = piece_hasher()
                    _hash_range(reader.fileno(), offset, length, [whole, piece])
                    digests.append(piece.digest())
            except CorruptData:
                whole = None
        if whole is None or whole.hexdigest() != d.encoded:
            self.delete(d)
            return None
        self._write_sidecar(d, layout, digests)
        return PieceManifest(layout, enumerate(digests))

    def _write_sidecar(self, digest: Digest, layout: PieceLayout, digests: list[bytes]) -> None:
        """A complete blob's piece digests, beside it (read back by piece_manifest)."""
        sidecar = {"piece_size": layout.piece_size, "piece_hash": PIECE_HASH, "digests": digests}
        _write_atomic(self._sidecar_path(digest), msgpack.packb(sidecar, use_bin_type=True))

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

    def _make_room(self, digest: Digest, size: int) -> None:
        """Before a new download: evict unpinned complete blobs, least recently used first, until
        the disk has ``size`` bytes free; StoreFull if it cannot. Checked up front, a blob that
        cannot fit fails at once with a message naming the disk, and leaves nothing behind (it
        used to fail at the first write, blaming the origin, and keep its partial)."""
        with self._lock:
            reclaimable = sum(n for d, n in self._blobs.items() if self._evictable(d))
        free = shutil.disk_usage(self.root).free
        if free + reclaimable < size:
            # It cannot fit even with the whole cache gone: evict nothing (a size claimed by a
            # client or a job, 10 TB say, must not empty the cache on its way to failing).
            raise StoreFull(f"no space on {self.root} for {digest}: it needs {size} bytes, {free} are free "
                            f"and {reclaimable} could be evicted; free space there, or move data_dir")
        self._evict_until(lambda: shutil.disk_usage(self.root).free >= size)
        free = shutil.disk_usage(self.root).free
        if free < size:
            raise StoreFull(f"no space on {self.root} for {digest}: it needs {size} bytes, {free} are free "
                            "and no cached blob can be evicted; free space there, or move data_dir")

    def gc(self) -> list[Digest]:
        """Evict least recently used unpinned blobs until usage <= capacity; returns the evicted ones.

        Pinned blobs are never evicted, so usage can stay above capacity while they are in use.
        """
        if self.capacity is None:
            return []
        capacity = self.capacity
        return self._evict_until(lambda: self._usage <= capacity)

    def _evict_until(self, enough: Callable[[], bool]) -> list[Digest]:
        """Evict unpinned complete blobs, least recently used first, until ``enough()``; returns them.

        Under the lock throughout: a concurrent commit of a victim cannot interleave."""
        evicted: list[Digest] = []
        with self._lock:
            for digest in list(self._blobs):
                if enough():
                    break
                if self._evictable(digest):
                    self._remove_blob(digest)
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
            if not self._partial_path(d).exists():
                self._make_room(d, layout.blob_size)
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
        self._write_sidecar(d, layout, digests)
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
