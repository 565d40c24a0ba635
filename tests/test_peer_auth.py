"""The peer port always wants a credential, loopback included: the cluster token, or on a node
without one the node secret it keeps in data_dir/node-secret (0600, made once, refused when unsafe).

Unit tests of the secret file and the middleware, then real agents on 127.0.0.1 pulling from a
real docker-registry.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from p2pdist.agent import peer_server
from p2pdist.agent.auth import NODE_SECRET_FILE, NodeSecretError, node_secret, peer_auth
from p2pdist.agent.identity import load_identity
from p2pdist.agent.node import Agent
from p2pdist.config import AgentConfig
from p2pdist.core import wire
from tests.support.identity import Caller
from tests.support.procs import AgentProc, Tracker
from tests.support.registry import Registry

MiB = 1 << 20
NO_TRACKER = ""  # every piece from the origin, directly


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the node secret file ----------------------------------------------------------------------


@pytest.fixture
def no_umask() -> Iterator[None]:
    """umask 0: whatever the secret file's mode is, the code chose it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_node_secret_is_made_once_private_and_random(tmp_path: Path, no_umask: None):
    path = tmp_path / NODE_SECRET_FILE
    first = node_secret(path)
    assert _mode(path) == 0o600
    assert path.read_text() == first + "\n"
    assert len(base64.urlsafe_b64decode(first + "=")) >= 32  # bytes of entropy
    assert node_secret(path) == first  # read back, not replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == [NODE_SECRET_FILE]  # no temporary file left
    other = tmp_path / "other"
    other.mkdir()
    assert node_secret(other / NODE_SECRET_FILE) != first


def test_node_secret_accepts_one_an_operator_provisioned(tmp_path: Path):
    path = tmp_path / NODE_SECRET_FILE
    mine = secrets.token_urlsafe(48)
    path.write_text(mine)  # no newline
    path.chmod(0o600)
    assert node_secret(path) == mine


GOOD = secrets.token_urlsafe(32)


@pytest.mark.parametrize(("content", "mode", "says"), [
    (GOOD + "\n", 0o644, "is open to group/other (mode 0644)"),
    (GOOD + "\n", 0o640, "is open to group/other (mode 0640)"),
    (GOOD + "\n", 0o602, "is open to group/other (mode 0602)"),
    ("", 0o600, "is malformed"),
    ("short\n", 0o600, "is malformed"),
    (GOOD + "!\n", 0o600, "is malformed"),  # one stray character
    (GOOD + "\n\n", 0o600, "is malformed"),
    ("x" * 5000, 0o600, "is malformed"),
    ("\xe9" * 43, 0o600, "is malformed"),
], ids=["0644", "0640", "0602", "empty", "short", "stray-char", "two-lines", "huge", "non-ascii"])
def test_unsafe_or_malformed_node_secret_is_refused_not_replaced(tmp_path: Path, content: str, mode: int,
                                                                 says: str):
    path = tmp_path / NODE_SECRET_FILE
    path.write_text(content)
    path.chmod(mode)
    with pytest.raises(NodeSecretError, match=r"node secret .*node-secret ") as e:
        node_secret(path)
    assert says in str(e.value)
    if content.strip():
        assert content.strip() not in str(e.value)  # never echoed: it may be a real secret
    assert path.read_text() == content and _mode(path) == mode


def test_node_secret_that_is_not_a_regular_file_is_refused(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.write_text(GOOD + "\n")
    target.chmod(0o600)
    link = tmp_path / NODE_SECRET_FILE
    link.symlink_to(target)
    with pytest.raises(NodeSecretError, match="is a symbolic link"):
        node_secret(link)
    link.unlink()
    link.mkdir(mode=0o700)
    with pytest.raises(NodeSecretError, match="is not a regular file"):
        node_secret(link)


def test_unreadable_node_secret_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / NODE_SECRET_FILE
    path.write_text(GOOD + "\n")
    path.chmod(0o600)
    real_open = os.open

    def denied(file, *args, **kwargs):
        if Path(file) == path:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    with pytest.raises(NodeSecretError, match=r"cannot read the node secret .*node-secret: Permission denied"):
        node_secret(path)


def test_two_agents_racing_on_one_data_dir_end_with_one_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = tmp_path / NODE_SECRET_FILE
    theirs = secrets.token_urlsafe(32)
    real_link = os.link

    def beaten(src, dst, *args, **kwargs):
        # The other agent links its secret between our look and our link.
        Path(dst).write_text(theirs + "\n")
        Path(dst).chmod(0o600)
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", beaten)
    assert node_secret(path) == theirs
    assert path.read_text() == theirs + "\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [NODE_SECRET_FILE]


# --- the middleware ----------------------------------------------------------------------------


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="served")


