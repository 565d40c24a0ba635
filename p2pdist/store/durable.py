"""Durability helpers shared by the store, the node secret and `p2pdist configure`."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Callable
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """A rename or a new file is durable only once its directory entry is on disk."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# sync_file_range(2) flags (linux/fs.h): start writing the range's dirty pages, do not wait for it.
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None  # not Linux/glibc: the final fsync does all the writing, as before
    fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing ``[offset, offset + length)`` of ``fd`` to disk now.

    A blob is fsynced before it is committed. Left to the end, that fsync wrote the whole blob after
    the last byte arrived: 0.4-0.46 s of a 1.3 s 1 GiB download here. Started piece by piece, the
    writing overlaps the download and the final fsync finds little left. Only a hint: it neither
    waits nor makes anything durable by itself, so failures are ignored.
    """
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
