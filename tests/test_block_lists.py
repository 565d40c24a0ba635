"""agent.block_lists: the block digests the peer server sends with pieces, kept for the pieces asked most."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pdist.agent.block_lists import BlockLists
from p2pdist.core.manifest import BLOCK_SIZE, block_digests
from p2pdist.store import CorruptData


def test_the_least_recently_used_lists_go_first_once_the_bytes_run_over():
    lists = BlockLists(capacity=3 * 64)
    for k in range(3):
        lists.put("b", k * 10, 10, bytes([k]) * 64)
    assert lists.get("b", 0, 10) == bytes(64)  # used: now the most recent
    lists.put("b", 30, 10, b"\x03" * 64)  # over capacity: the least recent (piece at 10) goes
    assert lists.get("b", 10, 10) is None
    assert [lists.get("b", o, 10) is not None for o in (0, 20, 30)] == [True, True, True]
    lists.put("b", 30, 10, b"\x04" * 64)  # the same key again replaces, and counts once
    assert lists.get("b", 0, 10) is not None and lists.get("b", 20, 10) is not None
    lists.forget("b")
    assert all(lists.get("b", o, 10) is None for o in (0, 20, 30))


async def test_a_range_not_kept_is_hashed_from_its_file_once(tmp_path: Path):
    data = os.urandom(3 * BLOCK_SIZE + 77)
    path = tmp_path / "blob"
    path.write_bytes(data)
    lists = BlockLists()
    offset, length = BLOCK_SIZE - 5, 2 * BLOCK_SIZE
    assert await lists.for_range("b", path, offset, length) == block_digests(data[offset:offset + length])
    assert lists.hashed == 1
    assert await lists.for_range("b", path, offset, length) == block_digests(data[offset:offset + length])
    assert lists.hashed == 1  # kept: not hashed again
    with pytest.raises(CorruptData, match="truncated"):
        await lists.for_range("b", path, 3 * BLOCK_SIZE, BLOCK_SIZE)  # past the end of the file
