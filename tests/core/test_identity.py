"""Node credentials, signed requests, replay guard and peer tickets (p2pdist.core.identity), and the
tracker's ticket desk and the agent's ticket renewal."""

from __future__ import annotations

import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.agent.identity import NodeIdentity, read_credential
from p2pdist.config import ConfigError
from p2pdist.core.identity import (
    MAX_SKEW,
    AuthError,
    NodeCredential,
    ReplayGuard,
    RequestVerifier,
    Signed,
    TicketChecker,
    issue_ticket,
    public_bytes,
    sign_peer_request,
    sign_request,
    ticket_signer,
    verify_request,
)
from tracker.tickets import TicketDesk

SECRET = "unit-cluster-secret"
NOW = 1_800_000_000.0
BODY = b"\x81\xa1v\x02"


def cred(node: str = "n1", secret: str = SECRET, expires: int = int(NOW) + 3600) -> NodeCredential:
    return NodeCredential.issue(secret, node, expires)


def test_a_credential_round_trips_and_never_shows_its_key():
    c = cred()
    assert NodeCredential.parse(c.encode()) == c
    assert NodeCredential.parse("  " + c.encode() + "\n") == c
    assert c.key.hex() not in repr(c) and "key=" not in repr(c)
    assert c.ticket_key == public_bytes(ticket_signer(SECRET).public_key())
    assert cred("n2").key != c.key and cred(expires=c.expires + 1).key != c.key  # bound to id and expiry


@pytest.mark.parametrize(("text", "says"), [
    ("", "not a p2pdist node credential"),
    ("p2pdist-node-2.bjE.1.a.b", "not a p2pdist node credential"),
    ("p2pdist-node-1.bjE.soon." + "A" * 43 + "." + "A" * 43, "malformed"),
    ("p2pdist-node-1.bjE.1.AAAA." + "A" * 43, "credential key must be 32 bytes"),
    ("p2pdist-node-1.!!!.1." + "A" * 43 + "." + "A" * 43, "base64"),
])
def test_malformed_credentials_are_refused_precisely(text: str, says: str):
    with pytest.raises(AuthError, match=says):
        NodeCredential.parse(text)


@pytest.mark.parametrize("node", ["", "a b", "x" * 129, "ünï", "a/b"])
def test_node_ids_outside_the_alphabet_get_no_credential(node: str):
    with pytest.raises(AuthError, match="node id"):
        cred(node)


def test_a_verifier_keeps_derived_keys_yet_refuses_what_another_id_or_expiry_would_sign():
    verifier = RequestVerifier(SECRET, nodes=2)
    good = cred("n1")
    for _ in range(2):  # derived once, then from the cache: the same answer
        header = sign_request(good, "POST", "/v1/announce", BODY, NOW)
        assert verifier.verify(header, "POST", "/v1/announce", BODY, NOW).node == "n1"
    # A node that claims a later expiry, signing with its real key: the key of that expiry differs.
    header = sign_request(good, "POST", "/v1/announce", BODY, NOW)
    node, _expiry, rest = header.split(" ", 1)[1].split(".", 2)
    longer = f"P2P-Node {node}.{good.expires + 86400}.{rest}"
    with pytest.raises(AuthError, match="invalid signature"):
        verifier.verify(longer, "POST", "/v1/announce", BODY, NOW)
    # Another node's id with n1's key, after n1's key is cached.
    n2 = NodeCredential("n2", good.expires, good.key, good.ticket_key)
    with pytest.raises(AuthError, match="invalid signature"):
        verifier.verify(sign_request(n2, "POST", "/v1/announce", BODY, NOW), "POST", "/v1/announce", BODY, NOW)
    # Forged requests leave nothing behind: only keys of requests that verified are kept.
    assert set(verifier._keys) == {(node, str(good.expires))}
    # Bounded: more nodes than it keeps still verify, and the cache stays at its size.
    for i in range(5):
        header = sign_request(cred(f"m{i}"), "POST", "/p", b"", NOW)
        assert verifier.verify(header, "POST", "/p", b"", NOW).node == f"m{i}"
    assert len(verifier._keys) == 2


def test_a_signed_request_verifies_and_names_its_node():
    header = sign_request(cred(), "POST", "/v1/announce", BODY, NOW)
    signed = verify_request(header, SECRET, "POST", "/v1/announce", BODY, NOW + 1)
    assert signed.node == "n1" and signed.ts == int(NOW * 1_000_000)


