"""Peer tickets: the tracker signs, for each authenticated node, its own Ed25519 public key.

Peers check a ticket with the tracker's public key alone (``p2pdist.core.identity``). A ticket is
signed once per node and key, and handed again while it has more than half its life left (an agent
asks again only past half-life, or when it has none: a lost reply, a restart). A banned node's
announces are refused before this, so it gets no new ticket.
"""

from __future__ import annotations

from collections import OrderedDict

from p2pdist.core.identity import issue_ticket, ticket_signer


class TicketDesk:
    def __init__(self, secret: str, ttl: float, nodes: int) -> None:
        self._signer = ticket_signer(secret)
        self.ttl = int(ttl)
        self._nodes = nodes
        self._issued: OrderedDict[str, tuple[bytes, int, str]] = OrderedDict()  # node -> (key, expires, ticket)

    def ticket(self, node: str, peer_key: bytes, now: float) -> str:
        """A ticket for ``node``'s ``peer_key``: the last one if it is still young enough, else new."""
        issued = self._issued.get(node)
        if issued is not None and issued[0] == peer_key and issued[1] - now > self.ttl / 2 + 1:
            self._issued.move_to_end(node)
            return issued[2]
        expires = int(now) + self.ttl
        text = issue_ticket(self._signer, node, peer_key, expires)
        self._issued[node] = (peer_key, expires, text)
        self._issued.move_to_end(node)
        if len(self._issued) > self._nodes:  # memory bounded like the tracker's node table
            self._issued.popitem(last=False)
        return text

    def __len__(self) -> int:
        return len(self._issued)
