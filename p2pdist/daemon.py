"""`p2pdist daemon`: runs the peer server, the local API and the agent until told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal

import aiohttp
from aiohttp import web

from . import api, mirror, peer_server
from .agent import Agent
from .config import AgentConfig, node_id, split_hostport
from .core import wire

log = logging.getLogger("p2pdist.daemon")


async def serve(config: AgentConfig, ready: asyncio.Event | None = None) -> None:
    config.data_dir.mkdir(parents=True, exist_ok=True)
    node = node_id(config)
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=64)
    async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as session:
        agent = Agent(config, node, session)
        runners = []
        apps = [(peer_server.build_app(agent), config.peer_listen), (api.build_app(agent), config.api_listen)]
        if config.mirror.listen:
            apps.append((mirror.build_app(agent), config.mirror.listen))
        for app, listen in apps:
            app._client_max_size = wire.MAX_FRAME
            runner = web.AppRunner(app, access_log=None, handle_signals=False)
            await runner.setup()
            host, port = split_hostport(listen)
            await web.TCPSite(runner, host, port, reuse_address=True).start()
            runners.append(runner)
        await agent.start()
        log.info("agent ready", extra={"node": node, "peer": config.peer_listen, "api": config.api_listen,
                                        "mirror": config.mirror.listen or "off",
                                        "tracker": config.tracker or "none", "data_dir": str(config.data_dir)})
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
