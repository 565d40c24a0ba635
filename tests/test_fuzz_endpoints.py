"""Fuzzing every endpoint of running servers: malformed paths, headers, ranges, digests and bodies.

Real processes: docker-registry as the upstream, a tracker, and an agent with its mirror. Whatever a
client sends, no server answers 5xx (a client's error is a 4xx), and every server keeps answering.
Examples per server: 150 in CI; ``P2PDIST_FUZZ_EXAMPLES=5000`` for a longer run. The counts that
ran are printed (``-s``).
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2pdist.core import wire
from tests.support.identity import Caller
from tests.support.procs import AgentProc, Tracker
from tests.support.registry import Registry

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("P2PDIST_FUZZ_EXAMPLES", "150"))
TOKEN = "fuzz-token"
GOOD = "sha256:" + "ab" * 32


@dataclass
class Servers:
    registry: Registry
    tracker: Tracker
    agent: AgentProc

    def ports(self) -> dict[str, int]:
        return {"peer": self.agent.peer_port, "api": self.agent.api_port, "mirror": self.agent.mirror_port,
                "tracker": self.tracker.port}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with Registry(workdir=tmp / "registry") as registry:
        registry.push_blob("team/app", b"x" * 4096)
        tracker = Tracker(tmp, TOKEN).start()
        agent = AgentProc(tmp, "fuzzed", tracker.url, TOKEN, upstreams=[f"http://{registry.host}"], mirror=True)
        agent.start()
        try:
            yield Servers(registry, tracker, agent)
        finally:
            agent.stop()
            tracker.stop()


# --- what a hostile or broken client sends -----------------------------------------------------

_segment_chars = st.sampled_from([*"abcdefghijklmnopqrstuvwxyz0123456789-._~:@!$&'()*+,;=",
                                  "%2F", "%2E", "%00", "%FF", "%25", "..", "/", "%C3%A9"])
segments = st.one_of(
    st.lists(_segment_chars, max_size=30).map("".join),
    st.sampled_from(["v2", "v1", "blobs", "manifests", "uploads", "announce", "fetch", "status", "control",
                     "metrics", "healthz", GOOD, "sha256:" + "A" * 64, "sha256:..", "md5:" + "a" * 32,
                     "latest", "docker.io", "127.0.0.1:1", "x" * 3000]),
)
paths = st.lists(segments, min_size=0, max_size=8).map(lambda parts: "/" + "/".join(parts))
queries = st.one_of(st.just(""), st.lists(st.tuples(st.sampled_from(["ns", "digest", "n", "last", "x"]),
                                                    st.text("abc.:/%0123456789", max_size=40)),
                                          max_size=3).map(lambda kv: "?" + "&".join(f"{k}={v}" for k, v in kv)))
ranges = st.one_of(st.none(), st.sampled_from(["bytes=0-0", "bytes=0-", "bytes=-10", "bytes=5-1", "bytes=",
                                               "bytes=0-" + "9" * 30, "items=0-1", "bytes=0-1,2-3",
                                               "bytes=" + "9" * 5000 + "-"]))
SIGNED = "signed"  # a valid signature for the request as sent, made in the test (they are single-use)
FUZZER = Caller(TOKEN, "fuzzer")
auths = st.one_of(st.none(), st.sampled_from([SIGNED, SIGNED, f"Bearer {TOKEN}", "Bearer wrong", "Basic Zm9vOmJhcg==",
                                              "Bearer ", "Basic !!!", "Bearer " + "a" * 5000, "P2P-Node x.1.2.3.4",
                                              "P2P-Ticket " + "a" * 4000 + ";1.2.3"]))
headers_extra = st.dictionaries(st.sampled_from(["Accept", "Content-Type", "X-Forwarded-For", "Upgrade",
                                                 "Content-Encoding", "Transfer-Encoding-Not"]),
                                st.text("abcdefghijklmnopqrstuvwxyz/+*;=.,0123456789 ", max_size=200), max_size=3)


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=2000),
    st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30)),
                 lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4)),
                 max_leaves=20).map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["v", "t", "node", "addr", "blob", "size", "digests", "want_leases", "ref",
                                     "event", "digest_pos", "have"]),
                    st.one_of(st.integers(-5, (1 << 64) - 1), st.text(max_size=40), st.binary(max_size=40),
                              st.lists(st.integers(-(1 << 63), (1 << 64) - 1), max_size=5), st.just(wire.VERSION),
                              st.just("announce")),
                    max_size=8).map(lambda m: msgpack.packb(m, use_bin_type=True)),
    st.integers(1, 5000).map(lambda d: _nested(d).encode()),
)


@dataclass
class Outcome:
    status: int
    body: bytes


def send(port: int, method: str, target: str, headers: dict[str, str], body: bytes) -> Outcome | None:
    """One request; None if the server refused it at the HTTP layer (closed the connection)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(method, target, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        if body:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body or None)
        resp = conn.getresponse()
        return Outcome(resp.status, resp.read(4096))
    except (ConnectionError, http.client.RemoteDisconnected):
        return None
    finally:
        conn.close()


RAN: dict[str, int] = {}
PAST_AUTH: dict[str, int] = {}  # signed cases the server took past authentication


@pytest.mark.parametrize("server", ["peer", "api", "mirror", "tracker"])
def test_no_request_gets_a_5xx_and_every_server_keeps_answering(servers: Servers, server: str) -> None:
    port = servers.ports()[server]

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]), paths, queries, ranges,
           auths, headers_extra, bodies)
    def one(method, path, query, range_, auth, extra, body) -> None:
        headers = dict(extra)
        if range_ is not None:
            headers["Range"] = range_
        if auth == SIGNED:
            raw = path.split("?")[0]
            sent = body if method in ("POST", "PUT", "PATCH") else b""
            headers["Authorization"] = (FUZZER.tracker(sent, raw, method) if server == "tracker" else
                                        FUZZER.peer("fuzzed", raw, range_ or "", method))["Authorization"]
        elif auth is not None:
            headers["Authorization"] = auth
        RAN[server] = RAN.get(server, 0) + 1
        outcome = send(port, method, path + query, headers, body if method in ("POST", "PUT", "PATCH") else b"")
        if outcome is not None and auth == SIGNED and outcome.status != 401:
            PAST_AUTH[server] = PAST_AUTH.get(server, 0) + 1
        if outcome is not None:
            assert outcome.status < 500, (f"{server}: {method} {path + query} {headers} body={body[:80]!r} -> "
                                          f"{outcome.status} {outcome.body[:300]!r}")

    one()
    print(json.dumps({"server": server, "cases": RAN.get(server, 0), "past_auth": PAST_AUTH.get(server, 0)}))
    if server in ("peer", "tracker"):  # the fuzzer's signatures work: handlers behind auth were reached
        assert PAST_AUTH.get(server, 0) > 0
    health = {"peer": "/healthz", "api": "/healthz", "mirror": "/v2/", "tracker": "/healthz"}[server]
    outcome = send(port, "GET", health, {"Authorization": f"Bearer {TOKEN}"}, b"")
    assert outcome is not None and outcome.status in (200, 401)
    assert servers.agent.popen.poll() is None and servers.tracker.popen.poll() is None
