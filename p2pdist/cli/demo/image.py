"""A multi-layer OCI image layout generated on disk: random-content tar layers, config, manifest, index.

Layers are uncompressed tars (``application/vnd.oci.image.layer.v1.tar``) so that generating them costs
little more than writing the bytes; each is streamed to disk and hashed on the way, in bounded chunks.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"
CHUNK = 1 << 20


@dataclass(frozen=True)
class Blob:
    """One blob of the image: a layer, the config or the manifest."""

    digest: str
    size: int
    media_type: str

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """An OCI image layout directory holding one tagged image."""

    layout: Path
    tag: str
    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        """What a node needs to run the image: the config and every layer (the manifest aside)."""
        return (self.config, *self.layers)

    @property
    def size(self) -> int:
        return sum(blob.size for blob in self.blobs)

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.layout / "blobs" / algorithm / encoded


class RandomReader(io.RawIOBase):
    """``size`` random bytes, read in whatever chunks tarfile asks for."""

    def __init__(self, size: int) -> None:
        self._left = size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return os.urandom(n)


class _HashingWriter(io.RawIOBase):
    """Writes to a file and hashes what passes, so a blob's digest is known when it is written."""

    def __init__(self, path: Path) -> None:
        self._file = open(path, "wb")  # noqa: SIM115 - closed in close()
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        self._file.write(data)
        self.hash.update(data)
        self.size += len(data)
        return len(data)

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
        super().close()


def _commit(blobs: Path, tmp: Path, writer: _HashingWriter, media_type: str) -> Blob:
    digest = "sha256:" + writer.hash.hexdigest()
    tmp.replace(blobs / writer.hash.hexdigest())
    return Blob(digest, writer.size, media_type)


def _write_layer(blobs: Path, index: int, size: int) -> Blob:
    tmp = blobs / f".layer-{index}.tmp"
    writer = _HashingWriter(tmp)
    try:
        with tarfile.open(fileobj=writer, mode="w|", bufsize=CHUNK, format=tarfile.PAX_FORMAT,
                          copybufsize=CHUNK) as tar:
            info = tarfile.TarInfo(f"layer{index}/random.bin")
            info.size, info.mode, info.mtime = size, 0o644, 0
            tar.addfile(info, RandomReader(size))
    finally:
        writer.close()
    return _commit(blobs, tmp, writer, OCI_LAYER)


def _write_json(blobs: Path, name: str, value: object, media_type: str) -> Blob:
    tmp = blobs / f".{name}.tmp"
    writer = _HashingWriter(tmp)
    try:
        writer.write(json.dumps(value, sort_keys=True, separators=(",", ":")).encode())
    finally:
        writer.close()
    return _commit(blobs, tmp, writer, media_type)


def build_image(layout: Path, layer_sizes: list[int], tag: str = "latest") -> Image:
    """Write an OCI image layout with one random tar layer per entry of ``layer_sizes`` (file bytes)."""
    if not layer_sizes:
        raise ValueError("an image needs at least one layer")
    if any(size < 0 for size in layer_sizes):
        raise ValueError(f"layer sizes must be >= 0, got {layer_sizes}")
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    layers = tuple(_write_layer(blobs, i, size) for i, size in enumerate(layer_sizes, 1))
    config = _write_json(blobs, "config", {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        # Uncompressed layers: each diff_id is the layer's own digest.
        "rootfs": {"type": "layers", "diff_ids": [layer.digest for layer in layers]},
        "history": [{"created_by": f"p2pdist demo: layer {i} of random bytes"} for i in range(1, len(layers) + 1)],
    }, OCI_CONFIG)
    manifest = _write_json(blobs, "manifest", {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }, OCI_MANIFEST)
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [{**manifest.descriptor(), "annotations": {REF_NAME: tag}}]}
    (layout / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}) + "\n")
    return Image(layout, tag, manifest, config, layers)
