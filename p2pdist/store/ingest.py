"""Whole blobs arriving from outside the swarm (``p2pdist import``): verified while written, then
committed the way a download commits.

The bytes go to a dot-named temp file beside the blob's final place (the store's startup sweep
removes it after a crash), are hashed against the blob digest and cut into pieces for the sidecar
as they arrive, and become visible only by fsync + rename, under the store's lock. A blob that
does not match its digest never leaves the temp file.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
import shutil
import threading
import uuid

from p2pdist.core.digest import Digest, DigestMismatch
from p2pdist.core.layout import decide_layout
from p2pdist.core.manifest import piece_hasher

from .blobs import Store
from .common import StoreError, StoreFull, _checked, _fsync_dir, _write_all
from .durable import start_writeback


class IngestError(StoreError):
    """The bytes offered for a blob are not its size."""


class Ingested(enum.Enum):
    ADDED = "added"
    PRESENT = "present"  # already complete here: nothing written
    DOWNLOADING = "downloading"  # a download of it is under way: left to it


class BlobWriter:
    """Write one blob of known size in order; ``commit`` checks its digest and publishes it.

    ``piece_size``: the agent's pinned piece size (0 = the layout rule), as a download without a
    tracker would cut it; a tracker that wants another has the seeding agent recut it.
    """

    def __init__(self, store: Store, digest: Digest, size: int, piece_size: int = 0) -> None:
        self.store = store
        self.digest = d = _checked(digest)
        self.size = size
        self.layout = decide_layout(size, pinned_piece_size=piece_size)
        store._make_room(d, size)  # evicts unpinned blobs for disk room, or StoreFull
        self._path = store.blob_path(d)
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self._path.with_name(f".{d.encoded}.{uuid.uuid4().hex}.import")
        self._fd = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        # Held until the descriptor closes (or the process dies): `cache gc --partials` leaves a
        # locked temp file alone however long the import stalls (store.admin.in_use).
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._hash = d.hasher()
        self._piece = piece_hasher()
        self._digests: list[bytes] = []
        self.written = 0
        # write and commit run in threads; abort may come from the loop (a client gone) meanwhile,
        # and must not close the descriptor under a write (its number could be reused at once).
        self._mutex = threading.Lock()

    def write(self, data: bytes | memoryview) -> None:
        with self._mutex:
            self._write(memoryview(data).cast("B"))

    def _write(self, view: memoryview) -> None:
        if self._fd < 0:
            raise IngestError(f"{self.digest}: the import was aborted")
        if self.written + view.nbytes > self.size:
            self._abort()
            raise IngestError(f"{self.digest}: more than the {self.size} bytes announced")
        try:
            _write_all(self._fd, view, self.written)
        except OSError as e:
            self._abort()
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise StoreFull(f"no space left on {self._path.parent} for {self.digest} ({self.size} bytes): "
                                "free space there, or lower the agent's capacity so older blobs make room") from e
            raise
        start_writeback(self._fd, self.written, view.nbytes)
        self._hash.update(view)
        piece_size = self.layout.piece_size
        pos = self.written
        while view:
            take = min(view.nbytes, piece_size - pos % piece_size)
            self._piece.update(view[:take])
            pos += take
            view = view[take:]
            if pos % piece_size == 0:
                self._digests.append(self._piece.digest())
                self._piece = piece_hasher()
        self.written = pos

    def commit(self) -> Ingested:
        """Verify and publish; DigestMismatch or IngestError (and nothing kept) if the bytes are wrong."""
        with self._mutex:
            if self._fd < 0:
                raise IngestError(f"{self.digest}: the import was aborted")
            return self._commit()

    def _commit(self) -> Ingested:
        store, d = self.store, self.digest
        if self.written != self.size:
            self._abort()
            raise IngestError(f"{d}: got {self.written} bytes, {self.size} announced")
        if self.written % self.layout.piece_size or not self._digests:  # the last, short (or empty) piece
            self._digests.append(self._piece.digest())
        actual = Digest(d.algorithm, self._hash.hexdigest())
        if actual != d:
            self._abort()
            raise DigestMismatch(str(d), str(actual))
        try:
            os.fsync(self._fd)
        except BaseException:
            self._abort()
            raise
        os.close(self._fd)
        self._fd = -1
        with store._lock:
            if d in store._blobs:
                outcome = Ingested.PRESENT
            elif d in store._partials or d in store._opening:
                # Its download writes its own sidecar before renaming in: two writers of one sidecar
                # could leave digests of another layout beside the blob. The download finishes it.
                outcome = Ingested.DOWNLOADING
            else:
                # Sidecar first (as a download commits): a visible blob always has its piece digests.
                store._write_sidecar(d, self.layout, self._digests)
                os.rename(self._tmp, self._path)
                store._blobs[d] = self.size
                store._usage += self.size
                # A resumable partial of it from an earlier run has nothing left to add.
                trash = store._trash(store._partial_path(d))
                outcome = Ingested.ADDED
        if outcome is not Ingested.ADDED:
            self._tmp.unlink(missing_ok=True)
            return outcome
        _fsync_dir(self._path.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        store.gc()
        return outcome

    def abort(self) -> None:
        with self._mutex:
            self._abort()

    def _abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tmp.unlink(missing_ok=True)
