"""What an operator does to a store by hand (``p2pdist cache``): list, remove, evict, sweep.

The same functions serve the daemon's API (on its live ``Store``) and the offline command (on a
``Store`` opened under the store lock), so both keep the store's rules: removal is one unlink under
the store's lock, so a concurrent reader sees the blob whole or not at all, and a crash leaves at
most an orphan sidecar that the next start sweeps.

A blob being read is not removed (``in_use``; gc passes it by too). On Linux an unlinked file lives
on for every descriptor already open on it, so a reader past its open() would finish anyway; but
the mirror and the peer server pin a blob (``Store.open_blob``) and then open it again by path to
send it, and an unlink between the two would fail that pull. The pin covers the whole send, so
refusing pinned blobs keeps every read whole; the operator retries when the read is over.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import struct
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from p2pdist.core.digest import Digest
from p2pdist.core.layout import LayoutError, PieceLayout

from .blobs import Store
from .common import _RECORD, _checked, _unpack

_MAX_META = 512


@dataclass(frozen=True)
class BlobEntry:
    digest: str
    size: int
    last_used: float  # seconds since the epoch (the file's mtime: reads move it)
    in_use: bool  # open by a reader (a client or a peer upload): gc passes it by


@dataclass(frozen=True)
class PartialEntry:
    digest: str
    size: int | None  # None: its meta is unreadable (a crash before it was written)
    present: int  # bytes of verified pieces
    downloading: bool  # a download has it open now


@dataclass(frozen=True)
class Listing:
    capacity: int  # 0 = unlimited
    usage: int
    blobs: list[BlobEntry]  # least recently used first
    partials: list[PartialEntry]
    leftovers: int  # bytes of temp files and trash that crashed runs left (gc --partials sweeps them)

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Removed:
    digest: str
    blob: bool = False
    partial: bool = False
    in_use: bool = False  # a reader has the blob open: not removed
    downloading: bool = False  # a download has its partial open: not removed

    @property
    def found(self) -> bool:
        return self.blob or self.partial or self.downloading or self.in_use


def listing(store: Store) -> Listing:
    with store._lock:
        blobs = list(store._blobs.items())
        pinned = {d for d, n in store._pins.items() if n > 0}
        open_partials = dict(store._partials)
        capacity, usage = store.capacity or 0, store._usage
    entries = []
    for digest, size in blobs:
        try:
            mtime = store.blob_path(digest).stat().st_mtime
        except FileNotFoundError:
            continue  # removed since the snapshot
        entries.append(BlobEntry(str(digest), size, mtime, digest in pinned))
    partials = []
    for digest in store.resumable():
        live = open_partials.get(digest)
        if live is not None:
            layout = live.layout
            present = sum(layout.length(i) for i in list(live.have))
            partials.append(PartialEntry(str(digest), layout.blob_size, present, True))
        else:
            size, present = _partial_on_disk(store._partial_path(digest))
            partials.append(PartialEntry(str(digest), size, present, False))
    return Listing(capacity, usage, entries, partials, sum(_size(p) for p in _leftovers(store)))


def _partial_on_disk(directory: Path) -> tuple[int | None, int]:
    """(blob size, bytes of journalled pieces) of a partial nobody has open; a hint, not re-verified."""
    try:
        meta = _unpack((directory / "meta").read_bytes()[:_MAX_META], max_str_len=256, max_bin_len=0,
                       max_array_len=0, max_map_len=8)
        layout = PieceLayout(meta["size"], meta["piece_size"])
    except (OSError, TypeError, KeyError, LayoutError):
        return None, 0
    seen: set[int] = set()
    try:
        with open(directory / "journal", "rb") as f:
            while chunk := f.read(_RECORD.size * 4096):
                usable = len(chunk) - len(chunk) % _RECORD.size
                for index, _ in _RECORD.iter_unpack(chunk[:usable]):
                    if index < layout.count:
                        seen.add(index)
    except (OSError, struct.error):
        pass
    return layout.blob_size, sum(layout.length(i) for i in seen)


def _leftovers(store: Store) -> list[Path]:
    """Temp files and trash of interrupted writes, commits and discards (dot-named, never a blob)."""
    found = []
    for top in (store._blobs_dir, store._partial_dir):
        for alg_dir in top.iterdir() if top.is_dir() else ():
            if alg_dir.is_dir():
                found += [e for e in alg_dir.iterdir() if e.name.startswith(".")]
    return found


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        return path.stat().st_size
    except OSError:
        return 0


def parse_digests(texts: list[str]) -> list[Digest]:
    """Every digest parsed, or DigestError for the first malformed one (before anything is removed)."""
    return [Digest.parse(t) for t in texts]


def remove(store: Store, digest: Digest) -> Removed:
    """Remove a complete blob unless a reader has it open (see the module's note), and any partial
    of it that no download has open."""
    d = _checked(digest)
    blob = in_use = downloading = False
    trash = None
    with store._lock:
        if d in store._blobs:
            if store._pins.get(d):
                in_use = True
            else:
                store._remove_blob(d)  # one unlink under the lock: whole, or gone
                blob = True
        if d in store._partials or d in store._opening:
            downloading = True
        else:
            trash = store._trash(store._partial_path(d))
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
    return Removed(str(d), blob=blob, partial=trash is not None, in_use=in_use, downloading=downloading)


@dataclass(frozen=True)
class Collected:
    evicted: list[str]
    freed: int  # bytes of complete blobs evicted
    partials: list[str]  # partials removed
    leftovers: int  # bytes of temp files and trash removed
    skipped_in_use: int  # blobs gc would have evicted but a reader holds

    def to_json(self) -> dict:
        return asdict(self)


def collect(store: Store, keep: int | None, older_than: float | None = None, partials: bool = False,
            blobs: bool = True, now: float | None = None, leftover_age: float = 0.0) -> Collected:
    """Evict unpinned complete blobs, least recently used first, until usage <= ``keep``; with
    ``older_than`` (seconds) only blobs unused for longer may go (and ``keep`` None means 0). With
    ``partials``, also remove partials no download has open and the leftovers of crashed runs
    untouched for ``leftover_age`` seconds (a live daemon's temp files are being written now)."""
    evicted: list[str] = []
    freed = skipped = 0
    if blobs:
        cutoff = None if older_than is None else (time.time() if now is None else now) - older_than
        target = keep if keep is not None else 0
        with store._lock:
            candidates = list(store._blobs.items())  # least recently used first
        for d, size in candidates:
            # The lock per blob, not for the whole walk: pulls (which take it for every lookup) go
            # on between victims, and each is checked again under it (it may be in use by now).
            if cutoff is not None and _mtime(store, d) > cutoff:  # a stat, outside the lock
                continue
            with store._lock:
                if store._usage <= target:
                    break
                if d not in store._blobs:
                    continue  # gone meanwhile
                if not store._evictable(d):
                    skipped += 1
                    continue
                store._remove_blob(d)
            evicted.append(str(d))
            freed += size
    removed: list[str] = []
    leftover = 0
    if partials:
        for d in store.resumable():
            with store._lock:
                if d in store._partials or d in store._opening:
                    continue
                trash = store._trash(store._partial_path(d))
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
                removed.append(str(d))
        for path in _leftovers(store):
            if (leftover_age and _young(path, leftover_age)) or in_use(path):
                continue  # a sidecar or commit being written right now, or an import (however slow)
            leftover += _size(path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    return Collected(evicted, freed, removed, leftover, skipped)


def _mtime(store: Store, digest: Digest) -> float:
    try:
        return store.blob_path(digest).stat().st_mtime
    except FileNotFoundError:
        return 0.0


def in_use(path: Path) -> bool:
    """Whether a process holds ``path`` locked (an import's temp file: ingest.BlobWriter). The lock
    dies with its process, so what a crash left behind is not in use."""
    if path.is_dir():
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _young(path: Path, seconds: float) -> bool:
    try:
        return time.time() - path.stat().st_mtime < seconds
    except OSError:
        return False

