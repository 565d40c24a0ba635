"""Which event loop a server runs on: uvloop for TLS, asyncio's own otherwise.

Measured on loopback (benchmarks/bench_tls.py and a 4 MiB-piece micro-benchmark): asyncio's TLS
layer works one 16 KiB record per loop turn in Python, 105 MB/s and 11 CPU-s/GiB; uvloop's, in
Cython, 515 MB/s and 2.2 CPU-s/GiB. Without TLS uvloop was slower (914 vs 1,343 MB/s: it has no
loop.sendfile, so files go through a copy), so plain-HTTP nodes stay on asyncio.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T], *, tls: bool) -> T:
    if tls:
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
