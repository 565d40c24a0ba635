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
Each keeps the size the upstream gave for the digest (the manifest's descriptor, or the HEAD's
Content-Length), so a cold download need not ask the upstream again: one round trip less per blob.
The size is kept per confirmation, never per digest alone, so a manifest in one repository cannot
give a wrong size to a client of another.
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping

ANONYMOUS = "anonymous"
MAX_ENTRIES = 1 << 18  # (registry, repository, credential, digest) confirmations kept; oldest go first


def fingerprint(authorization: str | None) -> str:
    """A credential's identity without keeping the credential itself in memory."""
    if not authorization:
        return ANONYMOUS
    return hashlib.sha256(authorization.encode()).hexdigest()


def references(body: bytes) -> dict[str, int | None]:
    """The digests a manifest or index proves are in its repository: those the registry checks are
    linked there before it accepts the manifest (config, layers, child manifests, schema 1 fsLayers).

    Not ``subject``: the OCI spec requires a registry to accept a manifest whose subject it does not
    have, so anyone could push one naming a private digest into their own repository and have it
    "confirmed". Not ``blobs`` (artifact manifests, not checked either), and not a layer with
    ``urls`` (a foreign layer: the registry does not have it).

    Each digest maps to the size its descriptor declares (None where it declares none, as schema 1).
    """
    try:
        doc = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    descriptors: list[object] = [doc.get("config")]
    for key in ("layers", "manifests"):
        items = doc.get(key)
        if isinstance(items, list):
            descriptors.extend(d for d in items if not (isinstance(d, dict) and d.get("urls")))
    found: dict[str, int | None] = {}
    for d in descriptors:
        if isinstance(d, dict) and isinstance(d.get("digest"), str):
            size = d.get("size")
            found[d["digest"]] = size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None
    layers = doc.get("fsLayers")  # Docker schema 1
    if isinstance(layers, list):
        for item in layers:
            if isinstance(item, dict) and isinstance(item.get("blobSum"), str):
                found.setdefault(item["blobSum"], None)
    return found


class Membership:
    def __init__(self, ttl: float, public_ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.public_ttl = public_ttl
        self._clock = clock
        # (registry, repository, credential, digest) -> (valid until, the upstream's size or None)
        self._until: OrderedDict[tuple[str, str, str, str], tuple[float, int | None]] = OrderedDict()

    def confirm(self, registry: str, repo: str, who: str, digests: Mapping[str, int | None] | Iterable[str]) -> None:
        """``who``: the credential's fingerprint (ANONYMOUS for none); ``digests`` with their sizes
        where the upstream gave them."""
        until = self._clock() + (self.public_ttl if who == ANONYMOUS else self.ttl)
        sizes = digests if isinstance(digests, Mapping) else dict.fromkeys(digests)
        for digest, size in sizes.items():
            key = (registry, repo, who, digest)
            old = self._until.get(key)
            self._until[key] = (until, size if size is not None else (old[1] if old else None))
            self._until.move_to_end(key)
        while len(self._until) > MAX_ENTRIES:
            self._until.popitem(last=False)

    def _entry(self, registry: str, repo: str, who: str, digest: str) -> tuple[float, int | None] | None:
        now = self._clock()
        for key in dict.fromkeys((who, ANONYMOUS)):  # in a public repository, for everyone
            entry = self._until.get((registry, repo, key, digest))
            if entry is not None and entry[0] > now:
                return entry
        return None

    def allowed(self, registry: str, repo: str, who: str, digest: str) -> bool:
        return self._entry(registry, repo, who, digest) is not None

    def size(self, registry: str, repo: str, who: str, digest: str) -> int | None:
        """The size the upstream gave for a digest it confirmed for this client, if it gave one."""
        entry = self._entry(registry, repo, who, digest)
        return entry[1] if entry is not None else None
