"""Runnable multi-layer OCI images for client tests, built without a Docker daemon.

:func:`build_image` writes an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/*``):

- layer 0: busybox-static's ``/bin/busybox`` with ``sh``, ``echo``, ``cat`` and ``sha256sum`` links,
  so ``podman run IMAGE sh -c 'echo hi'`` works;
- layers 1..n: one file of random bytes each (``/data/random-N.bin``), one of them >= 64 MiB.

Layers are gzip streams at level 0 ("stored" deflate blocks): valid gzip that every client unpacks
(containerd, podman and dockerd all accept ``tar+gzip``), written at memory speed where level 1
takes ~2 s per 64 MiB of random data. Random content compresses to nothing anyway.

:meth:`OciImage.push` copies the layout into a registry with ``skopeo copy`` (what REAL_STACK.md
prescribes) and checks that the registry holds the very manifest digest built here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p2pdist.cli.demo.image import RandomReader

BUSYBOX = Path("/bin/busybox")
BUSYBOX_LINKS = ("sh", "echo", "cat", "ls", "sha256sum", "true")
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
BIG_LAYER = (64 << 20) + 123_457  # >= 64 MiB and not a multiple of any piece size
CHUNK = 1 << 20


class ImageError(RuntimeError):
    """The test image could not be built or pushed."""


@dataclass(frozen=True)
class Layer:
    digest: str  # of the gzip blob
    diff_id: str  # of the uncompressed tar
    size: int  # blob bytes
    media_type: str = OCI_LAYER_GZIP


@dataclass(frozen=True)
class OciImage:
    """An OCI image layout on disk with one tagged manifest."""

    layout: Path
    tag: str
    manifest_digest: str
    manifest: bytes
    config_digest: str
    layers: tuple[Layer, ...]

    @property
    def layer_digests(self) -> list[str]:
        return [layer.digest for layer in self.layers]

    @property
    def blob_digests(self) -> list[str]:
        """Every blob a pull fetches: the config and the layers."""
        return [self.config_digest, *self.layer_digests]

    @property
    def big_layer(self) -> Layer:
        return max(self.layers, key=lambda layer: layer.size)

    def blob_path(self, digest: str) -> Path:
        algorithm, _, encoded = digest.partition(":")
        return self.layout / "blobs" / algorithm / encoded

    def push(self, registry_host: str, repo: str, tag: str | None = None, *, creds: str | None = None,
             timeout: float = 120.0) -> str:
        """``skopeo copy oci:LAYOUT:TAG docker://REGISTRY/REPO:TAG`` over plain http; returns the manifest digest.

        ``creds`` ("user:password") for a registry with auth.

        skopeo keeps the OCI manifest byte for byte when no conversion is asked for; the digest the
        registry reports is checked against ours so the tests' digest expectations hold.
        """
        tag = tag or self.tag
        skopeo = require_binary("skopeo", "skopeo")
        digest_file = self.layout.parent / f"pushed-{os.getpid()}-{repo.replace('/', '_')}-{tag}.digest"
        cmd = [skopeo, "copy", "--quiet", "--dest-tls-verify=false", "--digestfile", str(digest_file),
               *(["--dest-creds", creds] if creds else []),
               f"oci:{self.layout}:{self.tag}", f"docker://{registry_host}/{repo}:{tag}"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if out.returncode != 0:
            raise ImageError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-3000:]}")
        pushed = digest_file.read_text().strip()
        digest_file.unlink(missing_ok=True)
        if pushed != self.manifest_digest:
            raise ImageError(f"registry stored manifest {pushed}, built {self.manifest_digest}: skopeo converted it")
        return pushed

    def verify_dir(self, out: Path) -> None:
        """Check a ``skopeo copy ... dir:OUT`` result: the manifest and every blob hash to their digests."""
        manifest = (out / "manifest.json").read_bytes()
        if manifest != self.manifest:
            raise ImageError(f"{out}/manifest.json differs from the pushed manifest")
        for digest in self.blob_digests:
            path = out / digest.partition(":")[2]
            if not path.exists():
                raise ImageError(f"{path} missing from the skopeo dir: output")
            actual = "sha256:" + file_sha256(path)
            if actual != digest:
                raise ImageError(f"{path} hashes to {actual}, not {digest}: a corrupt blob was served")


def require_binary(name: str, package: str) -> str:
    """The binary's path; fails (never skips) with the apt package to install when it is missing."""
    path = shutil.which(name)
    if path is None:
        raise ImageError(f"{name} not found on PATH: apt-get install -y --no-install-recommends {package} "
                         "(scripts/setup.sh installs it)")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class _HashingGzipWriter(io.RawIOBase):
    """A file-like sink for tarfile: hashes the tar stream, gzips it at level 0 into ``out``, hashes that too."""

    def __init__(self, out: io.BufferedWriter) -> None:
        self.out = out
        self.tar_hash = hashlib.sha256()
        self.blob_hash = hashlib.sha256()
        self.size = 0
        self.crc = 0
        self.raw_size = 0
        # wbits 31 = gzip container; level 0 = stored blocks. mtime 0 in the header keeps digests stable.
        self.deflate = zlib.compressobj(0, zlib.DEFLATED, 31)

    def writable(self) -> bool:
        return True

    def _emit(self, data: bytes) -> None:
        if data:
            self.blob_hash.update(data)
            self.out.write(data)
            self.size += len(data)

    def write(self, data: bytes) -> int:  # type: ignore[override]
        data = bytes(data)
        self.tar_hash.update(data)
        self._emit(self.deflate.compress(data))
        return len(data)

    def finish(self) -> None:
        self._emit(self.deflate.flush())


