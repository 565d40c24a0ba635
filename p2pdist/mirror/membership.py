"""Which blobs and manifests a client may read in which repository: learned from the upstream.

A registry serves a blob under a repository only when it is linked there (a manifest of that
repository references it), and only to a client allowed to pull that repository. The mirror's cache
and the peers hold blobs by digest alone, so the mirror keeps the registry's rule itself: a cached
blob or manifest is served under (registry, repository) only after the upstream confirmed, with this
client's own credentials, that the digest is in that repository:

- a manifest fetched from that repository with them confirms the manifest and every digest it
  references (config, layers; an index's child manifests);
- a HEAD of the blob in that repository with them answering 200 confirms the blob.

Confirmations last ``ttl`` seconds (``public_ttl`` for anonymous ones, which hold for every client).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable

ANONYMOUS = "anonymous"
MAX_ENTRIES = 1 << 18  # (registry, repository, credential, digest) confirmations kept; oldest go first


def fingerprint(authorization: str | None) -> str:
    """A credential's identity without keeping the credential itself in memory."""
    if not authorization:
        return ANONYMOUS
    return hashlib.sha256(authorization.encode()).hexdigest()


def references(body: bytes) -> set[str]:
    """Every digest a manifest or index references (what the registry links into its repository)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return set()
    if not isinstance(doc, dict):
        return set()
    descriptors: list[object] = [doc.get("config"), doc.get("subject")]
    for key in ("layers", "manifests", "blobs"):
        items = doc.get(key)
        if isinstance(items, list):
            descriptors.extend(items)
    found = {d["digest"] for d in descriptors if isinstance(d, dict) and isinstance(d.get("digest"), str)}
    layers = doc.get("fsLayers")  # Docker schema 1
    if isinstance(layers, list):
        found |= {item["blobSum"] for item in layers if isinstance(item, dict) and isinstance(item.get("blobSum"), str)}
    return found


class Membership:
    def __init__(self, ttl: float, public_ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.public_ttl = public_ttl
        self._clock = clock
        self._until: OrderedDict[tuple[str, str, str, str], float] = OrderedDict()

    def confirm(self, registry: str, repo: str, who: str, digests: Iterable[str]) -> None:
        """``who``: the credential's fingerprint (ANONYMOUS for none)."""
        until = self._clock() + (self.public_ttl if who == ANONYMOUS else self.ttl)
        for digest in digests:
            key = (registry, repo, who, digest)
            self._until[key] = until
            self._until.move_to_end(key)
        while len(self._until) > MAX_ENTRIES:
            self._until.popitem(last=False)

    def allowed(self, registry: str, repo: str, who: str, digest: str) -> bool:
        now = self._clock()
        for key in {ANONYMOUS, who}:  # in a public repository, for everyone
            until = self._until.get((registry, repo, key, digest))
            if until is not None and until > now:
                return True
        return False
