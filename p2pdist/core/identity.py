"""Node identity: credentials bound to a node id, signed requests, tracker-signed peer tickets.

Pure (no I/O): the tracker, the agent and the tests share it.

- The **cluster secret** stays with the tracker and the operator. From it come a per-node
  **credential** (``p2pdist certs issue``, or derived in place by a node that holds the secret):
  the node id, an expiry, the node's key ``HMAC(secret, id, expiry)`` and the tracker's ticket key.
  A node holding only its credential can speak as no other node: the tracker derives the key again
  from the id the request names and the signature must match.
- **Tracker requests** carry ``Authorization: P2P-Node`` with an HMAC over the method, path, a
  timestamp, a nonce and the body's hash. The key never crosses the network, only the MAC; a request
  is good for ``MAX_SKEW`` around the tracker's clock and once (``ReplayGuard``).
- **Peer requests** carry ``Authorization: P2P-Ticket``: a ticket (the tracker's Ed25519 signature
  over the node id, the node's own Ed25519 public key and an expiry, handed out in announce replies)
  and the node's Ed25519 signature over the request and the peer it is meant for. Peers need no
  secret at all, only the tracker's public key, which the credential carries. A banned node gets no
  new ticket, so it leaves every peer port within the tracker's ``ticket_ttl``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import P2pdistError

CREDENTIAL_PREFIX = "p2pdist-node-1"
NODE_SCHEME = "P2P-Node"
TICKET_SCHEME = "P2P-Ticket"
MAX_SKEW = 300.0  # seconds a request's timestamp may differ from the verifier's clock (NTP-synced hosts)
REPLAY_WINDOW = 30.0  # a node's requests may arrive this far out of order; older ones are refused
PEER_REPLAY_WINDOW = 10.0  # the same at a peer port, where requests come hundreds a second
DERIVED_TTL = 10 * 365 * 86400  # a node that holds the cluster secret derives a long-lived credential
MAX_NODE_ID = 128  # as the wire's node field
_NONCE = re.compile(r"[0-9a-f]{16}")
_NODE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")
_MAX_HEADER = 4096


class AuthError(P2pdistError, ValueError):
    """A credential or signed request that does not hold; the message says why (never a secret)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str, what: str, length: int | None = None) -> bytes:
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(f"{what} is not URL-safe base64") from None
    if length is not None and len(data) != length:
        raise AuthError(f"{what} must be {length} bytes, got {len(data)}")
    return data


def valid_node_id(node: str) -> bool:
    return bool(_NODE_ID.fullmatch(node))


def node_key(secret: str, node: str, expires: int) -> bytes:
    """The key of ``node``'s credential valid until ``expires`` (Unix seconds)."""
    return hmac.digest(secret.encode(), b"p2pdist node key 1\0" + node.encode() + b"\0" + str(expires).encode(),
                       "sha256")


def ticket_signer(secret: str) -> Ed25519PrivateKey:
    """The tracker's ticket key, derived from the cluster secret: every tracker replica, and every
    restart, signs with the same key, so tickets and credentials stay good across them."""
    seed = hmac.new(secret.encode(), b"p2pdist ticket key 1", hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True)
