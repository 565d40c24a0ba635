"""The store: complete, verified blobs and resumable partial downloads on local disk.

Layout under ``root``::

    blobs/<alg>/<hex>            complete, verified blob (immutable once renamed in)
    blobs/<alg>/<hex>.pieces     msgpack {"piece_size", "piece_hash", "digests"}: per-piece digests (core.manifest)
    partial/<alg>/<hex>/meta     msgpack {"digest", "size", "piece_size", "piece_hash"}, written atomically at creation
    partial/<alg>/<hex>/data     the blob being filled with positional writes
    partial/<alg>/<hex>/journal  36-byte records (piece index, piece digest), written after the data

The journal is not fsynced per piece. On resume every journalled piece is re-hashed from ``data``
and dropped if it no longer matches: that survives kill -9 and power loss alike without paying a
flush per piece. Commit is verify + fsync + rename, so a crash leaves either a resumable partial or a
complete verified blob. Every path comes from a re-parsed core ``Digest``, so none can escape ``root``.

Synchronous and thread-safe; the agent calls the slow parts (open_partial, commit, gc) through
``asyncio.to_thread``. One ``Store`` per root directory.
"""

from .blobs import BlobReader, Store
from .common import (
    BlobExists,
    BlobNotFound,
    CorruptData,
    IncompleteBlob,
    LayoutMismatch,
    PartialClosed,
    PartialState,
    PieceError,
    StoreError,
    StoreFull,
    read_range,
)
from .partial import Partial

__all__ = [
    "BlobExists", "BlobNotFound", "BlobReader", "CorruptData", "IncompleteBlob", "LayoutMismatch", "Partial",
    "PartialClosed", "PartialState", "PieceError", "Store", "StoreError", "StoreFull",
    "read_range",
]