async def _server(secret: str) -> TestServer:
    app = web.Application(middlewares=[peer_auth(None, secret)])
    for path in ("/v1/blobs/{digest}", "/v1/control", "/healthz"):
        app.router.add_get(path, _ok)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    return server


@pytest.mark.parametrize(("headers", "says"), [
    ({}, "cluster authentication required: missing 'Authorization: Bearer <node secret>' header"),
    ({"Authorization": "Bearer wrong"}, "cluster authentication required: invalid node secret"),
    ({"Authorization": f"Basic {GOOD}"}, "the Authorization header must be 'Bearer <node secret>'"),
    ({"Authorization": "Bearer"}, "the Authorization header must be 'Bearer <node secret>'"),
    ({"Authorization": f"Bearer {GOOD[:-1]}"}, "invalid node secret"),  # a prefix
    ({"Authorization": f"Bearer {GOOD}x"}, "invalid node secret"),
    ({"Authorization": f"Bearer {GOOD} {GOOD}"}, "invalid node secret"),
    ({"Authorization": "Bearer " + "\u00e9" * 43}, "invalid node secret"),  # non-ASCII: 401, not 500
], ids=["missing", "wrong", "basic", "bare-bearer", "prefix", "longer", "two", "non-ascii"])
async def test_middleware_refuses_data_and_control_without_the_secret(headers: dict, says: str):
    server = await _server(GOOD)
    try:
        async with aiohttp.ClientSession() as session:
            for path in (f"/v1/blobs/sha256:{'a' * 64}", "/v1/control"):
                async with session.get(server.make_url(path), headers=headers) as r:
                    assert r.status == 401
                    text = await r.text()
                    assert says in text
                    assert GOOD not in text
                    assert r.headers["WWW-Authenticate"] == 'Bearer realm="p2pdist-cluster"'
                    assert "give it a node credential or the cluster secret" in text
            async with session.get(server.make_url("/healthz")) as r:  # no data: open
                assert r.status == 200
    finally:
        await server.close()


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_middleware_lets_the_secret_in(scheme: str):
    server = await _server(GOOD)
    try:
        async with aiohttp.ClientSession() as session:
            for path in (f"/v1/blobs/sha256:{'a' * 64}", "/v1/control"):
                async with session.get(server.make_url(path), headers={"Authorization": f"{scheme} {GOOD}"}) as r:
                    assert r.status == 200
                    assert await r.text() == "served"
    finally:
        await server.close()


def test_middleware_fails_closed_without_a_secret():
    with pytest.raises(ValueError, match="needs a credential"):
        peer_auth(None, "")


SECRET = "the-cluster-secret"


@pytest.mark.parametrize("token", [SECRET, ""], ids=["cluster", "alone"])
async def test_peer_server_wants_a_signed_ticket_else_the_node_secret(tmp_path: Path, token: str):
    config = AgentConfig(data_dir=tmp_path, cluster_token=token, tracker="")
    path = f"/v1/blobs/sha256:{'a' * 64}"
    async with aiohttp.ClientSession() as session:
        identity = load_identity(config, lambda: "n1")
        agent = Agent(config, "n1", session, node_secret="" if token else "the-node-secret", identity=identity)
        server = TestServer(peer_server.build_app(agent), host="127.0.0.1")
        await server.start_server()
        try:
            url = server.make_url(path)
            if token:
                refused = [({"Authorization": f"Bearer {SECRET}"}, "must use the P2P-Ticket scheme"),
                           ({"Authorization": "Bearer the-node-secret"}, "must use the P2P-Ticket scheme"),
                           (Caller("another-secret").peer("n1", path), "not signed by this cluster's tracker"),
                           (Caller(SECRET).peer("n2", path), "meant for another peer")]
                accepted = Caller(SECRET).peer("n1", path)
            else:
                refused = [({"Authorization": f"Bearer {SECRET}"}, "invalid node secret"),
                           (Caller(SECRET).peer("n1", path), "must be 'Bearer <node secret>'")]
                accepted = {"Authorization": "Bearer the-node-secret"}
            for headers, says in refused:
                async with session.get(url, headers=headers) as r:
                    assert r.status == 401
                    assert says in await r.text()
            async with session.get(url, headers=accepted) as r:
                assert r.status == 400  # past authentication: the handler wants a Range
                assert "Range" in await r.text()
        finally:
            await server.close()
            await agent.close()