@pytest.mark.parametrize(("change", "says"), [
    ({"secret": "other"}, "invalid signature for node 'n1'"),
    ({"method": "GET"}, "invalid signature"),
    ({"path": "/v1/announce2"}, "invalid signature"),
    ({"body": BODY + b"\x00"}, "invalid signature"),
    ({"now": NOW + MAX_SKEW + 5}, "synchronise the clocks"),
    ({"now": NOW - MAX_SKEW - 5}, "synchronise the clocks"),
])
def test_a_signed_request_holds_only_for_what_was_signed(change: dict, says: str):
    header = sign_request(cred(), "POST", "/v1/announce", BODY, NOW)
    args = {"secret": SECRET, "method": "POST", "path": "/v1/announce", "body": BODY, "now": NOW, **change}
    with pytest.raises(AuthError, match=says):
        verify_request(header, **args)


def test_an_expired_credential_is_refused_even_with_a_fresh_signature():
    old = cred(expires=int(NOW) - 1)
    with pytest.raises(AuthError, match="expired"):
        verify_request(sign_request(old, "POST", "/p", b"", NOW), SECRET, "POST", "/p", b"", NOW)


def test_a_node_cannot_sign_as_another_by_editing_the_header():
    header = sign_request(cred("mallory"), "POST", "/p", b"", NOW)
    forged = header.replace("bWFsbG9yeQ", "dmljdGlt")  # base64 of "mallory" -> "victim"
    assert forged != header
    with pytest.raises(AuthError, match="invalid signature for node 'victim'"):
        verify_request(forged, SECRET, "POST", "/p", b"", NOW)


@pytest.mark.parametrize("header", [None, "Bearer x", "P2P-Node", "P2P-Node a.b", "P2P-Node " + "a" * 5000,
                                    "P2P-Node bjE.1.2.nothex!!nothex.AAAA", "P2P-Node \u00e9.1.2.3.4"])
def test_malformed_authorization_is_an_auth_error_not_a_crash(header):
    with pytest.raises(AuthError):
        verify_request(header, SECRET, "POST", "/p", b"", NOW)


def test_replay_guard_takes_each_stamp_once_and_refuses_stale_ones():
    guard = ReplayGuard(window=10.0)
    t = int(NOW * 1_000_000)
    guard.check(Signed("n1", t, "a" * 16))
    with pytest.raises(AuthError, match="replayed"):
        guard.check(Signed("n1", t, "a" * 16))
    guard.check(Signed("n1", t, "b" * 16))  # same instant, other nonce: a concurrent request
    guard.check(Signed("n2", t, "a" * 16))  # another node's stamps are its own
    guard.check(Signed("n1", t + 20_000_000, "c" * 16))
    guard.check(Signed("n1", t + 12_000_000, "d" * 16))  # out of order, within the window
    with pytest.raises(AuthError, match="older than"):
        guard.check(Signed("n1", t, "e" * 16))


def test_replay_guard_memory_is_bounded_per_node_and_in_nodes():
    guard = ReplayGuard(window=10.0, per_node=64, nodes=4)
    t = int(NOW * 1_000_000)
    for i in range(64):
        guard.check(Signed("busy", t, f"{i:016x}"))
    with pytest.raises(AuthError, match="too many"):
        guard.check(Signed("busy", t, f"{999:016x}"))
    guard.check(Signed("busy", t + 11_000_000, f"{1000:016x}"))  # time moved on: the old stamps go
    assert len(guard._seen["busy"].keys) == 1
    for k in range(10):
        guard.check(Signed(f"n{k}", t, "a" * 16))
    assert len(guard._seen) == 4


def test_replay_guard_keeps_up_with_a_fast_neighbour():
    """3,000 piece requests a second for a minute (1 MiB pieces at 25 Gbit/s): all accepted, each
    once, and only the last window's stamps kept."""
    guard = ReplayGuard(window=10.0)
    t = int(NOW * 1_000_000)
    for i in range(180_000):
        guard.check(Signed("fast", t + i * 333, f"{i:016x}"))
    assert len(guard._seen["fast"].keys) <= 3000 * 15
    with pytest.raises(AuthError, match="replayed"):
        guard.check(Signed("fast", t + 179_999 * 333, f"{179_999:016x}"))


def _ticketed(node: str = "n2", expires: int = int(NOW) + 900, secret: str = SECRET):
    key = Ed25519PrivateKey.generate()
    return key, issue_ticket(ticket_signer(secret), node, public_bytes(key.public_key()), expires)


