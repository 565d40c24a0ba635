"""Image manifests and indexes: which blobs make an image, and which image of an index a platform runs.

Pure: documents in, descriptors out. ``p2pdist preheat`` resolves a tag with these before it asks
the tracker to spread the blobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ..errors import P2pdistError
from .digest import Digest, DigestError

INDEX_TYPES = frozenset({"application/vnd.oci.image.index.v1+json",
                         "application/vnd.docker.distribution.manifest.list.v2+json"})
MANIFEST_TYPES = frozenset({"application/vnd.oci.image.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v2+json"})
ACCEPT = ", ".join(sorted(INDEX_TYPES | MANIFEST_TYPES))
MAX_MANIFEST = 4 << 20  # registries refuse larger manifests (distribution: 4 MiB)


class ImageError(P2pdistError, ValueError):
    """A manifest or index that is not what an image needs, or no image for the platform asked."""


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def parse_platform(text: str) -> Platform:
    """``os/arch[/variant]``, as ``docker pull --platform`` takes it."""
    parts = text.strip().split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ImageError(f"platform {text!r} must be OS/ARCH[/VARIANT], e.g. linux/amd64 or linux/arm64/v8")
    return Platform(*parts)


@dataclass(frozen=True, slots=True)
class Blob:
    digest: Digest
    size: int
    media_type: str


def _document(body: bytes) -> dict:
    if len(body) > MAX_MANIFEST:
        raise ImageError(f"a manifest of {len(body)} bytes exceeds {MAX_MANIFEST}")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise ImageError(f"the manifest is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError("the manifest is not a JSON object")
    return doc


def is_index(body: bytes, media_type: str = "") -> bool:
    doc = _document(body)
    return media_type in INDEX_TYPES or doc.get("mediaType") in INDEX_TYPES or "manifests" in doc


def _descriptor(d: object, where: str) -> Blob:
    if not isinstance(d, dict):
        raise ImageError(f"{where}: a descriptor must be an object")
    try:
        digest = Digest.parse(str(d.get("digest", "")))
    except DigestError as e:
        raise ImageError(f"{where}: {e}") from None
    size = d.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError(f"{where}: size must be a non-negative integer")
    return Blob(digest, size, str(d.get("mediaType", "")))


def select_manifest(body: bytes, platform: Platform) -> Blob:
    """The index's manifest for ``platform`` (a variant is matched when asked for; otherwise the
    first entry of the OS and architecture, as containerd picks it)."""
    doc = _document(body)
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise ImageError("the index has no manifests list")
    offered = []
    for i, entry in enumerate(entries):
        p = entry.get("platform") if isinstance(entry, dict) else None
        if not isinstance(p, dict):
            continue
        found = Platform(str(p.get("os", "")), str(p.get("architecture", "")), str(p.get("variant", "")))
        offered.append(str(found))
        if (found.os, found.architecture) == (platform.os, platform.architecture) and (
                not platform.variant or platform.variant == found.variant):
            return _descriptor(entry, f"manifests[{i}]")
    raise ImageError(f"the image has no manifest for {platform}; it offers {', '.join(offered) or 'no platforms'}")


def image_blobs(body: bytes) -> list[Blob]:
    """The config and the layers of an image manifest, in pull order."""
    doc = _document(body)
    if "manifests" in doc:
        raise ImageError("this is an index, not an image manifest: select a platform first")
    config = doc.get("config")
    layers = doc.get("layers")
    if config is None or not isinstance(layers, list):
        raise ImageError("the manifest has no config or no layers list (schema 1 manifests are not supported)")
    return [_descriptor(config, "config"), *(_descriptor(layer, f"layers[{i}]") for i, layer in enumerate(layers))]
