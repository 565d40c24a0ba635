"""`p2pdist kubernetes topology` against a stand-in kube-apiserver: a local aiohttp server over HTTPS
(certificate from the cluster CA tooling, p2pdist.tls) that serves GET /api/v1/nodes/NAME to one
bearer token. The agent's config it writes is the rendered base plus the node's zone and rack, and
the agent loads it."""

from __future__ import annotations

import asyncio
import shutil
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from p2pdist import config
from p2pdist.cli.main import main
from p2pdist.deploy.agent import agent_toml
from p2pdist.deploy.values import Values
from p2pdist.tls import init_ca, issue_cert, server_context

TOKEN = "the-service-account-token"
NODE = "worker-3"


@dataclass
class ApiServer:
    port: int
    account: Path  # token and ca.crt, as the kubelet mounts them
    labels: dict[str, str]
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Authorization)


@pytest.fixture
async def apiserver(tmp_path: Path) -> AsyncIterator[ApiServer]:
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir)
    issued = issue_cert(ca_dir, "apiserver", ["127.0.0.1"])
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(TOKEN + "\n")
    shutil.copy(ca_dir / "ca.pem", account / "ca.crt")
    server = ApiServer(0, account, {})

    async def node(request: web.Request) -> web.Response:
        server.requests.append((request.path, request.headers.get("Authorization", "")))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"kind": "Status", "code": 401, "reason": "Unauthorized"}, status=401)
        if request.match_info["name"] != NODE:
            return web.json_response({"kind": "Status", "code": 404, "reason": "NotFound"}, status=404)
        return web.json_response({"kind": "Node", "apiVersion": "v1",
                                  "metadata": {"name": NODE, "labels": server.labels}})

    app = web.Application()
    app.router.add_get("/api/v1/nodes/{name}", node)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_context(issued.cert, issued.key))
    await site.start()
    server.port = runner.addresses[0][1]
    yield server
    await runner.cleanup()


async def _topology(api: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *extra: str) -> int:
    """The command as the init container runs it: the API server found through the pod's environment."""
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
    base = tmp_path / "base.toml"
    base.write_text(agent_toml(Values()))
    argv = ["kubernetes", "topology", "--node", NODE, "--base", str(base), "--output", str(tmp_path / "agent.toml"),
            "--service-account", str(api.account), *extra]
    # urllib blocks: off the loop that serves the stand-in API server.
    return await asyncio.to_thread(main, argv)


def _agent_config(path: Path) -> config.AgentConfig:
    """What the agent container makes of the file, with the DaemonSet's environment."""
    return config.load(path, environ={"P2PDIST_CLUSTER_TOKEN": "s3cret", "P2PDIST_PEER_ADVERTISE": "10.0.0.7:65003"})


async def test_zone_and_rack_come_from_the_node_labels(apiserver: ApiServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    apiserver.labels = {"topology.kubernetes.io/zone": "eu-west-1a", "example.com/rack": "r12",
                        "kubernetes.io/hostname": NODE}
    assert await _topology(apiserver, tmp_path, monkeypatch, "--rack-label", "example.com/rack") == 0
    assert apiserver.requests == [(f"/api/v1/nodes/{NODE}", f"Bearer {TOKEN}")]
    cfg = _agent_config(tmp_path / "agent.toml")
    assert (cfg.zone, cfg.rack) == ("eu-west-1a", "r12")
    # The base is kept: the tracker by its Service name, the store, the mirror.
    assert cfg.tracker == "http://p2pdist-tracker.kube-system.svc:7070"
    assert str(cfg.data_dir) == "/var/lib/p2pdist" and cfg.mirror.listen == "127.0.0.1:65001"
    assert "zone: 'eu-west-1a'" in capsys.readouterr().out


async def test_missing_labels_leave_zone_and_rack_empty(apiserver: ApiServer, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    apiserver.labels = {"kubernetes.io/hostname": NODE}
    assert await _topology(apiserver, tmp_path, monkeypatch) == 0
    written = tomllib.loads((tmp_path / "agent.toml").read_text())
    assert "zone" not in written and "rack" not in written
    cfg = _agent_config(tmp_path / "agent.toml")
    assert (cfg.zone, cfg.rack) == ("", "")
    out = capsys.readouterr().out
    assert "zone: none" in out and "rack: none" in out


async def test_a_wrong_token_is_a_clear_error_and_writes_nothing(apiserver: ApiServer, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (apiserver.account / "token").write_text("stolen-or-stale\n")
    assert await _topology(apiserver, tmp_path, monkeypatch) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "401" in err and "token" in err
    assert apiserver.requests == [(f"/api/v1/nodes/{NODE}", "Bearer stolen-or-stale")]
    assert not (tmp_path / "agent.toml").exists()


async def test_an_unknown_node_names_the_fix(apiserver: ApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(apiserver.port))
    argv = ["kubernetes", "topology", "--node", "nobody", "--output", str(tmp_path / "agent.toml"),
            "--service-account", str(apiserver.account)]
    assert await asyncio.to_thread(main, argv) == 1
    assert "no node named 'nobody'" in capsys.readouterr().err


async def test_an_api_server_the_ca_did_not_sign_is_refused(apiserver: ApiServer, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    init_ca(tmp_path / "other-ca")
    shutil.copy(tmp_path / "other-ca" / "ca.pem", apiserver.account / "ca.crt")
    assert await _topology(apiserver, tmp_path, monkeypatch) == 1
    err = capsys.readouterr().err
    assert "cannot reach the API server" in err and "CERTIFICATE_VERIFY_FAILED" in err
    assert apiserver.requests == []  # the token never left: TLS failed first
