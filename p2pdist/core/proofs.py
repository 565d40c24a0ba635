"""Piece proofs: the tracker's signature over a published piece digest, so digests travel with pieces.

Why: a node takes no piece from a peer before it knows the piece's digest, and it used to learn
digests only from the tracker, at its announces. A loaded tracker spaces those (2.2 s apart at
10,000 nodes, tracker/pacer.py), so fresh pieces waited at every node for its next announce. With a
proof, a neighbour that holds a piece hands over its digest too (with HAVE and bitfield messages)
and the node checks it with the tracker's public key alone, as it checks peer tickets.

A proof binds the digest to the blob, its layout (size and piece size), the piece index and the
tracker's digest-log **epoch**. The epoch changes whenever the tracker forgets a blob's digests (a
corrupt reset, a restart), so an agent only takes proofs of the epoch its own tracker cursor is in:
a digest the tracker withdrew stops travelling with its proof.

Pure (no I/O): the tracker signs (Ed25519, ~25 us, once per published piece), agents verify
(~60 us, once per digest learned from a peer).
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .manifest import PIECE_DIGEST_SIZE

PROOF_SIZE = 64  # an Ed25519 signature
# A tracker's digest cursor (``digest_pos`` on the wire) is (epoch << EPOCH_SHIFT) | offset into the
# blob's digest log. The epoch changes whenever the log is forgotten (corrupt reset, blob dropped,
# tracker restarted), so a cursor from an older log is recognised even when its offset fits the new.
EPOCH_SHIFT = 21  # > log2(MAX_PIECES): an offset never spills into the epoch bits
MAX_OFFSET = (1 << EPOCH_SHIFT) - 1  # the offset bits of a cursor
_CONTEXT = b"p2pdist piece proof 1\0"
_NUMBERS = struct.Struct(">QQQI")  # size, piece size, epoch, index


def cursor_epoch(cursor: int) -> int:
    """The digest epoch a tracker cursor belongs to (0: no cursor yet)."""
    return cursor >> EPOCH_SHIFT


def cursor_offset(cursor: int) -> int:
    """How far into the tracker's digest log a cursor points (in the reply to a complete announce:
    how many piece digests the tracker has)."""
    return cursor & MAX_OFFSET


def tracker_lacks_digests(cursor: int, count: int) -> bool:
    """Whether the reply to a complete announce (its ``cursor``) says the tracker lacks some of a
    ``count``-piece blob's digests, so a seeder must send its own (tracker.service._cursor)."""
    return cursor_offset(cursor) < count


def proof_message(blob: str, size: int, piece_size: int, epoch: int, index: int, digest: bytes) -> bytes:
    """The bytes a proof signs: every field that makes the digest true only of this piece."""
    return _CONTEXT + blob.encode("ascii") + b"\0" + _NUMBERS.pack(size, piece_size, epoch, index) + digest


class PieceNotary:
    """The tracker's side: proofs for the digests it publishes, each signed once per epoch."""

    def __init__(self, signer: Ed25519PrivateKey, blobs: int = 4096) -> None:
        self._signer = signer
        self._blobs = blobs
        # (blob, size, epoch) -> index -> proof. Ed25519 is deterministic, so replicas and restarts
        # sign the same bytes: what is kept here is only CPU saved, never state to agree on.
        self._signed: dict[tuple[str, int, int], dict[int, bytes]] = {}

    def proofs(self, blob: str, size: int, piece_size: int, epoch: int,
               digests: list[tuple[int, bytes]]) -> list[bytes]:
        """Proofs for a reply's page of ``digests``, in its order."""
        key = (blob, size, epoch)
        signed = self._signed.get(key)
        if signed is None:
            if len(self._signed) >= self._blobs:
                self._signed.pop(next(iter(self._signed)))  # the oldest blob's: signed again if asked
            signed = self._signed[key] = {}
        out = []
        for index, digest in digests:
            proof = signed.get(index)
            if proof is None:
                proof = signed[index] = self._signer.sign(proof_message(blob, size, piece_size, epoch, index, digest))
            out.append(proof)
        return out


class ProofChecker:
    """An agent's side: is this digest the tracker's, for this piece of this blob in this epoch?"""

    def __init__(self, tracker_key: bytes) -> None:
        self._key = Ed25519PublicKey.from_public_bytes(tracker_key)

    def valid(self, blob: str, size: int, piece_size: int, epoch: int, index: int, digest: bytes,
              proof: bytes) -> bool:
        if len(digest) != PIECE_DIGEST_SIZE or len(proof) != PROOF_SIZE:
            return False
        try:
            self._key.verify(proof, proof_message(blob, size, piece_size, epoch, index, digest))
        except InvalidSignature:
            return False
        return True
