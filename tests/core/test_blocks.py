"""core.blocks: a piece's block digests on the wire, and checking a piece block by block as it lands."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pdist.core import blocks
from p2pdist.core.blocks import BadBlock, BadBlocks, BlockCheck, MissingBlocks
from p2pdist.core.layout import MAX_PIECE_SIZE
from p2pdist.core.manifest import BLOCK_SIZE, block_count, block_digests, piece_digest

PIECE = os.urandom(5 * BLOCK_SIZE + 1000)


def test_block_digests_travel_as_base64_and_must_make_the_piece_digest():
    text = blocks.encode(block_digests(PIECE))
    assert blocks.decode(text, len(PIECE), piece_digest(PIECE)) == block_digests(PIECE)
    # The same list for another piece's digest: a lie, however well formed.
    with pytest.raises(BadBlocks, match="do not make the piece's digest"):
        blocks.decode(text, len(PIECE), piece_digest(PIECE[:-1] + b"x"))
    # Digests for a piece of another length (one block short).
    short = blocks.encode(block_digests(PIECE)[:-32])
    with pytest.raises(BadBlocks, match="carries 160 bytes of digests"):
        blocks.decode(short, len(PIECE), piece_digest(PIECE))
    with pytest.raises(MissingBlocks):
        blocks.decode(None, len(PIECE), piece_digest(PIECE))
    with pytest.raises(BadBlocks, match="not base64"):
        blocks.decode("@@@@", len(PIECE), piece_digest(PIECE))


def test_the_longest_header_is_that_of_the_largest_piece():
    largest = blocks.encode(bytes(block_count(MAX_PIECE_SIZE) * 32))
    assert len(largest) == blocks.MAX_HEADER  # 64 digests of a 16 MiB piece
    with pytest.raises(BadBlocks, match="more than a piece ever needs"):
        blocks.decode(largest + "AAAA", MAX_PIECE_SIZE, bytes(32))


@given(st.lists(st.integers(1, 3 * BLOCK_SIZE), max_size=12))
def test_a_piece_arriving_in_any_cuts_is_checked_exactly_as_far_as_whole_blocks_reach(steps):
    check = BlockCheck(block_digests(PIECE), len(PIECE))
    data = bytearray()
    for step in steps:
        data += PIECE[len(data):len(data) + step]
        checked = check.advance(data)
        # Every whole block that arrived is checked; the last, shorter one only once it is all here.
        assert checked == (len(PIECE) if len(data) >= len(PIECE) else len(data) // BLOCK_SIZE * BLOCK_SIZE)
    data += PIECE[len(data):]
    assert check.advance(data) == len(PIECE) and check.done


@pytest.mark.parametrize("block", [0, 2, 5])
def test_the_first_bad_block_is_named_when_it_completes(block):
    bad = bytearray(PIECE)
    bad[block * BLOCK_SIZE + 3] ^= 0x80
    check = BlockCheck(block_digests(PIECE), len(PIECE))
    # Everything before the bad block checks out...
    assert check.advance(bad[: block * BLOCK_SIZE]) == block * BLOCK_SIZE
    # ...and the bad one is caught as soon as it is whole, not at the end of the piece.
    end = min((block + 1) * BLOCK_SIZE, len(PIECE))
    with pytest.raises(BadBlock, match=f"block {block} "):
        check.advance(bad[:end])


def test_an_empty_piece_has_one_empty_block():
    assert BlockCheck(block_digests(b""), 0).advance(b"") == 0
    with pytest.raises(BadBlock):
        BlockCheck(bytes(32), 0).advance(b"")
