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
    """The digests a manifest or index proves are in its repository: those the registry checks are
    linked there before it accepts the manifest (config, layers, child manifests, schema 1 fsLayers).

    Not ``subject``: the OCI spec requires a registry to accept a manifest whose subject it does not
    have, so anyone could push one naming a private digest into their own repository and have it
    "confirmed". Not ``blobs`` (artifact manifests, not checked either), and not a layer with
    ``urls`` (a foreign layer: the registry does not have it).
    """
    try:
        doc = json.loads(body)
    except ValueError:
        return set()
    if not isinstance(doc, dict):
        return set()
    descriptors: list[object] = [doc.get("config")]
    for key in ("layers", "manifests"):
        items = doc.get(key)
        if isinstance(items, list):
            descriptors.extend(d for d in items if not (isinstance(d, dict) and d.get("urls")))
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
