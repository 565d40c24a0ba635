"""`p2pdist daemon`: runs the peer server, the local API, the mirror, the metrics listener and the
agent until told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from pathlib import Path

import aiohttp
from aiohttp import web

from p2pdist import USER_AGENT, mirror
from p2pdist.agent import api, auth, peer_server
from p2pdist.agent.identity import NodeIdentity, load_identity
from p2pdist.agent.node import Agent
from p2pdist.agent.readiness import Readiness
from p2pdist.config import AgentConfig, ConfigError, node_id, split_hostport
from p2pdist.core import wire
from p2pdist.mirror.server import OciServer
from p2pdist.serving import CappedServer, ServerRunner, raise_file_limit
from p2pdist.store.lock import StoreLock, StoreLocked
from p2pdist.tls import CertError, server_context

log = logging.getLogger("p2pdist.daemon")


async def serve(config: AgentConfig, ready: asyncio.Event | None = None) -> None:
    # Owner only: the store holds layers of private images, and the node secret lives here.
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _warn_if_open(config.data_dir)
    try:
        identity = load_identity(config, lambda: node_id(config))
        peer_tls = server_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
    except (ConfigError, CertError) as e:
        raise SystemExit(f"p2pdist: cannot start: {e}") from None
    node = identity.node if identity is not None else node_id(config)
    secret = "" if identity is not None else _node_secret(config)
    # The store is this process's alone while it runs: `p2pdist cache` and `import` then go through
    # the API, and work on the directory themselves only when they get this lock (store.lock).
    try:
        store_lock = StoreLock(config.data_dir / "store").acquire()
    except StoreLocked:
        raise SystemExit(f"p2pdist: cannot start: another p2pdist daemon uses {config.data_dir}; "
                         "give each daemon its own --data-dir") from None
    try:
        await _serve(config, node, secret, identity, peer_tls, ready)
    finally:
        store_lock.release()


async def _serve(config: AgentConfig, node: str, secret: str, identity: NodeIdentity | None,
                 peer_tls: ssl.SSLContext | None, ready: asyncio.Event | None) -> None:
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=64)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                     headers={"User-Agent": USER_AGENT}) as session:
        agent = Agent(config, node, session, node_secret=secret, identity=identity)
        agent.metrics.watch_store(agent.store)
        readiness = Readiness(agent)  # one tracker check cache for both listeners
        runners = []
        apps = [(peer_server.build_app(agent), config.peer_listen, CappedServer, peer_tls),
                (api.build_app(agent, readiness), config.api_listen, CappedServer, None)]
        if config.mirror.listen:
            apps.append((mirror.build_app(agent), config.mirror.listen, OciServer, None))
        if config.metrics_listen:
            apps.append((api.build_metrics_app(agent, readiness), config.metrics_listen, CappedServer, None))
        limits = config.limits
        raise_file_limit(len(apps) * limits.max_connections + 1024)  # and the client side's sockets
        for app, listen, server_class, tls in apps:
            app._client_max_size = wire.MAX_FRAME
            runner = ServerRunner(app, access_log=None, handle_signals=False, server_class=server_class,
                                  idle_timeout=limits.idle_timeout, max_connections=limits.max_connections)
            await runner.setup()
            host, port = split_hostport(listen)
            await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=tls).start()
            runners.append(runner)
        await agent.start()
        log.info("agent ready", extra={"node": node, "peer": config.peer_listen, "api": config.api_listen,
                                        "mirror": config.mirror.listen or "off",
                                        "metrics": config.metrics_listen or "off",
                                        "tracker": config.tracker or "none", "data_dir": str(config.data_dir),
                                        "peer_auth": _peer_auth(config), "peer_tls": peer_tls is not None})
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        if ready is not None:
            ready.set()
        try:
            await stop.wait()
        finally:
            log.info("agent stopping", extra={"node": node})
            await agent.close()
            for runner in runners:
                await runner.cleanup()


def _peer_auth(config: AgentConfig) -> str:
    if config.node_credential:
        return "node credential"
    return "cluster secret" if config.cluster_token else "node secret"


def _node_secret(config: AgentConfig) -> str:
    """Without a cluster token the peer port wants this node's own secret (see ``auth``)."""
    try:
        return auth.node_secret(config.data_dir / auth.NODE_SECRET_FILE)
    except auth.NodeSecretError as e:
        # Before any port is open: a clear line and exit status 1, not a traceback.
        raise SystemExit(f"p2pdist: cannot start: {e}") from None


def _warn_if_open(data_dir: Path) -> None:
    mode = data_dir.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("data_dir is open to other local users: they can read every cached blob from disk; "
                    f"run chmod 700 {data_dir}", extra={"data_dir": str(data_dir), "mode": f"{mode:04o}"})
