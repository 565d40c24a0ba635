"""Store tests on real files: round trips, verification, resume, crashes, gc, concurrency, paths."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdist.core.digest import Digest, DigestError, DigestMismatch
from p2pdist.core.layout import PieceLayout
from p2pdist.core.manifest import piece_digest
from p2pdist.store import (
    BlobExists,
    BlobNotFound,
    IncompleteBlob,
    LayoutMismatch,
    PartialClosed,
    PartialState,
    PieceError,
    Store,
    prefix_hash,
)

REPO = Path(__file__).resolve().parent.parent


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def piece(data: bytes, layout: PieceLayout, i: int) -> bytes:
    offset, length = layout.span(i)
    return data[offset : offset + length]


def sha(data: bytes) -> bytes:
    return piece_digest(data)


def write(partial, data: bytes, indices=None) -> None:
    layout = partial.layout
    for i in range(layout.count) if indices is None else indices:
        p = piece(data, layout, i)
        partial.write_piece(i, p, sha(p))


def put(store: Store, data: bytes, piece_size: int = 32) -> Digest:
    """Download-and-commit a whole blob; returns its digest."""
    digest = Digest.of(data)
    partial = store.open_partial(digest, PieceLayout(len(data), piece_size))
    try:
        write(partial, data)
        partial.commit()
    finally:
        partial.close()
    return digest


def partial_dir(root: Path, digest: Digest) -> Path:
    return root / "partial" / digest.algorithm / digest.encoded


def blob_files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "blobs").rglob("*") if p.is_file())


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "piece_size"),
    [(0, 4), (1, 1), (1000, 100), (1001, 100), (999, 1000), (5000, 7), (4096, 4096), (70_000, 1 << 12)],
)
def test_round_trip(tmp_path: Path, size: int, piece_size: int) -> None:
    data = blob(size, seed=size)
    digest = Digest.of(data)
    store = Store(tmp_path)
    layout = PieceLayout(size, piece_size)
    partial = store.open_partial(digest, layout)
    write(partial, data)
    assert partial.have.complete and partial.data_path.read_bytes() == data
    path = partial.commit()
    partial.close()

    assert path == store.blob_path(digest) and path.read_bytes() == data
    assert store.has(digest) and store.size(digest) == size and store.usage() == size
    assert store.blobs() == [(digest, size)]
    assert store.partial(digest) is None and not partial_dir(tmp_path, digest).exists()
    with store.open_blob(digest) as reader:
        assert reader.size == size and reader.read(0, size) == data
        assert reader.read(size // 3, size // 2) == data[size // 3 : size // 3 + size // 2]
        with pytest.raises(ValueError):
            reader.read(0, size + 1)
    manifest = store.piece_manifest(digest)
    assert manifest is not None and manifest.complete and manifest.layout == layout
    assert all(manifest.get(i) == sha(piece(data, layout, i)) for i in range(layout.count))
    # A fresh store finds the same blob on disk.
    again = Store(tmp_path)
    assert again.blobs() == [(digest, size)] and again.piece_manifest(digest) is not None


def test_sha512_blob(tmp_path: Path) -> None:
    data = blob(300, 5)
    digest = Digest.of(data, "sha512")
    store = Store(tmp_path)
    with store.open_partial(digest, PieceLayout(300, 64)) as partial:
        write(partial, data)
        partial.commit()
    assert (tmp_path / "blobs" / "sha512" / digest.encoded).read_bytes() == data
    assert Store(tmp_path).has(digest)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3000), piece_size=st.integers(1, 700), rnd=st.randoms(use_true_random=False))
def test_any_order_round_trip(data: bytes, piece_size: int, rnd: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp))
        digest = Digest.of(data)
        layout = PieceLayout(len(data), piece_size)
        order = list(range(layout.count))
        rnd.shuffle(order)
        with store.open_partial(digest, layout) as partial:
            write(partial, data, order)
            partial.commit()
        with store.open_blob(digest) as reader:
            assert reader.read(0, len(data)) == data


def test_out_of_order_writes_extend_the_hashed_prefix(tmp_path: Path) -> None:
    data = blob(1000, 1)
    store = Store(tmp_path)
    partial = store.open_partial(Digest.of(data), PieceLayout(1000, 100))
    write(partial, data, [3, 1, 2, 5])
    assert partial.settle_hash() == 0 and sorted(partial.have) == [1, 2, 3, 5]
    write(partial, data, [0])  # reads 1..3 forward from disk, stops at the hole at 4
    assert partial.settle_hash() == 4
    write(partial, data, [9, 8, 7, 6, 4])
    assert partial.settle_hash() == 10
    partial.commit()
    assert store.blob_path(Digest.of(data)).read_bytes() == data


@pytest.mark.parametrize("piece_size", [1024, 1 << 20])  # read back with pread, and through mmap
def test_whole_blob_hash_follows_the_writes_so_commit_reads_nothing(tmp_path: Path, monkeypatch,
                                                                   piece_size: int) -> None:
    data = blob(3 * piece_size + 17, 2)
    store = Store(tmp_path)
    partial = store.open_partial(Digest.of(data), PieceLayout(len(data), piece_size))
    write(partial, data, [2, 0, 3, 1])
    assert partial.settle_hash() == partial.layout.count
    spans, reads = [], []
    real_span, real_pread = prefix_hash.hash_span, os.pread
    monkeypatch.setattr(prefix_hash, "hash_span", lambda *a: spans.append(a) or real_span(*a))
    monkeypatch.setattr(os, "pread", lambda *a: reads.append(a) or real_pread(*a))
    partial.commit()
    assert spans == [] and reads == []  # neither mapped nor read back: the hash was done
    assert store.blob_path(Digest.of(data)).read_bytes() == data


def test_a_truncated_data_file_fails_the_commit_and_is_discarded(tmp_path: Path) -> None:
    data = blob(4 << 20, 3)
    store = Store(tmp_path)
    partial = store.open_partial(Digest.of(data), PieceLayout(len(data), 1 << 20))
    write(partial, data, [1, 2, 3])
    os.truncate(partial.data_path, 2 << 20)  # behind the store's back: pieces 2 and 3 are gone
    write(partial, data, [0])
    with pytest.raises(DigestMismatch, match="unreadable data"):
        partial.commit()
    assert not store.has(Digest.of(data))
    partial.close()


# -- verification --------------------------------------------------------------------------------


def test_commit_of_wrong_data_raises_and_leaves_nothing(tmp_path: Path) -> None:
    good, bad = blob(1000, 3), blob(1000, 4)
    digest = Digest.of(good)
    store = Store(tmp_path)
    partial = store.open_partial(digest, PieceLayout(1000, 128))
    write(partial, bad)  # each piece matches its own (wrong) digest, the blob does not
    with pytest.raises(DigestMismatch) as err:
        partial.commit()
    assert err.value.expected == str(digest) and err.value.actual == str(Digest.of(bad))
    assert blob_files(tmp_path) == [] and not store.has(digest) and store.usage() == 0
    assert not partial_dir(tmp_path, digest).exists() and store.partial(digest) is None
    assert partial.state is PartialState.DISCARDED and len(partial.have) == 0
    with pytest.raises(PartialClosed):
        write(partial, good, [0])
    partial.close()
    assert list((tmp_path / "partial").rglob("*")) == [tmp_path / "partial" / "sha256"]
    # Starting again starts from nothing.
    with store.open_partial(digest, PieceLayout(1000, 128)) as again:
        assert len(again.have) == 0
        write(again, good)
        again.commit()
    assert store.blob_path(digest).read_bytes() == good


def test_commit_detects_data_corrupted_after_write(tmp_path: Path) -> None:
    data = blob(1000, 5)
    digest = Digest.of(data)
    store = Store(tmp_path)
    partial = store.open_partial(digest, PieceLayout(1000, 100))
    write(partial, data, range(1, 10))  # out of order: pieces 1.. are hashed from disk later
    os.pwrite(partial.fileno(), b"\xff" * 5, 950)
    write(partial, data, [0])
    with pytest.raises(DigestMismatch):
        partial.commit()
    assert blob_files(tmp_path) == []


def test_commit_needs_every_piece(tmp_path: Path) -> None:
    data = blob(500, 6)
    store = Store(tmp_path)
    partial = store.open_partial(Digest.of(data), PieceLayout(500, 100))
    write(partial, data, [0, 1, 2, 4])
    with pytest.raises(IncompleteBlob):
        partial.commit()
    assert partial.state is PartialState.OPEN
    write(partial, data, [3])
    partial.commit()
    assert store.has(Digest.of(data))


def test_write_piece_checks_its_arguments(tmp_path: Path) -> None:
    data = blob(250, 7)
    layout = PieceLayout(250, 100)
    partial = Store(tmp_path).open_partial(Digest.of(data), layout)
    p0 = piece(data, layout, 0)
    with pytest.raises(PieceError):
        partial.write_piece(0, p0[:-1], sha(p0))  # short
    with pytest.raises(PieceError):
        partial.write_piece(2, piece(data, layout, 1), sha(p0))  # last piece is 50 bytes
    with pytest.raises(PieceError):
        partial.write_piece(3, b"", sha(b""))  # no piece 3
    with pytest.raises(PieceError):
        partial.write_piece(0, p0, sha(p0)[:16])
    partial.manifest.set(1, sha(b"something else"))
    with pytest.raises(PieceError):
        partial.write_piece(1, piece(data, layout, 1), sha(piece(data, layout, 1)))
    with pytest.raises(PieceError):
        partial.read_piece(0)
    partial.write_piece(0, memoryview(p0), sha(p0))
    partial.write_piece(0, p0, sha(p0))  # duplicate: harmless
    assert partial.read_piece(0) == p0 and sorted(partial.have) == [0]
    assert (partial_dir(tmp_path, Digest.of(data)) / "journal").stat().st_size == 36


# -- resume ----------------------------------------------------------------------------------------


def test_resume_in_a_new_store_keeps_verified_pieces(tmp_path: Path) -> None:
    data = blob(2000, 8)
    digest = Digest.of(data)
    layout = PieceLayout(2000, 256)
    first = Store(tmp_path).open_partial(digest, layout)
    write(first, data, [0, 1, 2, 6])
    first.close()
    assert Store(tmp_path).resumable() == [digest]

    partial = Store(tmp_path).open_partial(digest, layout)
    assert sorted(partial.have) == [0, 1, 2, 6]
    assert partial.hashed_prefix == 3  # resume folded the contiguous prefix into the blob hash
    assert [i for i, _ in partial.manifest.items()] == [0, 1, 2, 6]
    assert partial.read_piece(6) == piece(data, layout, 6)
    write(partial, data, [3, 4, 5, 7])
    partial.commit()
    assert Store(tmp_path).blob_path(digest).read_bytes() == data


def test_resume_drops_corrupted_pieces_and_a_torn_journal_tail(tmp_path: Path) -> None:
    data = blob(1000, 9)
    digest = Digest.of(data)
    layout = PieceLayout(1000, 100)
    partial = Store(tmp_path).open_partial(digest, layout)
    write(partial, data, [0, 1, 2, 3, 5])
    partial.close()
    directory = partial_dir(tmp_path, digest)
    with open(directory / "data", "r+b") as f:  # piece 2 rots on disk
        f.seek(250)
        f.write(b"\x00\x01\x02")
    with open(directory / "journal", "ab") as f:  # half a record from a crash mid-append
        f.write(b"\x00\x00\x00\x07" + b"\xaa" * 6)

    partial = Store(tmp_path).open_partial(digest, layout)
    assert sorted(partial.have) == [0, 1, 3, 5] and not partial.manifest.known(2)
    assert (directory / "journal").stat().st_size == 4 * 36  # compacted: new records stay aligned
    write(partial, data, [2, 8])
    partial.close()

    partial = Store(tmp_path).open_partial(digest, layout)
    assert sorted(partial.have) == [0, 1, 2, 3, 5, 8]
    write(partial, data, [4, 6, 7, 9])
    partial.commit()
    partial.close()
    assert Store(tmp_path).blob_path(digest).read_bytes() == data


def test_resume_survives_a_truncated_data_file(tmp_path: Path) -> None:
    data = blob(1000, 10)
    digest = Digest.of(data)
    layout = PieceLayout(1000, 100)
    partial = Store(tmp_path).open_partial(digest, layout)
    write(partial, data, [0, 4, 9])
    partial.close()
    os.truncate(partial_dir(tmp_path, digest) / "data", 500)  # as if power loss lost the tail
    partial = Store(tmp_path).open_partial(digest, layout)
    assert sorted(partial.have) == [0, 4]
    assert (partial_dir(tmp_path, digest) / "data").stat().st_size == 1000


CRASHING_CHILD = r"""
import hashlib, os, signal, sys
from pathlib import Path
from p2pdist.core.digest import Digest
from p2pdist.core.layout import PieceLayout
from p2pdist.core.manifest import piece_digest
from p2pdist.store import Store

