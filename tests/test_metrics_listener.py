"""The metrics listener (`metrics_listen`): /metrics, /healthz and /readyz only, on a port of its
own that may be exposed; nothing that fetches, reports status or writes. Real daemon processes."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from p2pdist import config
from tests.support.procs import AgentProc, parse_metrics
from tests.support.registry import free_port

pytestmark = pytest.mark.integration


def request(url: str, method: str = "GET", data: bytes | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on, from /proc (its socket inodes against the LISTEN table)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if m:
            inodes.add(m.group(1))
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_metrics_port_serves_probes_and_metrics_only(tmp_path: Path):
    port = free_port()
    agent = AgentProc(tmp_path, "probed", "", token="")
    agent.args += ["--metrics-listen", f"127.0.0.1:{port}"]
    agent.start()
    try:
        base = f"http://127.0.0.1:{port}"
        status, body = request(base + "/metrics")
        assert status == 200
        metrics = parse_metrics(body.decode())
        assert "p2pdist_store_bytes" in metrics and "p2pdist_store_capacity_bytes" in metrics
        assert request(base + "/healthz")[0] == 200
        assert request(base + "/readyz")[0] == 200
        # Nothing that fetches, reports or writes: not there at all.
        fetch = b'{"ref": "127.0.0.1:9/x@sha256:' + b"0" * 64 + b'"}'
        assert request(base + "/v1/fetch", "POST", fetch)[0] in (404, 405)
        assert request(base + "/v1/status")[0] in (404, 405)
        assert request(base + "/v1/cache")[0] in (404, 405)
        assert request(base + "/v1/cache/gc", "POST", b"{}")[0] in (404, 405)
        assert request(base + f"/v1/cache/blobs/sha256:{'0' * 64}", "DELETE")[0] in (404, 405)
        assert request(base + "/metrics", "POST", b"{}")[0] == 405
        # The API port keeps them all (probes and `p2pdist status` use it).
        assert request(agent.api + "/metrics")[0] == 200
        assert request(agent.api + "/v1/status")[0] == 200
        assert listening_ports(agent.pid) == {agent.peer_port, agent.api_port, port}
        assert '"metrics": "127.0.0.1:' in agent.output()
    finally:
        agent.stop()


def test_no_metrics_listener_by_default(tmp_path: Path):
    agent = AgentProc(tmp_path, "quiet", "", token="").start()
    try:
        assert listening_ports(agent.pid) == {agent.peer_port, agent.api_port}
        assert '"metrics": "off"' in agent.output()
    finally:
        agent.stop()


def test_metrics_listen_beyond_loopback_needs_no_token():
    cfg = config.load(overrides={"metrics_listen": "0.0.0.0:9402"}, environ={})
    assert cfg.metrics_listen == "0.0.0.0:9402" and not cfg.cluster_token and not cfg.node_credential
    assert config.load(environ={}).metrics_listen == ""
    with pytest.raises(config.ConfigError, match="metrics_listen"):
        config.load(overrides={"metrics_listen": "9402"}, environ={})
