"""Who may read which repository's blobs from the cache: learned from the upstream's answers.

A blob of a private repository is served from the cache or from peers only to a client whose
credentials the upstream accepted for that repository. The mirror learns that from a successful
upstream manifest or blob request made with the client's own ``Authorization``, and trusts it for
a while. An anonymous success means the repository is public.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

ANONYMOUS = "anonymous"
MAX_GRANTS = 65536


def fingerprint(authorization: str | None) -> str:
    """A credential's identity without keeping the credential itself in memory."""
    if not authorization:
        return ANONYMOUS
    return hashlib.sha256(authorization.encode()).hexdigest()


class Grants:
    def __init__(self, ttl: float, public_ttl: float, clock: Callable[[], float]) -> None:
        self.ttl = ttl
        self.public_ttl = public_ttl
        self._clock = clock
        self._until: OrderedDict[tuple[str, str, str], float] = OrderedDict()

    def allow(self, registry: str, repo: str, authorization: str | None) -> None:
        who = fingerprint(authorization)
        ttl = self.public_ttl if who == ANONYMOUS else self.ttl
        key = (registry, repo, who)
        self._until[key] = self._clock() + ttl
        self._until.move_to_end(key)
        while len(self._until) > MAX_GRANTS:
            self._until.popitem(last=False)

    def allowed(self, registry: str, repo: str, authorization: str | None) -> bool:
        now = self._clock()
        for who in (ANONYMOUS, fingerprint(authorization)):  # a public repository admits everyone
            until = self._until.get((registry, repo, who))
            if until is not None and until > now:
                return True
        return False