root, digest, blob_file, piece_size, mode = sys.argv[1:]
data = Path(blob_file).read_bytes()
layout = PieceLayout(len(data), int(piece_size))
partial = Store(Path(root)).open_partial(Digest.parse(digest), layout)

def write(i):
    offset, length = layout.span(i)
    piece = data[offset:offset + length]
    partial.write_piece(i, piece, piece_digest(piece))

for i in range(0, layout.count, 2):  # the even half, no close(), no fsync
    write(i)
if mode != "clean":
    real, calls = os.pwrite, []
    def dying_pwrite(fd, buf, offset):
        calls.append(fd)
        buf = bytes(buf)
        if mode == "torn-data":  # die halfway through piece 1's data
            real(fd, buf[: len(buf) // 2], offset)
            os.kill(os.getpid(), signal.SIGKILL)
        if len(calls) == 2:  # torn-journal: piece 1's data is in, its record only 10 bytes
            real(fd, buf[:10], offset)
            os.kill(os.getpid(), signal.SIGKILL)
        return real(fd, buf, offset)
    os.pwrite = dying_pwrite
    write(1)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.parametrize("mode", ["clean", "torn-data", "torn-journal"])
def test_real_kill_9_keeps_exactly_the_written_pieces(tmp_path: Path, mode: str) -> None:
    data = blob(20 * 1000 - 300, 11)
    digest = Digest.of(data)
    layout = PieceLayout(len(data), 1000)
    root = tmp_path / "root"
    (tmp_path / "blob").write_bytes(data)
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_CHILD, str(root), str(digest), str(tmp_path / "blob"), "1000", mode],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=60,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    written = list(range(0, layout.count, 2))
    journal = partial_dir(root, digest) / "journal"
    assert journal.stat().st_size == 36 * len(written) + (10 if mode == "torn-journal" else 0)

    store = Store(root)
    partial = store.open_partial(digest, layout)
    assert sorted(partial.have) == written
    write(partial, data, [1])
    partial.close()
    partial = Store(root).open_partial(digest, layout)
    assert sorted(partial.have) == sorted([*written, 1])
    write(partial, data, partial.have.missing())
    partial.commit()
    assert Store(root).blob_path(digest).read_bytes() == data


def test_new_layout_restarts_the_partial(tmp_path: Path) -> None:
    data = blob(1000, 12)
    digest = Digest.of(data)
    store = Store(tmp_path)
    old = store.open_partial(digest, PieceLayout(1000, 100))
    write(old, data, [0, 1, 2])
    with pytest.raises(LayoutMismatch):
        store.open_partial(digest, PieceLayout(1000, 50))  # cannot restart under an open holder
    old.close()

    partial = Store(tmp_path).open_partial(digest, PieceLayout(1000, 50))
    assert len(partial.have) == 0 and partial.layout.count == 20
    assert (partial_dir(tmp_path, digest) / "journal").stat().st_size == 0
    write(partial, data)
    partial.commit()
    partial.close()
    manifest = Store(tmp_path).piece_manifest(digest)
    assert manifest is not None and manifest.layout.piece_size == 50


def test_garbled_meta_restarts_the_partial(tmp_path: Path) -> None:
    data = blob(300, 13)
    digest = Digest.of(data)
    layout = PieceLayout(300, 100)
    partial = Store(tmp_path).open_partial(digest, layout)
    write(partial, data, [0])
    partial.close()
    (partial_dir(tmp_path, digest) / "meta").write_bytes(b"\xc1garbage")
    assert len(Store(tmp_path).open_partial(digest, layout).have) == 0


# -- partial lifecycle ------------------------------------------------------------------------------


def test_one_partial_per_digest_with_references(tmp_path: Path) -> None:
    data = blob(400, 14)
    digest = Digest.of(data)
    layout = PieceLayout(400, 100)
    store = Store(tmp_path)
    a = store.open_partial(digest, layout)
    b = store.open_partial(digest, layout)
    assert a is b and store.partial(digest) is a
    write(a, data, [0])
    a.close()
    assert store.partial(digest) is a and b.read_piece(0) == piece(data, layout, 0)
    b.close()
    assert store.partial(digest) is None
    with pytest.raises(PartialClosed):
        b.fileno()
    with pytest.raises(PartialClosed):
        write(b, data, [1])
    assert (partial_dir(tmp_path, digest) / "data").exists()  # kept for resume
    c = store.open_partial(digest, layout)
    assert c is not a and sorted(c.have) == [0]


def test_open_partial_of_a_complete_blob_raises(tmp_path: Path) -> None:
    data = blob(100, 15)
    store = Store(tmp_path)
    digest = put(store, data)
    with pytest.raises(BlobExists):
        store.open_partial(digest, PieceLayout(100, 32))
    assert not partial_dir(tmp_path, digest).exists()


def test_discard_deletes_the_files(tmp_path: Path) -> None:
    data = blob(300, 16)
    digest = Digest.of(data)
    store = Store(tmp_path)
    partial = store.open_partial(digest, PieceLayout(300, 100))
    write(partial, data, [0, 1])
    partial.discard()
    assert not partial_dir(tmp_path, digest).exists() and store.partial(digest) is None
    with pytest.raises(PieceError):
        partial.read_piece(0)
    with pytest.raises(PartialClosed):
        partial.commit()
    partial.close()
    assert Store(tmp_path).resumable() == []


def test_committed_partial_keeps_serving_its_pieces(tmp_path: Path) -> None:
    data = blob(300, 17)
    digest = Digest.of(data)
    layout = PieceLayout(300, 100)
    store = Store(tmp_path)
    partial = store.open_partial(digest, layout)
    uploader = store.open_partial(digest, layout)  # e.g. the peer server serving pieces
    write(partial, data)
    partial.commit()
    partial.close()
    assert partial.read_piece(2) == piece(data, layout, 2)
    assert os.pread(uploader.fileno(), 10, 0) == data[:10]
    assert not store.delete(digest)  # the uploader's reference pins the blob
    uploader.close()
    assert store.delete(digest) and blob_files(tmp_path) == []


# -- gc ----------------------------------------------------------------------------------------------


def test_gc_evicts_least_recently_used(tmp_path: Path) -> None:
    store = Store(tmp_path, capacity=250)
    a, b = put(store, blob(100, 20)), put(store, blob(100, 21))
    with store.open_blob(a):
        pass  # a is now more recent than b
    c = put(store, blob(100, 22))  # commit runs gc
    assert [d for d, _ in store.blobs()] == [a, c]
    assert not store.has(b) and store.usage() == 200
    assert not store.blob_path(b).exists() and not store.blob_path(b).with_suffix(".pieces").exists()
    assert blob_files(tmp_path) == sorted(f"{d.encoded}{ext}" for d in (a, c) for ext in ("", ".pieces"))


def test_gc_never_evicts_pinned_blobs(tmp_path: Path) -> None:
    store = Store(tmp_path, capacity=250)
    a = put(store, blob(100, 30))
    c = put(store, blob(100, 31))
    reader_a, reader_c = store.open_blob(a), store.open_blob(c)
    d = put(store, blob(100, 32))
    reader_d = store.open_blob(d)
    assert store.usage() == 300 and store.gc() == []  # all pinned: over capacity until released
    assert not store.delete(a)
    reader_c.close()
    assert store.gc() == [c] and store.usage() == 200  # a is older but still pinned
    assert reader_a.read(0, 100) == blob(100, 30)
    reader_a.close()
    reader_d.close()
    assert store.gc() == [] and {x for x, _ in store.blobs()} == {a, d}
    assert store.delete(a) and not store.has(a) and store.usage() == 100
    with pytest.raises(BlobNotFound):
        store.open_blob(a)


def test_gc_respects_an_open_partial_of_a_committed_blob(tmp_path: Path) -> None:
    store = Store(tmp_path, capacity=250)
    data = blob(300, 40)
    digest = Digest.of(data)
    partial = store.open_partial(digest, PieceLayout(300, 64))
    write(partial, data)
    partial.commit()  # larger than capacity, but its holder still has it open
    assert store.has(digest) and store.usage() == 300
    partial.close()
    assert store.gc() == [digest] and store.usage() == 0 <= 250


def test_lru_order_survives_a_restart(tmp_path: Path) -> None:
    store = Store(tmp_path)
    a, b = put(store, blob(100, 50)), put(store, blob(100, 51))
    os.utime(store.blob_path(a), ns=(2 * 10**18, 2 * 10**18))
    os.utime(store.blob_path(b), ns=(10**18, 10**18))
    again = Store(tmp_path, capacity=150)
    assert [d for d, _ in again.blobs()] == [b, a]
    assert again.gc() == [b] and again.usage() == 100 <= 150
    os.utime(store.blob_path(a), ns=(10**18, 10**18))
    with again.open_blob(a):
        pass  # opening records recency on disk for the next restart
    assert store.blob_path(a).stat().st_mtime_ns > 10**18


def test_startup_sweeps_crash_leftovers(tmp_path: Path) -> None:
    store = Store(tmp_path)
    kept = put(store, blob(100, 60))
    orphan = Digest.of(b"never committed")
    alg = tmp_path / "blobs" / "sha256"
    (alg / f"{orphan.encoded}.pieces").write_bytes(b"x")  # sidecar written, crash before rename
    (alg / f".{kept.encoded}.pieces.123.tmp").write_bytes(b"x")  # interrupted atomic write
    stale = partial_dir(tmp_path, kept)  # crash after rename, before the partial was removed
    stale.mkdir(parents=True)
    (stale / "data").write_bytes(b"x")
    trash = tmp_path / "partial" / "sha256" / ".abc.trash"
    trash.mkdir()
    again = Store(tmp_path)
    assert blob_files(tmp_path) == sorted([kept.encoded, kept.encoded + ".pieces"])
    assert not stale.exists() and not trash.exists() and again.resumable() == []
    assert again.blobs() == [(kept, 100)]


def test_unreadable_sidecar_gives_no_manifest(tmp_path: Path) -> None:
    store = Store(tmp_path)
    digest = put(store, blob(100, 61))
    sidecar = store.blob_path(digest).with_name(digest.encoded + ".pieces")
    sidecar.write_bytes(msgpack.packb({"piece_size": 32, "digests": [b"\x00" * 32]}))  # too few
    assert store.piece_manifest(digest) is None
    sidecar.write_bytes(b"\x93garbage")
    assert store.piece_manifest(digest) is None
    assert store.piece_manifest(Digest.of(b"absent")) is None


# -- concurrency -------------------------------------------------------------------------------------


def test_concurrent_writes_then_commit(tmp_path: Path) -> None:
    data = blob(300 * 512 + 77, 70)
    digest = Digest.of(data)
    layout = PieceLayout(len(data), 512)
    store = Store(tmp_path)
    partial = store.open_partial(digest, layout)
    work = list(range(layout.count)) * 2  # every piece twice: duplicates race each other
    random.Random(1).shuffle(work)
    lock, errors = threading.Lock(), []

    def worker() -> None:
        while True:
            with lock:
                if not work:
                    return
                i = work.pop()
            try:
                p = piece(data, layout, i)
                partial.write_piece(i, p, sha(p))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and partial.have.complete
    assert (partial_dir(tmp_path, digest) / "journal").stat().st_size == 36 * layout.count
    partial.commit()
    assert store.blob_path(digest).read_bytes() == data


def test_concurrent_readers_while_gc_evicts(tmp_path: Path) -> None:
    store = Store(tmp_path, capacity=2000)
    contents = {}
    for seed in range(5):
        data = blob(400, 100 + seed)
        contents[put(store, data)] = data
    stop, errors, reads = threading.Event(), [], [0]

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        while not stop.is_set():
            digest = rnd.choice(list(contents))
            try:
                with store.open_blob(digest) as r:
                    offset = rnd.randrange(400)
                    if r.read(offset, 400 - offset) != contents[digest][offset:]:
                        errors.append(digest)
                    reads[0] += 1
            except BlobNotFound:
                pass

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for seed in range(20):
        data = blob(400, 200 + seed)
        contents[put(store, data)] = data
    stop.set()
    for t in threads:
        t.join()
    assert errors == [] and reads[0] > 0
    store.gc()
    assert store.usage() <= 2000 and len(store.blobs()) == 5
    for digest, _ in store.blobs():
        assert store.blob_path(digest).read_bytes() == contents[digest]


# -- paths ---------------------------------------------------------------------------------------------


def test_paths_cannot_escape_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    store = Store(root)
    for text in ["sha256:../../etc/passwd", "sha256:" + "a" * 63 + "/", "../x:" + "a" * 64, "sha256:" + "A" * 64]:
        with pytest.raises(DigestError):
            Digest.parse(text)
    hand_built = [Digest("sha256", "../../../../tmp/evil"), Digest("..", "a" * 64), Digest("sha256", "/etc")]
    calls = [
        store.has, store.size, store.blob_path, store.open_blob, store.delete, store.piece_manifest,
        store.partial, lambda d: store.open_partial(d, PieceLayout(1, 1)),
    ]
    for digest in hand_built:
        for call in calls:
            with pytest.raises(DigestError):
                call(digest)
    with pytest.raises(TypeError):
        store.has("sha256:" + "a" * 64)  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["root"]
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*")) == ["blobs", "partial"]
