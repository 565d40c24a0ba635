import hashlib
import os

import blake3
import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pdist.core.layout import PieceLayout
from p2pdist.core.manifest import (
    BLOCK_SIZE,
    PIECE_DIGEST_SIZE,
    ManifestError,
    PieceManifest,
    block_count,
    block_digests,
    hash_piece,
    piece_digest,
    piece_hasher,
    piece_root,
)


def _pieces(blob: bytes, piece_size: int) -> list[bytes]:
    layout = PieceLayout(len(blob), piece_size)
    return [blob[o : o + n] for o, n in (layout.span(i) for i in range(layout.count))]


def test_piece_digest_is_the_root_over_its_blocks_blake3_digests():
    # The BLAKE3 reference vector for "abc" (BLAKE3 paper / test_vectors): the digest of its one block.
    abc = bytes.fromhex("6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85")
    assert block_digests(b"abc") == abc
    root = piece_digest(b"abc")
    assert len(root) == PIECE_DIGEST_SIZE
    # The root is BLAKE3 in key-derivation mode over the block digests: never a plain BLAKE3 of them
    # (a piece whose bytes are another piece's block list must not share its digest).
    assert root == piece_root(abc) != blake3.blake3(abc).digest()
    assert piece_digest(memoryview(bytearray(b"abc"))) == root
    h = piece_hasher()
    h.update(b"a")
    h.update(b"bc")
    assert h.digest() == root


def test_a_piece_is_cut_into_256_kib_blocks_each_hashed_alone():
    data = os.urandom(2 * BLOCK_SIZE + 5)
    blocks = block_digests(data)
    assert len(blocks) == 3 * PIECE_DIGEST_SIZE == block_count(len(data)) * PIECE_DIGEST_SIZE
    assert [blocks[k * 32 : (k + 1) * 32] for k in range(3)] == [
        blake3.blake3(data[:BLOCK_SIZE]).digest(),
        blake3.blake3(data[BLOCK_SIZE : 2 * BLOCK_SIZE]).digest(),
        blake3.blake3(data[2 * BLOCK_SIZE :]).digest(),
    ]
    assert piece_digest(data) == piece_root(blocks)
    assert hash_piece(data) == (piece_root(blocks), blocks)
    # A change in one block changes that block's digest only, and the root.
    changed = bytearray(data)
    changed[BLOCK_SIZE + 7] ^= 1
    other = block_digests(changed)
    assert other[:32] == blocks[:32] and other[64:] == blocks[64:] and other[32:64] != blocks[32:64]
    assert piece_digest(changed) != piece_digest(data)
    # Exact multiples have no empty trailing block; an empty piece has one empty block.
    assert block_count(BLOCK_SIZE) == 1 and len(block_digests(bytes(BLOCK_SIZE))) == 32
    assert block_digests(b"") == blake3.blake3(b"").digest() and block_count(0) == 1


def test_a_block_list_that_is_not_whole_digests_is_refused():
    for bad in (b"", b"x" * 31, b"x" * 33):
        with pytest.raises(ManifestError, match="block list"):
            piece_root(bad)


@given(st.integers(0, 3 * BLOCK_SIZE + 3), st.lists(st.integers(0, 3 * BLOCK_SIZE + 3), max_size=6))
def test_a_piece_fed_in_any_cuts_hashes_as_one_piece(length, cuts):
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    h = piece_hasher()
    last = 0
    for cut in sorted({c for c in cuts if c <= length}):
        h.update(data[last:cut])
        last = cut
    h.update(memoryview(data)[last:])
    assert h.blocks() == block_digests(data)
    assert h.digest() == piece_digest(data)


def test_set_get_known_and_count():
    m = PieceManifest(PieceLayout(10, 4))
    assert len(m) == 0 and not m.complete
    d = piece_digest(b"x")
    assert m.set(1, d) is True
    assert m.get(1) == d and m.known(1)
    assert m.get(0) is None and not m.known(0)
    assert len(m) == 1
    assert m.set(1, d) is False  # same digest again: idempotent, not counted twice
    assert len(m) == 1
    assert list(m.items()) == [(1, d)]


