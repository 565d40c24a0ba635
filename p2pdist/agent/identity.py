"""This node's identity in the cluster: how it signs tracker and peer requests, and checks peers'.

From the config: a node credential (``node_credential``, from ``p2pdist certs issue``), or the
cluster secret itself (``cluster_token``: the node derives its own credential, so it could speak as
any node; fine for a demo or a trusted fleet, not for a cluster that must survive a stolen node).
The peer key is made afresh by every process and lives only in memory: the tracker binds it to the
node in a ticket, renewed through announces.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.config import AgentConfig, ConfigError
from p2pdist.core.identity import (
    CREDENTIAL_PREFIX,
    DERIVED_TTL,
    PEER_REPLAY_WINDOW,
    AuthError,
    NodeCredential,
    ReplayGuard,
    TicketChecker,
    public_bytes,
    sign_peer_request,
    sign_request,
)
from p2pdist.core.proofs import ProofChecker

log = logging.getLogger("p2pdist.identity")


class NodeIdentity:
    def __init__(self, credential: NodeCredential, clock: Callable[[], float] = time.time) -> None:
        self.credential = credential
        self.node = credential.node
        self.clock = clock
        self._peer_key = Ed25519PrivateKey.generate()
        self.peer_key = public_bytes(self._peer_key.public_key())
        self.ticket = ""
        self._ticket_expires = 0.0
        self._renew_at = 0.0
        self._checker = TicketChecker(credential.ticket_key, self.node)
        self.proofs = ProofChecker(credential.ticket_key)  # digests neighbours pass on (core.proofs)
        # A neighbour may ask for thousands of pieces a second on a fast network: a shorter window
        # than the tracker's keeps what it costs bounded (PEER_REPLAY_WINDOW).
        self._guard = ReplayGuard(window=PEER_REPLAY_WINDOW)

    # --- to the tracker ---------------------------------------------------------------------

    def tracker_authorization(self, method: str, path: str, body: bytes) -> str:
        return sign_request(self.credential, method, path, body, self.clock())

    def wants_ticket(self) -> bool:
        """None yet, or past half its life: the next announce carries our peer key."""
        return self.clock() >= self._renew_at

    def take_ticket(self, text: str) -> None:
        try:
            ticket, _ = self._checker.ticket(text, self.clock())
        except AuthError as e:
            # A tracker on another cluster secret than our credential's: peers would refuse us too.
            log.warning("the tracker sent a ticket we cannot use", extra={"error": str(e)})
            return
        if ticket.node != self.node or ticket.peer_key != self.peer_key:
            log.warning("the tracker sent a ticket for another node or key", extra={"ticket_node": ticket.node})
            return
        now = self.clock()
        self.ticket = text
        self._ticket_expires = ticket.expires
        self._renew_at = now + (ticket.expires - now) / 2

    # --- to and from peers ------------------------------------------------------------------

    def can_dial(self) -> bool:
        return bool(self.ticket) and self._ticket_expires > self.clock()

    def peer_authorization(self, method: str, path: str, to: str, extra: str = "") -> str:
        return sign_peer_request(self.ticket, self._peer_key, method, path, to, self.clock(), extra)

    def check_peer(self, header: str | None, method: str, path: str, extra: str = "") -> str:
        """The node that signed a request to our peer port; AuthError says why not."""
        signed = self._checker.verify(header, method, path, self.clock(), extra)
        self._guard.check(signed)
        return signed.node


def read_credential(value: str) -> NodeCredential:
    """``value`` is the credential itself or the path of a file holding it."""
    text = value.strip()
    if not text.startswith(CREDENTIAL_PREFIX):
        path = Path(text).expanduser()
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read the node credential {path}: {e.strerror or e}") from None
    try:
        return NodeCredential.parse(text)
    except AuthError as e:
        raise ConfigError(f"node_credential: {e}") from None


def load_identity(config: AgentConfig, node: Callable[[], str]) -> NodeIdentity | None:
    """This node's identity from the config; None for a node on its own (no credential, no secret).

    ``node`` gives the node id when no credential names it (the configured or generated one).
    """
    if config.node_credential:
        cred = read_credential(config.node_credential)
        if config.node_id and config.node_id != cred.node:
            raise ConfigError(f"node_id {config.node_id!r} differs from the node credential's {cred.node!r}: "
                              f"unset node_id, or issue a credential for {config.node_id!r}")
        if cred.expires < time.time():
            raise ConfigError(f"the node credential for {cred.node!r} has expired: issue a new one with "
                              f"`p2pdist certs issue {cred.node}`")
        return NodeIdentity(cred)
    if config.cluster_token:
        try:
            cred = NodeCredential.issue(config.cluster_token, node(), int(time.time()) + DERIVED_TTL)
        except AuthError as e:
            raise ConfigError(str(e)) from None
        return NodeIdentity(cred)
    return None
