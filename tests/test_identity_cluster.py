"""Node identity and TLS with real processes: `p2pdist certs` makes the CA, the certificates and
the node credentials; a tracker and three agents that hold only their own credential trade pieces,
over plain HTTP and over TLS. Then everything an attacker with the wrong credentials, or a node's
own credential used as another node, can send to the tracker and to a peer: nothing gets in.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from p2pdist.core.identity import NodeCredential, sign_request
from p2pdist.core.wire import Announce, Hello, encode
from tests.support.cluster import fetch_all, sha256_file
from tests.support.identity import Caller
from tests.support.procs import ROOT, AgentProc, TlsFiles, Tracker
from tests.support.registry import Registry
from tests.support.relay import Relay

pytestmark = pytest.mark.integration

MiB = 1 << 20
NODES = ("alpha", "bravo", "charlie")


def certs(*args: str) -> str:
    """Run `p2pdist certs ...` as an operator would; its output."""
    done = subprocess.run([sys.executable, "-m", "p2pdist", "certs", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca") / "ca"
    certs("init", "--dir", str(directory))
    certs("issue", "tracker", "--dir", str(directory), "--host", "127.0.0.1", "--no-credential")
    for name in NODES:
        certs("issue", name, "--dir", str(directory), "--host", "127.0.0.1", "--days", "30")
    return directory


def tls_files(ca: Path, name: str) -> TlsFiles:
    return TlsFiles(ca / "ca.pem", ca / f"{name}.pem", ca / f"{name}-key.pem")


def secret_of(ca: Path) -> str:
    return (ca / "cluster-secret").read_text().strip()


def test_certs_writes_private_files_and_refuses_to_overwrite(ca: Path):
    modes = {p.name: p.stat().st_mode & 0o777 for p in ca.iterdir()}
    for private in ("ca-key.pem", "cluster-secret", "alpha-key.pem", "alpha.credential", "tracker-key.pem"):
        assert modes[private] == 0o600, private
    assert "tracker.credential" not in modes
    cred = NodeCredential.parse((ca / "alpha.credential").read_text())
    assert cred.node == "alpha" and 29 * 86400 < cred.expires - time.time() <= 30 * 86400
    assert cred.key == NodeCredential.issue(secret_of(ca), "alpha", cred.expires).key
    again = subprocess.run([sys.executable, "-m", "p2pdist", "certs", "issue", "alpha", "--dir", str(ca),
                            "--host", "127.0.0.1"], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=60)
    assert again.returncode == 1 and "exists: remove it first" in again.stderr
    assert NodeCredential.parse((ca / "alpha.credential").read_text()) == cred  # untouched


class Refusals:
    """Requests that must not get in, and what each got."""

    def __init__(self) -> None:
        self.got: dict[str, int | str] = {}

    def accepted(self) -> list[str]:
        return [what for what, status in self.got.items() if status in (200, 206, "open")]


async def _tracker_refusals(http: aiohttp.ClientSession, url: str, secret: str, tls: ssl.SSLContext | None,
                            out: Refusals) -> None:
    body = encode(Announce(node="alpha", addr="127.0.0.1:9", blob="sha256:" + "e" * 64, size=MiB))

    async def post(what: str, headers: dict[str, str], data: bytes = body) -> None:
        async with http.post(f"{url}/v1/announce", data=data, headers=headers, ssl=tls or True) as r:
            out.got[f"tracker {what}"] = r.status

    await post("without credentials", {})
    await post("with the cluster secret as a bearer token", {"Authorization": f"Bearer {secret}"})
    await post("with another cluster's credential for alpha", Caller("another-cluster", "alpha").tracker(body))
    await post("with bravo's credential announcing alpha", Caller(secret, "bravo").tracker(body))
    expired = NodeCredential.issue(secret, "alpha", int(time.time()) - 1)
    await post("with an expired credential",
               {"Authorization": sign_request(expired, "POST", "/v1/announce", body, time.time())})
    good = Caller(secret, "alpha").tracker(body)
    async with http.post(f"{url}/v1/announce", data=body, headers=good, ssl=tls or True) as r:
        assert r.status == 200  # the control: alpha's own credential gets in
    await post("replayed", good)
    await post("with a signature lifted onto another body", good, body + b"\x00")
    for what, headers in [("metrics without credentials", {}),
                          ("metrics with a wrong secret", {"Authorization": "Bearer x"})]:
        async with http.get(f"{url}/metrics", headers=headers, ssl=tls or True) as r:
            out.got[f"tracker {what}"] = r.status


async def _peer_refusals(http: aiohttp.ClientSession, base: str, digest: str, secret: str,
                         tls: ssl.SSLContext | None, out: Refusals) -> None:
    path = f"/v1/blobs/{digest}"
    piece = "bytes=0-1023"

    async def get(what: str, headers: dict[str, str]) -> None:
        async with http.get(base + path, headers={"Range": piece, **headers}, ssl=tls or True) as r:
            out.got[f"peer {what}"] = r.status

    await get("without credentials", {})
    await get("with the cluster secret as a bearer token", {"Authorization": f"Bearer {secret}"})
    await get("with another cluster's ticket", Caller("another-cluster", "bravo").peer("alpha", path, piece))
    await get("with a request signed for another peer", Caller(secret, "bravo").peer("charlie", path, piece))
    stale = Caller(secret, "bravo", ticket_ttl=-1)
    await get("with an expired ticket", stale.peer("alpha", path, piece))
    changed = Caller(secret, "bravo").peer("alpha", path, "bytes=0-99")
    await get("with a Range other than the one signed", {"Authorization": changed["Authorization"]})
    good = Caller(secret, "bravo").peer("alpha", path, piece)
    async with http.get(base + path, headers=good, ssl=tls or True) as r:
        assert r.status == 206  # the control: a ticketed node gets the piece
    await get("replayed", good)
    # The control channel: a valid ticket for bravo, saying hello as charlie.
    async with http.ws_connect(base + "/v1/control", headers=Caller(secret, "bravo").peer("alpha", "/v1/control"),
                               ssl=tls or True) as ws:
        await ws.send_bytes(encode(Hello("charlie", "127.0.0.1:9")))
        msg = await ws.receive(timeout=10)
        out.got["peer control: hello as another node"] = "open" if msg.type == aiohttp.WSMsgType.BINARY else \
            f"closed {ws.close_code}"
    async with http.get(base + "/v1/control", ssl=tls or True) as r:
        out.got["peer control without credentials"] = r.status


@pytest.mark.parametrize("transport", ["plain", "tls"])
def test_nodes_with_their_own_credentials_share_a_blob_and_nothing_else_gets_in(
        tmp_path: Path, registry: Registry, ca: Path, transport: str):
    tls = transport == "tls"
    secret = secret_of(ca)
    size = 24 * MiB
    digest = registry.push_blob("team/app", os.urandom(size))
    ref = f"{registry.host}/team/app@{digest}"
    tracker = Tracker(tmp_path, secret, tls=tls_files(ca, "tracker") if tls else None).start()
    procs: list = [tracker]
    scheme = "https" if tls else "http"
    try:
        # alpha reaches the tracker through a relay that records the link, as an eavesdropper would.
        with Relay(("127.0.0.1", tracker.port)) as relay:
            agents = []
            for name in NODES:
                url = f"{scheme}://127.0.0.1:{relay.port}" if name == "alpha" else tracker.url
                agent = AgentProc(tmp_path, name, url, token="", credential=ca / f"{name}.credential",
                                  tls=tls_files(ca, name) if tls else None, upstreams=[f"http://{registry.host}"])
                procs.append(agent.start())
                agents.append(agent)
            results = fetch_all(agents, ref)
            for agent, result in zip(agents, results, strict=True):
                assert result.get("done"), f"{agent.name}: {result}\n{agent.output()[-3000:]}"
                assert sha256_file(result["path"]) == digest
            assert sum(r["from_peers"] for r in results) > 0  # they traded: tickets work
            assert registry.egress(digest) <= 1.1 * size
            seen = relay.captured()
        alpha_key = NodeCredential.parse((ca / "alpha.credential").read_text()).key
        assert b"/v1/announce" in seen or tls  # the capture saw the traffic
        for spelled in (alpha_key, base64.urlsafe_b64encode(alpha_key).rstrip(b"="), secret.encode()):
            assert spelled not in seen  # only signatures cross, in any mode
        if tls:
            assert b"P2P-Node" not in seen and b"announce" not in seen  # all of it encrypted
        else:
            assert b"P2P-Node" in seen  # the same capture does see plain traffic

        refusals = Refusals()
        context = tls_files(ca, "tracker").context() if tls else None

        async def attack() -> None:
            async with aiohttp.ClientSession() as http:
                await _tracker_refusals(http, tracker.url, secret, context, refusals)
                await _peer_refusals(http, f"{scheme}://127.0.0.1:{agents[0].peer_port}", digest, secret, context,
                                     refusals)

        asyncio.run(attack())
        print(json.dumps({"transport": transport, "refusals": refusals.got}))
        assert refusals.accepted() == []
        assert len(refusals.got) == 18
        assert all(status in (401, 403, "closed 1008") for status in refusals.got.values()), refusals.got
        if tls:
            _plain_and_untrusted_are_refused(tracker, agents[0], tmp_path)
    finally:
        for proc in reversed(procs):
            proc.stop()


def _plain_and_untrusted_are_refused(tracker: Tracker, agent: AgentProc, tmp_path: Path) -> None:
    """A TLS port speaks nothing else, and a client that trusts another CA does not trust it."""
    other = tmp_path / "other-ca"
    certs("init", "--dir", str(other))

    async def probe() -> None:
        async with aiohttp.ClientSession() as http:
            for port in (tracker.port, agent.peer_port):
                with pytest.raises(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                        await r.read()
                untrusted = ssl.create_default_context(cafile=str(other / "ca.pem"))
                with pytest.raises(aiohttp.ClientConnectorCertificateError):
                    async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=untrusted) as r:
                        await r.read()

    asyncio.run(probe())


@pytest.mark.parametrize(("content", "says"), [
    ("garbage\n", "not a p2pdist node credential"),
    (None, "cannot read the node credential"),
])
def test_an_agent_with_an_unusable_credential_refuses_to_start_and_says_why(
        tmp_path: Path, ca: Path, content: str | None, says: str):
    path = tmp_path / "node.credential"
    if content is not None:
        path.write_text(content)
    out = AgentProc(tmp_path, "alpha", "http://127.0.0.1:9", token="", credential=path).refused_start()
    assert "p2pdist: cannot start:" in out and says in out and "Traceback" not in out


def test_an_agent_whose_credential_names_another_node_refuses_to_start(tmp_path: Path, ca: Path):
    agent = AgentProc(tmp_path, "bravo", "http://127.0.0.1:9", token="", credential=ca / "alpha.credential")
    assert "node_id 'bravo' differs from the node credential's 'alpha'" in agent.refused_start()
