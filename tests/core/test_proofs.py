"""Piece proofs: the tracker's signature binds a digest to one piece of one blob, layout and epoch."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.core import wire
from p2pdist.core.identity import public_bytes, ticket_signer
from p2pdist.core.proofs import EPOCH_SHIFT, PieceNotary, ProofChecker, cursor_epoch

BLOB = "sha256:" + "ab" * 32
DIGEST = bytes(range(32))
FIELDS = (BLOB, 10 << 20, 4 << 20, 7, 2, DIGEST)


def test_a_proof_holds_for_its_piece_and_for_nothing_else():
    signer = ticket_signer("cluster-secret")
    proof = PieceNotary(signer).proofs(BLOB, 10 << 20, 4 << 20, 7, [(2, DIGEST)])[0]
    checker = ProofChecker(public_bytes(signer.public_key()))
    assert checker.valid(*FIELDS, proof)
    others = [
        ("sha256:" + "cd" * 32, 10 << 20, 4 << 20, 7, 2, DIGEST),  # another blob
        (BLOB, (10 << 20) - 1, 4 << 20, 7, 2, DIGEST),  # another size
        (BLOB, 10 << 20, 1 << 20, 7, 2, DIGEST),  # another layout
        (BLOB, 10 << 20, 4 << 20, 8, 2, DIGEST),  # another epoch: a log the tracker forgot
        (BLOB, 10 << 20, 4 << 20, 7, 1, DIGEST),  # another piece
        (BLOB, 10 << 20, 4 << 20, 7, 2, bytes(32)),  # another digest
    ]
    for fields in others:
        assert not checker.valid(*fields, proof), fields
    assert not checker.valid(*FIELDS, proof[:-1] + bytes([proof[-1] ^ 1]))
    assert not checker.valid(*FIELDS, proof[:32])
    # Signed by any other key (a node making up proofs): refused.
    forged = PieceNotary(Ed25519PrivateKey.generate()).proofs(BLOB, 10 << 20, 4 << 20, 7, [(2, DIGEST)])[0]
    assert not checker.valid(*FIELDS, forged)


def test_the_notary_signs_each_digest_once_and_replicas_agree():
    signer = ticket_signer("cluster-secret")
    notary = PieceNotary(signer, blobs=1)
    page = [(0, DIGEST), (1, bytes(32))]
    first = notary.proofs(BLOB, 10 << 20, 4 << 20, 7, page)
    assert notary.proofs(BLOB, 10 << 20, 4 << 20, 7, page[1:]) == first[1:]
    # Ed25519 is deterministic: another replica (or a restart) on the same secret signs the same bytes.
    assert PieceNotary(ticket_signer("cluster-secret")).proofs(BLOB, 10 << 20, 4 << 20, 7, page) == first
    # Bounded: a second blob evicts the first, whose proofs are signed again (the same) when asked.
    notary.proofs("sha256:" + "cd" * 32, 1, 1, 1, [(0, DIGEST)])
    assert len(notary._signed) == 1
    assert notary.proofs(BLOB, 10 << 20, 4 << 20, 7, page) == first


def test_the_epoch_is_the_cursors_high_bits():
    assert cursor_epoch(0) == 0
    assert cursor_epoch((5 << EPOCH_SHIFT) | 123) == 5


def test_proofs_on_the_wire_must_be_whole():
    have = wire.Have(BLOB, 3, DIGEST, b"p" * 64, 9)
    assert wire.decode(wire.encode(have)) == have
    assert wire.decode(wire.encode(wire.Have(BLOB, 3))) == wire.Have(BLOB, 3)  # no proof: as before
    bf = wire.BitfieldMsg(BLOB, 8, b"\x20", 9, [(2, DIGEST, b"p" * 64)])
    assert wire.decode(wire.encode(bf)) == bf
    with pytest.raises(wire.WireError, match="64-byte piece proof"):
        wire.decode(wire.encode(bf, proofs=[[2, DIGEST, b"p" * 63]]))
    with pytest.raises(wire.WireError, match="index, piece digest, proof"):
        wire.decode(wire.encode(bf, proofs=[[2, DIGEST]]))
    with pytest.raises(wire.WireError, match="at most 64 bytes"):
        wire.decode(wire.encode(have, proof=b"p" * 65))
    reply = wire.AnnounceReply(1.0, digests=[(0, DIGEST)], proofs=[b"q" * 64])
    assert wire.decode(wire.encode(reply)).proofs == [b"q" * 64]
    with pytest.raises(wire.WireError, match="64-byte piece proof"):
        wire.decode(wire.encode(reply, proofs=[b"q"]))
