"""copy_range: the mirror's copying sender, from the page cache on the loop and from disk in a thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p2pdist.agent.sendfile import COPY_CHUNK, copy_range


def _cold_file(path: Path, data: bytes) -> int:
    """The file written, synced and dropped from the page cache: reads must go to the disk."""
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    return fd


def _collect(into: list[bytes]):
    async def write(chunk: bytes | bytearray) -> None:
        into.append(bytes(chunk))

    return write


async def test_copies_exactly_the_range_in_small_chunks_from_cache_and_from_disk(tmp_path: Path) -> None:
    data = os.urandom(3 * COPY_CHUNK + 12345)
    fd = _cold_file(tmp_path / "blob", data)
    try:
        with pytest.raises(BlockingIOError):  # this test really takes the disk path first
            os.preadv(fd, [bytearray(16)], 0, os.RWF_NOWAIT)
        for _ in range(2):  # cold from disk, then warm from the page cache
            sent: list[bytes] = []
            await copy_range(fd, 7, len(data) - 20, _collect(sent))
            assert b"".join(sent) == data[7:-13]
            assert max(len(c) for c in sent) <= COPY_CHUNK
    finally:
        os.close(fd)


async def test_a_file_shorter_than_the_range_is_an_error_not_a_short_answer(tmp_path: Path) -> None:
    fd = _cold_file(tmp_path / "short", b"x" * 1000)
    sent: list[bytes] = []
    try:
        with pytest.raises(ConnectionAbortedError, match="short"):
            await copy_range(fd, 0, 2000, _collect(sent))
        assert b"".join(sent) == b"x" * 1000
    finally:
        os.close(fd)