def test_a_ticketed_peer_request_verifies_for_its_target_only():
    key, ticket = _ticketed()
    checker = TicketChecker(cred().ticket_key, "n1")
    header = sign_peer_request(ticket, key, "GET", "/v1/blobs/x", "n1", NOW, "bytes=0-9")
    assert checker.verify(header, "GET", "/v1/blobs/x", NOW, "bytes=0-9").node == "n2"
    with pytest.raises(AuthError, match="meant for another peer"):
        TicketChecker(cred().ticket_key, "n3").verify(header, "GET", "/v1/blobs/x", NOW, "bytes=0-9")
    with pytest.raises(AuthError, match="invalid request signature"):
        checker.verify(header, "GET", "/v1/blobs/x", NOW, "bytes=0-99")
    with pytest.raises(AuthError, match="invalid request signature"):
        checker.verify(header, "GET", "/v1/blobs/y", NOW, "bytes=0-9")


def test_tickets_from_another_cluster_or_expired_or_for_another_key_are_refused():
    checker = TicketChecker(cred().ticket_key, "n1")
    key, foreign = _ticketed(secret="other")
    with pytest.raises(AuthError, match="not signed by this cluster's tracker"):
        checker.verify(sign_peer_request(foreign, key, "GET", "/p", "n1", NOW), "GET", "/p", NOW)
    key, old = _ticketed(expires=int(NOW) - 1)
    with pytest.raises(AuthError, match="expired"):
        checker.verify(sign_peer_request(old, key, "GET", "/p", "n1", NOW), "GET", "/p", NOW)
    _, ticket = _ticketed()
    thief = Ed25519PrivateKey.generate()  # a stolen ticket is no use without the node's own key
    with pytest.raises(AuthError, match="invalid request signature"):
        checker.verify(sign_peer_request(ticket, thief, "GET", "/p", "n1", NOW), "GET", "/p", NOW)


def test_ticket_desk_signs_once_per_half_life_and_forgets_the_oldest_nodes():
    desk = TicketDesk(SECRET, ttl=900, nodes=2)
    key = public_bytes(Ed25519PrivateKey.generate().public_key())
    first = desk.ticket("n1", key, NOW)
    assert desk.ticket("n1", key, NOW + 100) == first  # still young: the same ticket
    assert desk.ticket("n1", key, NOW + 500) != first  # past half-life: a new one
    other = public_bytes(Ed25519PrivateKey.generate().public_key())
    assert desk.ticket("n1", other, NOW + 501) != desk.ticket("n1", key, NOW + 501)  # a restarted agent's key
    desk.ticket("n2", key, NOW)
    desk.ticket("n3", key, NOW)
    assert len(desk) == 2


def test_agent_identity_asks_for_a_ticket_until_it_has_one_then_at_half_life():
    clock = [NOW]
    me = NodeIdentity(cred("n1"), clock=lambda: clock[0])
    assert me.wants_ticket() and not me.can_dial()
    desk = TicketDesk(SECRET, ttl=900, nodes=8)
    me.take_ticket(desk.ticket("n1", public_bytes(Ed25519PrivateKey.generate().public_key()), NOW))
    assert not me.can_dial()  # a ticket for another key is no use: ignored
    me.take_ticket(desk.ticket("n1", me.peer_key, NOW))
    assert me.can_dial() and not me.wants_ticket()
    clock[0] = NOW + 451
    assert me.wants_ticket() and me.can_dial()
    clock[0] = NOW + 901
    assert not me.can_dial()
    # Its signed requests pass a peer's check; a peer refuses the same header twice.
    clock[0] = NOW + 10
    peer = NodeIdentity(cred("n2"), clock=lambda: clock[0])
    header = me.peer_authorization("GET", "/v1/control", "n2")
    assert peer.check_peer(header, "GET", "/v1/control") == "n1"
    with pytest.raises(AuthError, match="replayed"):
        peer.check_peer(header, "GET", "/v1/control")


def test_read_credential_takes_the_text_or_a_file(tmp_path):
    c = cred()
    path = tmp_path / "n1.credential"
    path.write_text(c.encode() + "\n")
    assert read_credential(str(path)) == c == read_credential(c.encode())
    with pytest.raises(ConfigError, match="cannot read the node credential"):
        read_credential(str(tmp_path / "missing"))
    path.write_text("garbage")
    with pytest.raises(ConfigError, match="not a p2pdist node credential"):
        read_credential(str(path))


def test_a_ticket_is_verified_once_then_cached():
    """Each request then costs one Ed25519 check (its own signature), not two."""
    key, ticket = _ticketed()
    checker = TicketChecker(cred().ticket_key, "n1")
    for _ in range(3):
        checker.verify(sign_peer_request(ticket, key, "GET", "/p", "n1", time.time()), "GET", "/p", time.time())
    assert len(checker._cache) == 1