def test_conflicting_digest_rejected_and_original_kept():
    m = PieceManifest(PieceLayout(10, 4))
    a, b = piece_digest(b"a"), piece_digest(b"b")
    m.set(2, a)
    with pytest.raises(ManifestError, match="conflicting"):
        m.set(2, b)
    assert m.get(2) == a
    assert len(m) == 1


@pytest.mark.parametrize(
    "digest", [b"", b"x" * 31, b"x" * 33, "x" * 32, bytearray(32), None, hashlib.sha256(b"").hexdigest()]
)
def test_malformed_digest_rejected(digest):
    m = PieceManifest(PieceLayout(10, 4))
    with pytest.raises(ManifestError):
        m.set(0, digest)
    assert not m.known(0) and len(m) == 0


@pytest.mark.parametrize("index", [-1, 3, 100])
def test_index_out_of_range(index):
    m = PieceManifest(PieceLayout(10, 4), [(2, piece_digest(b"z"))])
    with pytest.raises(ManifestError):
        m.set(index, piece_digest(b"x"))
    # Negative indices must not wrap onto the last piece.
    with pytest.raises(ManifestError):
        m.get(index)
    with pytest.raises(ManifestError):
        m.known(index)
    with pytest.raises(ManifestError):
        m.verify(index, b"zz")


@given(st.binary(max_size=300), st.integers(1, 64))
def test_verify_accepts_exact_pieces_and_completes(blob, piece_size):
    layout = PieceLayout(len(blob), piece_size)
    pieces = _pieces(blob, piece_size)
    m = PieceManifest(layout, ((i, piece_digest(p)) for i, p in enumerate(pieces)))
    assert m.complete and len(m) == layout.count
    for i, p in enumerate(pieces):
        assert m.verify(i, p)
        assert m.verify(i, memoryview(p))


@given(st.binary(min_size=1, max_size=300), st.integers(1, 64), st.data())
def test_verify_rejects_corrupt_data(blob, piece_size, data):
    pieces = _pieces(blob, piece_size)
    m = PieceManifest(PieceLayout(len(blob), piece_size), ((i, piece_digest(p)) for i, p in enumerate(pieces)))
    i = data.draw(st.integers(0, len(pieces) - 1))
    p = bytearray(pieces[i])
    pos = data.draw(st.integers(0, len(p) - 1))
    p[pos] ^= data.draw(st.integers(1, 255))
    assert not m.verify(i, bytes(p))
    # Another piece's bytes are not this piece (unless identical content).
    j = (i + 1) % len(pieces)
    if pieces[j] != pieces[i]:
        assert not m.verify(i, pieces[j])


def test_verify_rejects_wrong_length_even_if_digest_matches():
    # A manifest entry whose digest happens to match data of the wrong length must still fail:
    # a piece is only valid at its layout length.
    layout = PieceLayout(10, 4)
    m = PieceManifest(layout)
    short = b"abc"
    m.set(0, piece_digest(short))  # digest of 3 bytes for a 4-byte piece
    assert not m.verify(0, short)
    m2 = PieceManifest(layout)
    m2.set(2, piece_digest(b"ab"))  # last piece is 2 bytes
    assert m2.verify(2, b"ab")
    assert not m2.verify(2, b"ab\x00")


def test_verify_unknown_digest_is_false():
    m = PieceManifest(PieceLayout(4, 4))
    assert not m.verify(0, b"abcd")


def test_empty_blob_manifest():
    m = PieceManifest(PieceLayout(0, 4))
    assert not m.complete
    m.set(0, piece_digest(b""))
    assert m.complete
    assert m.verify(0, b"")
    assert not m.verify(0, b"\x00")


def test_constructor_rejects_conflicting_pairs():
    with pytest.raises(ManifestError):
        PieceManifest(PieceLayout(10, 4), [(0, piece_digest(b"a")), (0, piece_digest(b"b"))])
