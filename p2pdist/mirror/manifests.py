"""Manifests cached by digest on disk, and tags resolved recently, for when the upstream is down."""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..core.digest import Digest

MAX_MANIFEST = 4 << 20  # the distribution spec's recommended limit for manifests
MAX_TAGS = 16384


@dataclass(frozen=True)
class CachedManifest:
    digest: str
    media_type: str
    body: bytes


class ManifestCache:
    def __init__(self, root: Path, tag_ttl: float, clock: Callable[[], float]) -> None:
        self.root = root
        self.tag_ttl = tag_ttl
        self._clock = clock
        self._tags: OrderedDict[tuple[str, str, str], tuple[str, str, float]] = OrderedDict()

    def _path(self, digest: Digest) -> Path:
        return self.root / digest.algorithm / digest.encoded

    def put(self, digest: Digest, media_type: str, body: bytes) -> None:
        """Store a manifest whose bytes were checked against ``digest`` by the caller."""
        path = self._path(digest)
        if path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(json.dumps({"media_type": media_type}).encode() + b"\n" + body)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def get(self, digest: Digest) -> CachedManifest | None:
        try:
            raw = self._path(digest).read_bytes()
        except FileNotFoundError:
            return None
        head, _, body = raw.partition(b"\n")
        if Digest.of(body, digest.algorithm) != digest:
            return None  # damaged on disk: never serve it
        return CachedManifest(str(digest), json.loads(head)["media_type"], body)

    def resolve(self, registry: str, repo: str, tag: str, digest: str, media_type: str) -> None:
        key = (registry, repo, tag)
        self._tags[key] = (digest, media_type, self._clock())
        self._tags.move_to_end(key)
        while len(self._tags) > MAX_TAGS:
            self._tags.popitem(last=False)

    def resolved(self, registry: str, repo: str, tag: str) -> str | None:
        """The tag's digest if it was resolved within the tag window."""
        entry = self._tags.get((registry, repo, tag))
        if entry is None or self._clock() - entry[2] > self.tag_ttl:
            return None
        return entry[0]