async def test_peer_server_without_any_credential_does_not_start(tmp_path: Path):
    async with aiohttp.ClientSession() as session:
        agent = Agent(AgentConfig(data_dir=tmp_path, tracker=""), "n1", session)
        with pytest.raises(ValueError, match="needs a credential"):
            peer_server.build_app(agent)
        await agent.close()


# --- real agents -------------------------------------------------------------------------------


def _lone(workdir: Path, registry: Registry, data_dir: Path | None = None) -> AgentProc:
    """An agent with no cluster token and no tracker."""
    return AgentProc(workdir, "lone", NO_TRACKER, token="", data_dir=data_dir, upstreams=[f"http://{registry.host}"])


@pytest.mark.integration
async def test_peer_port_of_an_agent_without_cluster_token_wants_its_node_secret(tmp_path: Path,
                                                                               registry: Registry):
    agent = _lone(tmp_path, registry).start()
    try:
        data = os.urandom(3 * MiB)
        digest = registry.push_blob("team/secret", data)
        result = await asyncio.to_thread(agent.fetch, f"{registry.host}/team/secret@{digest}")
        assert result.get("done"), result
        path = agent.data_dir / NODE_SECRET_FILE
        assert _mode(path) == 0o600
        assert _mode(agent.data_dir) == 0o700
        secret = path.read_text().strip()
        base = f"http://127.0.0.1:{agent.peer_port}"
        blob = f"{base}/v1/blobs/{digest}"
        piece = {"Range": "bytes=1048576-1050623"}
        async with aiohttp.ClientSession() as session:
            async with session.get(blob, headers=piece) as r:
                assert r.status == 401
                assert "missing 'Authorization: Bearer <node secret>' header" in await r.text()
            wrong = secrets.token_urlsafe(32)
            async with session.get(blob, headers={**piece, "Authorization": f"Bearer {wrong}"}) as r:
                assert r.status == 401
                assert "invalid node secret" in await r.text()
            async with session.get(blob, headers={**piece, "Authorization": f"Bearer {secret}"}) as r:
                assert r.status == 206
                assert await r.read() == data[1048576:1050624]
            async with session.get(f"{base}/v1/control") as r:
                assert r.status == 401
                assert "missing 'Authorization: Bearer <node secret>' header" in await r.text()
            async with session.get(f"{base}/v1/control", headers={"Authorization": f"Bearer {wrong}"}) as r:
                assert r.status == 401
            async with session.ws_connect(f"{base}/v1/control", headers={"Authorization": f"Bearer {secret}"}) as ws:
                assert not ws.closed  # upgraded: the control channel is open to the secret
            async with session.get(f"{base}/healthz") as r:
                assert r.status == 200  # no data
    finally:
        agent.stop()
    assert secret not in agent.output()  # refusals are logged, the secret never


@pytest.mark.integration
async def test_node_secret_survives_a_restart(tmp_path: Path, registry: Registry):
    data_dir = tmp_path / "node"
    first = _lone(tmp_path, registry, data_dir).start()
    try:
        data = os.urandom(2 * MiB)
        digest = registry.push_blob("team/kept", data)
        result = await asyncio.to_thread(first.fetch, f"{registry.host}/team/kept@{digest}")
        assert result.get("done"), result
        secret = (data_dir / NODE_SECRET_FILE).read_text()
    finally:
        first.stop()
    second = _lone(tmp_path, registry, data_dir).start()
    try:
        assert (data_dir / NODE_SECRET_FILE).read_text() == secret
        assert _mode(data_dir / NODE_SECRET_FILE) == 0o600
        blob = f"http://127.0.0.1:{second.peer_port}/v1/blobs/{digest}"
        async with aiohttp.ClientSession() as session:
            async with session.get(blob, headers={"Range": "bytes=0-99"}) as r:
                assert r.status == 401
            auth = {"Range": "bytes=0-99", "Authorization": f"Bearer {secret.strip()}"}
            async with session.get(blob, headers=auth) as r:
                assert r.status == 206
                assert await r.read() == data[:100]
    finally:
        second.stop()


