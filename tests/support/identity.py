"""A test's own node identity, made the way the real parts make it (``p2pdist.core.identity``).

``Caller(secret, node)`` signs tracker requests with the node credential derived from ``secret``,
and peer requests under a ticket the tracker's key (derived from the same secret) signed for it:
what a real node holds after its first announce. Every header is freshly stamped (peers and the
tracker refuse a replayed one).
"""

from __future__ import annotations

import time

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.core.identity import (
    NodeCredential,
    issue_ticket,
    public_bytes,
    sign_peer_request,
    sign_request,
    ticket_signer,
)


class Caller:
    def __init__(self, secret: str, node: str = "tester", ticket_ttl: int = 900) -> None:
        self.node = node
        self.credential = NodeCredential.issue(secret, node, int(time.time()) + 3600)
        self.key = Ed25519PrivateKey.generate()
        self.ticket = issue_ticket(ticket_signer(secret), node, public_bytes(self.key.public_key()),
                                   int(time.time()) + ticket_ttl)

    def tracker(self, body: bytes, path: str = "/v1/announce", method: str = "POST") -> dict[str, str]:
        """Headers of one signed tracker request carrying ``body``."""
        return {"Authorization": sign_request(self.credential, method, path, body, time.time()),
                "Content-Type": "application/msgpack"}

    def peer(self, to: str, path: str, range_: str = "", method: str = "GET") -> dict[str, str]:
        """Headers of one request to peer ``to`` (its node id); with ``range_`` its Range too."""
        headers = {"Authorization": sign_peer_request(self.ticket, self.key, method, path, to, time.time(), range_)}
        if range_:
            headers["Range"] = range_
        return headers
