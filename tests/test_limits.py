"""Every server closes connections that never finish a request, and keeps serving meanwhile.

Real processes: an agent (peer port, API, mirror) and a tracker, each with a 1 s idle timeout and
a cap of 20 connections; 60 connections per server send half a request and nothing more.
"""

from __future__ import annotations

import selectors
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.procs import AgentProc, Tracker

pytestmark = pytest.mark.integration

IDLE = 1.0
CAP = 20
HALF_OPEN = 60


def half_open(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")  # and never the rest
    return sock


def closed_within(socks: list[socket.socket], deadline: float) -> int:
    """How many of ``socks`` the server closed (EOF or reset) before ``deadline``."""
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    closed = 0
    while closed < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            try:
                data = key.fileobj.recv(4096)
            except OSError:
                data = b""
            if not data:
                sel.unregister(key.fileobj)
                closed += 1
    sel.close()
    return closed


def answers(url: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


def test_half_sent_requests_are_closed_and_the_servers_keep_answering(tmp_path: Path) -> None:
    limits = {"P2PDIST_LIMITS_IDLE_TIMEOUT": str(IDLE), "P2PDIST_LIMITS_MAX_CONNECTIONS": str(CAP)}
    tracker = Tracker(tmp_path, "")
    tracker.env.update({"P2PDIST_TRACKER_IDLE_TIMEOUT": str(IDLE), "P2PDIST_TRACKER_MAX_CONNECTIONS": str(CAP)})
    tracker.start()
    agent = AgentProc(tmp_path, "a", tracker.url, extra_env=limits, upstreams=["http://127.0.0.1:9"],
                      mirror=True).start()
    try:
        servers = {"api": (agent.api_port, f"{agent.api}/healthz"),
                   "peer": (agent.peer_port, f"http://127.0.0.1:{agent.peer_port}/healthz"),
                   "mirror": (agent.mirror_port, f"http://{agent.mirror}/v2/"),
                   "tracker": (tracker.port, f"{tracker.url}/healthz")}
        for name, (port, url) in servers.items():
            socks = [half_open(port) for _ in range(HALF_OPEN)]
            try:
                opened = time.monotonic()
                # Three times the cap is held half open; a normal client is still answered.
                assert answers(url) in (200, 401), name
                # The server closes every one of them after the idle timeout (with slack for a busy machine).
                assert closed_within(socks, opened + IDLE + 5.0) == HALF_OPEN, name
            finally:
                for s in socks:
                    s.close()
            assert answers(url) in (200, 401), name
        assert agent.popen.poll() is None and tracker.popen.poll() is None
    finally:
        agent.stop()
        tracker.stop()