@pytest.mark.integration
@pytest.mark.parametrize(("content", "mode", "says"), [
    (GOOD + "\n", 0o644, "is open to group/other (mode 0644)"),
    ("not a secret\n", 0o600, "is malformed"),
], ids=["open", "malformed"])
def test_agent_refuses_to_start_with_an_unsafe_node_secret(tmp_path: Path, registry: Registry, content: str,
                                                           mode: int, says: str):
    data_dir = tmp_path / "node"
    data_dir.mkdir(mode=0o700)
    path = data_dir / NODE_SECRET_FILE
    path.write_text(content)
    path.chmod(mode)
    out = _lone(tmp_path, registry, data_dir).refused_start()
    assert f"p2pdist: cannot start: node secret {path} {says}" in out
    assert "Traceback" not in out
    assert path.read_text() == content and _mode(path) == mode  # left for the operator, not replaced


@pytest.mark.integration
def test_agents_without_cluster_token_trade_nothing_and_pull_from_the_origin(tmp_path: Path,
                                                                            registry: Registry):
    """The degraded mode: each node's peer port takes only its own secret, which it sends nobody."""
    size = 4 * MiB
    digest = registry.push_blob("team/alone", os.urandom(size))
    ref = f"{registry.host}/team/alone@{digest}"
    tracker = Tracker(tmp_path, token="").start()  # authentication off: allowed on loopback
    fast_stall = {"P2PDIST_LIMITS_STALL_TIMEOUT": "1"}
    agents = []
    try:
        for name in ("seeder", "leecher"):
            agents.append(AgentProc(tmp_path, name, tracker.url, token="", extra_env=fast_stall,
                                    upstreams=[f"http://{registry.host}"]).start())
        seeder, leecher = agents
        assert seeder.fetch(ref).get("done")
        result = leecher.fetch(ref)
        assert result.get("done"), result
        assert result["from_peers"] == 0 and result["from_origin"] == size
        assert seeder.metrics()["p2pdist_bytes_uploaded_total"] == 0
    finally:
        for proc in [*agents, tracker]:
            proc.stop()


@pytest.mark.integration
async def test_node_secret_is_never_sent_to_a_peer_the_tracker_hands_out(tmp_path: Path, registry: Registry):
    """Without a cluster token the tracker is open: anyone may announce themselves as a peer. Whatever
    the agent sends such a peer must not open its own peer port."""
    seen: list[str] = []

    async def collect(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization", ""))
        raise web.HTTPUnauthorized()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", collect)
    collector = TestServer(app, host="127.0.0.1")
    await collector.start_server()
    tracker = Tracker(tmp_path, token="").start()
    agent = AgentProc(tmp_path, "victim", tracker.url, token="", extra_env={"P2PDIST_LIMITS_STALL_TIMEOUT": "1"},
                      upstreams=[f"http://{registry.host}"]).start()
    try:
        data = os.urandom(2 * MiB)
        digest = registry.push_blob("team/bait", data)
        async with aiohttp.ClientSession() as session:
            async def announce(event: str) -> wire.AnnounceReply:
                msg = wire.Announce(node="collector", addr=f"127.0.0.1:{collector.port}", blob=digest,
                                    size=len(data), event=event)
                async with session.post(f"{tracker.url}/v1/announce", data=wire.encode(msg),
                                        headers={"Content-Type": "application/msgpack"}) as r:
                    assert r.status == 200, await r.text()
                    reply = wire.decode(await r.read(), expect=(wire.AnnounceReply,))
                    assert isinstance(reply, wire.AnnounceReply)
                    return reply

            await announce("started")
            result = await asyncio.to_thread(agent.fetch, f"{registry.host}/team/bait@{digest}")
            assert result.get("done"), result
            # The tracker pairs the two: the agent was handed the collector as well.
            assert "victim" in [p.node for p in (await announce("progress")).peers]
        secret = (agent.data_dir / NODE_SECRET_FILE).read_text().strip()
        assert not any(secret in header for header in seen), "the node secret was sent to a peer"
        assert seen == []  # with no cluster token to show, the agent dials nobody
    finally:
        agent.stop()
        tracker.stop()
        await collector.close()