class NodeCredential:
    """What a node holds to prove who it is: its id, an expiry, its key and the tracker's ticket key."""

    node: str
    expires: int
    key: bytes
    ticket_key: bytes  # the tracker's Ed25519 public key (raw, 32 bytes), to check peers' tickets

    @classmethod
    def issue(cls, secret: str, node: str, expires: int) -> NodeCredential:
        if not secret:
            raise AuthError("a credential needs the cluster secret")
        if not valid_node_id(node):
            raise AuthError(f"node id {node[:40]!r} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
        return cls(node, expires, node_key(secret, node, expires), public_bytes(ticket_signer(secret).public_key()))

    def encode(self) -> str:
        return ".".join((CREDENTIAL_PREFIX, _b64(self.node.encode()), str(self.expires), _b64(self.key),
                         _b64(self.ticket_key)))

    @classmethod
    def parse(cls, text: str) -> NodeCredential:
        parts = text.strip().split(".")
        if len(parts) != 5 or parts[0] != CREDENTIAL_PREFIX:
            raise AuthError(f"not a p2pdist node credential (expected '{CREDENTIAL_PREFIX}.<node>.<expiry>."
                            f"<key>.<ticket key>', as `p2pdist certs issue` writes)")
        node = _unb64(parts[1], "credential node id").decode("utf-8", "replace")
        if not valid_node_id(node) or not parts[2].isdigit() or len(parts[2]) > 12:
            raise AuthError("the credential's node id or expiry is malformed")
        return cls(node, int(parts[2]), _unb64(parts[3], "credential key", 32),
                   _unb64(parts[4], "credential ticket key", 32))

    def __repr__(self) -> str:  # never the key, in logs or tracebacks
        return f"NodeCredential(node={self.node!r}, expires={self.expires})"


def _body_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _request_mac(key: bytes, method: str, path: str, ts: int, nonce: str, body: bytes) -> bytes:
    text = f"p2pdist request 1\n{method.upper()}\n{path}\n{ts}\n{nonce}\n{_body_hash(body)}".encode()
    return hmac.digest(key, text, "sha256")  # one-shot: no HMAC object per request


def _stamp(now: float) -> tuple[int, str]:
    return int(now * 1_000_000), os.urandom(8).hex()


def sign_request(cred: NodeCredential, method: str, path: str, body: bytes, now: float) -> str:
    """The ``Authorization`` value for one tracker request (``now``: Unix time)."""
    ts, nonce = _stamp(now)
    mac = _request_mac(cred.key, method, path, ts, nonce, body)
    return f"{NODE_SCHEME} {_b64(cred.node.encode())}.{cred.expires}.{ts}.{nonce}.{_b64(mac)}"


class Signed(NamedTuple):
    """Who signed a request, and its stamp (for the replay guard). A tuple: one is made per request."""

    node: str
    ts: int  # microseconds since the epoch, as the signer's clock said
    nonce: str


def _split(header: str | None, scheme: str, what: str) -> str:
    if header is None:
        raise AuthError(f"missing 'Authorization: {scheme} ...' header ({what})")
    if len(header) > _MAX_HEADER:
        raise AuthError("the Authorization header is too long")
    given, _, rest = header.strip().partition(" ")
    if given != scheme or not rest:
        raise AuthError(f"the Authorization header must use the {scheme} scheme ({what}); "
                        f"a bearer cluster token is no longer accepted: give the node a credential "
                        f"(`p2pdist certs issue`) or the cluster secret")
    return rest.strip()


def _fresh(ts: int, now: float) -> None:
    skew = ts / 1_000_000 - now
    if abs(skew) > MAX_SKEW:
        raise AuthError(f"request timestamp is {skew:+.0f} s off this host's clock (limit ±{MAX_SKEW:.0f} s): "
                        f"synchronise the clocks (NTP)")


def verify_request(header: str | None, secret: str, method: str, path: str, body: bytes, now: float) -> Signed:
    """Check a tracker request signed by a node credential derived from ``secret``."""
    return RequestVerifier(secret, nodes=1).verify(header, method, path, body, now)


class RequestVerifier:
    """Checks tracker requests signed by node credentials derived from one cluster secret.

    A node's key is derived once per credential and kept (at most ``nodes`` of them, the oldest
    forgotten first): the derivation is an HMAC of its own, and the tracker checks every announce
    of every node with it. What a request must prove does not change: the cache maps the header's
    own id and expiry fields to their key, so a request naming another id or expiry misses it.
    """

    def __init__(self, secret: str, nodes: int = 100_000) -> None:
        self._secret = secret
        self._nodes = max(1, nodes)
        self._keys: dict[tuple[str, str], tuple[str, int, bytes]] = {}

    def _key(self, node_b64: str, expires_text: str) -> tuple[str, int, bytes, bool]:
        """(node, expiry, key, whether it came from the cache)."""
        found = self._keys.get((node_b64, expires_text))
        if found is not None:
            return (*found, True)
        node = _unb64(node_b64, "node id").decode("utf-8", "replace")
        if not valid_node_id(node) or not expires_text.isdigit() or len(expires_text) > 12:
            raise AuthError("malformed P2P-Node authorization")
        expires = int(expires_text)
        return node, expires, node_key(self._secret, node, expires), False

    def verify(self, header: str | None, method: str, path: str, body: bytes, now: float) -> Signed:
        parts = _split(header, NODE_SCHEME, "a node credential").split(".")
        if len(parts) != 5:
            raise AuthError("malformed P2P-Node authorization")
        if not parts[2].isdigit() or len(parts[2]) > 20 or not _NONCE.fullmatch(parts[3]):
            raise AuthError("malformed P2P-Node authorization")
        node, expires, key, cached = self._key(parts[0], parts[1])
        ts, nonce = int(parts[2]), parts[3]
        mac = _unb64(parts[4], "signature", 32)
        if not hmac.compare_digest(mac, _request_mac(key, method, path, ts, nonce, body)):
            raise AuthError(f"invalid signature for node {node!r}: its credential was not issued for this "
                            f"cluster secret, or the request was altered")
        if not cached:
            # Kept only once a request signed with it held: made-up ids cannot push real nodes out.
            if len(self._keys) >= self._nodes:
                del self._keys[next(iter(self._keys))]
            self._keys[(parts[0], parts[1])] = (node, expires, key)
        if expires < now:
            raise AuthError(f"the credential of node {node!r} expired; issue a new one (`p2pdist certs issue`)")
        _fresh(ts, now)
        return Signed(node, ts, nonce)


# --- tickets -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ticket:
    node: str
    peer_key: bytes  # the node's own Ed25519 public key (raw)
    expires: int  # Unix seconds

    def _message(self) -> bytes:
        return b"p2pdist ticket 1\0" + self.node.encode() + b"\0" + self.peer_key + b"\0" + str(self.expires).encode()


def issue_ticket(signer: Ed25519PrivateKey, node: str, peer_key: bytes, expires: int) -> str:
    ticket = Ticket(node, peer_key, expires)
    sig = signer.sign(ticket._message())
    return f"{_b64(node.encode())}.{_b64(peer_key)}.{expires}.{_b64(sig)}"


def _request_message(method: str, path: str, to: str, extra: str, ts: int, nonce: str) -> bytes:
    return f"p2pdist peer request 1\n{method.upper()}\n{path}\n{to}\n{extra}\n{ts}\n{nonce}".encode()


def sign_peer_request(ticket: str, key: Ed25519PrivateKey, method: str, path: str, to: str, now: float,
                      extra: str = "") -> str:
    """The ``Authorization`` value for one request to peer ``to`` (its node id); ``extra`` is any
    header the request must not be stripped of (a piece request's Range)."""
    ts, nonce = _stamp(now)
    sig = key.sign(_request_message(method, path, to, extra, ts, nonce))
    return f"{TICKET_SCHEME} {ticket};{ts}.{nonce}.{_b64(sig)}"


class TicketChecker:
    """A peer port's check of ``P2P-Ticket`` requests: tickets verified once and cached (bounded),
    then one Ed25519 verification per request (~0.1 ms: nothing next to a piece)."""

    def __init__(self, ticket_key: bytes, me: str, cache: int = 4096) -> None:
        self._tracker = Ed25519PublicKey.from_public_bytes(ticket_key)
        self.me = me
        self._cache: OrderedDict[str, tuple[Ticket, Ed25519PublicKey]] = OrderedDict()
        self._limit = cache

    def ticket(self, text: str, now: float) -> tuple[Ticket, Ed25519PublicKey]:
        hit = self._cache.get(text)
        if hit is None:
            parts = text.split(".")
            if len(parts) != 4:
                raise AuthError("malformed peer ticket")
            node = _unb64(parts[0], "ticket node id").decode("utf-8", "replace")
            if not valid_node_id(node) or not parts[2].isdigit() or len(parts[2]) > 12:
                raise AuthError("malformed peer ticket")
            ticket = Ticket(node, _unb64(parts[1], "ticket key", 32), int(parts[2]))
            try:
                self._tracker.verify(_unb64(parts[3], "ticket signature", 64), ticket._message())
            except InvalidSignature:
                raise AuthError("the peer ticket is not signed by this cluster's tracker") from None
            hit = (ticket, Ed25519PublicKey.from_public_bytes(ticket.peer_key))
            self._cache[text] = hit
            if len(self._cache) > self._limit:
                self._cache.popitem(last=False)
        if hit[0].expires < now:
            raise AuthError(f"the ticket of node {hit[0].node!r} expired: it has not announced to the tracker "
                            f"for a while, or was banned")
        return hit

    def verify(self, header: str | None, method: str, path: str, now: float, extra: str = "") -> Signed:
        rest = _split(header, TICKET_SCHEME, "a tracker-signed peer ticket")
        text, _, stamp = rest.partition(";")
        parts = stamp.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(parts[0]) > 20 or not _NONCE.fullmatch(parts[1]):
            raise AuthError("malformed P2P-Ticket authorization")
        ticket, key = self.ticket(text, now)
        ts, nonce = int(parts[0]), parts[1]
        try:
            key.verify(_unb64(parts[2], "signature", 64),
                       _request_message(method, path, self.me, extra, ts, nonce))
        except InvalidSignature:
            raise AuthError(f"invalid request signature for node {ticket.node!r} (or meant for another peer)") \
                from None
        _fresh(ts, now)
        return Signed(ticket.node, ts, nonce)


class ReplayGuard:
    """Each signed request is accepted once: per node, the stamps seen within ``window`` of its
    newest. Older ones are refused outright, so a node costs what it sends in ``window`` (at most
    ``per_node`` stamps, one int each), and at most ``nodes`` nodes are remembered (the least
    recent forgotten). Old stamps are dropped once per half window, not on every request.
    """

    def __init__(self, window: float = REPLAY_WINDOW, per_node: int = 1 << 16, nodes: int = 100_000) -> None:
        self._window = int(window * 1_000_000)
        self._per_node = per_node
        self._nodes = nodes
        self._seen: OrderedDict[str, _Stamps] = OrderedDict()

    def check(self, signed: Signed) -> None:
        stamps = self._seen.get(signed.node)
        if stamps is None:
            stamps = self._seen[signed.node] = _Stamps(signed.ts, signed.ts, set())
            if len(self._seen) > self._nodes:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(signed.node)
        ts = signed.ts
        if ts < stamps.newest - self._window:
            raise AuthError("request stamp older than the node's recent requests (a replay?)")
        key = (ts << 64) | int(signed.nonce, 16)
        if key in stamps.keys:
            raise AuthError("request replayed")
        if ts > stamps.newest:
            stamps.newest = ts
            if ts - stamps.pruned > self._window // 2:
                floor = (ts - self._window) << 64
                stamps.keys = {k for k in stamps.keys if k >= floor}
                stamps.pruned = ts
        if len(stamps.keys) >= self._per_node:
            raise AuthError("too many requests from this node in the replay window")
        stamps.keys.add(key)


@dataclass(slots=True)
class _Stamps:
    newest: int  # the node's newest stamp (µs)
    pruned: int  # when its old stamps were last dropped
    keys: set[int]  # (ts << 64) | nonce of each stamp in the window