def _write_layer(blobs: Path, fill: Callable[[tarfile.TarFile], None]) -> Layer:
    tmp = blobs / f".layer-{os.getpid()}.tmp"
    with open(tmp, "wb") as out:
        sink = _HashingGzipWriter(out)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            fill(tar)
        sink.finish()
    digest = "sha256:" + sink.blob_hash.hexdigest()
    tmp.rename(blobs / digest.partition(":")[2])
    return Layer(digest=digest, diff_id="sha256:" + sink.tar_hash.hexdigest(), size=sink.size)


def _info(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644, size: int = 0) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size = kind, mode, size
    info.mtime, info.uid, info.gid, info.uname, info.gname = 1_700_000_000, 0, 0, "root", "root"
    return info


def _busybox_layer(tar: tarfile.TarFile) -> None:
    if not BUSYBOX.exists():
        raise ImageError(f"{BUSYBOX} missing: apt-get install -y --no-install-recommends busybox-static")
    tar.addfile(_info("bin", tarfile.DIRTYPE, 0o755))
    with open(BUSYBOX, "rb") as f:
        tar.addfile(_info("bin/busybox", mode=0o755, size=BUSYBOX.stat().st_size), f)
    for link in BUSYBOX_LINKS:
        info = _info(f"bin/{link}", tarfile.SYMTYPE, 0o777)
        info.linkname = "busybox"
        tar.addfile(info)
    for d in ("etc", "tmp", "data"):
        tar.addfile(_info(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
    passwd = b"root:x:0:0:root:/:/bin/sh\n"
    tar.addfile(_info("etc/passwd", size=len(passwd)), io.BytesIO(passwd))


def _random_layer(index: int, size: int) -> Callable[[tarfile.TarFile], None]:
    def fill(tar: tarfile.TarFile) -> None:
        tar.addfile(_info(f"data/random-{index}.bin", size=size), RandomReader(size))

    return fill


def build_image(layout: Path, tag: str = "1", random_sizes: tuple[int, ...] = (3 << 20, BIG_LAYER)) -> OciImage:
    """Write a runnable OCI layout: the busybox layer plus one random-data layer per size (fresh random bytes)."""
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    layers = [_write_layer(blobs, _busybox_layer)]
    layers += [_write_layer(blobs, _random_layer(i, size)) for i, size in enumerate(random_sizes, start=1)]
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
            "history": [{"created_by": f"p2pdist test layer {i}"} for i in range(len(layers))],
        },
        sort_keys=True,
    ).encode()
    config_digest = _put_blob(blobs, config)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": lay.media_type, "digest": lay.digest, "size": lay.size} for lay in layers],
        },
        sort_keys=True,
    ).encode()
    manifest_digest = _put_blob(blobs, manifest)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return OciImage(layout, tag, manifest_digest, manifest, config_digest, tuple(layers))


def _put_blob(blobs: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.partition(":")[2]).write_bytes(data)
    return digest
