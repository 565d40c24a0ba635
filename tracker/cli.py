"""``p2pdist-tracker``: run the tracker until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from p2pdist import __version__
from p2pdist.logs import log_event
from p2pdist.logs import setup as setup_logging
from p2pdist.loop import run
from p2pdist.serving import ServerRunner, raise_file_limit
from p2pdist.tls import CertError, server_context

from . import gc_tuning
from .app import TRACKER, create_app
from .config import ENV_PREFIX, FIELDS, LOG_LEVELS, ConfigError, TrackerConfig, check_exposure, load
from .fastpath import Connections, fast_path_factory
from .redis_state import RedisState, RedisUnavailable

log = logging.getLogger("tracker")

DESCRIPTION = """\
Run the p2pdist tracker. Every agent announces to it which blobs it is pulling; the tracker answers
with a bounded list of peers (nearest first), the piece digests learned so far, and origin leases
(piece ranges only that agent may fetch from the origin), so each piece leaves the origin about
once per cluster.

Endpoints: POST /v1/announce (msgpack), GET /healthz (no auth), GET /metrics (Prometheus)."""


def _epilog() -> str:
    defaults = TrackerConfig()
    settings = "\n".join(
        f"  {name:<20} {ENV_PREFIX + name.upper():<42} default: {getattr(defaults, name)!r}"
        for name in FIELDS if name != "cluster_token"
    )
    return f"""\
examples:
  p2pdist-tracker
      loopback only, no authentication: try it on one machine
  {ENV_PREFIX}CLUSTER_TOKEN=$(cat ca/cluster-secret) p2pdist-tracker --listen 0.0.0.0:7070 \\
      --tls-cert ca/tracker.pem --tls-key ca/tracker-key.pem
      serve the cluster over HTTPS; agents sign every announce with their node credential
      (see `p2pdist certs --help`); Prometheus scrapes /metrics with "Bearer <cluster secret>"
  p2pdist-tracker --config /etc/p2pdist/tracker.toml --log-level debug
  p2pdist-tracker --listen 0.0.0.0:7070 --redis redis://redis:6379/0   (with the cluster token as above)
      one of several replicas sharing their state in Redis behind one Service: agents may announce
      to any of them, and any of them may go away

configuration, lowest to highest precedence: built-in defaults; the TOML file from --config
(or {ENV_PREFIX}CONFIG), top level or a [tracker] table; environment variables
{ENV_PREFIX}<SETTING>; these flags. listen = "HOST:PORT" sets host and port together.
Without a cluster token the tracker refuses to listen beyond loopback unless --insecure is given.

settings (TOML key, environment variable, default):
  {"cluster_token":<20} {ENV_PREFIX + "CLUSTER_TOKEN":<42} default: '' (authentication off)
{settings}
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2pdist-tracker", description=DESCRIPTION, epilog=_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"p2pdist-tracker {__version__}")
    p.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (default 127.0.0.1:7070)")
    p.add_argument("--config", metavar="FILE", help="TOML file with settings (see below)")
    p.add_argument("--peer-ttl", type=float, metavar="SECONDS",
                   help="forget a peer that has not announced for this long (default 30)")
    p.add_argument("--lease-ttl", type=float, metavar="SECONDS",
                   help="give an origin lease to another node after this long without progress: no digest and "
                        "no bytes on its origin stream (default 10)")
    p.add_argument("--lease-pieces", type=int, metavar="N",
                   help="pieces per origin lease; one puts each fresh piece on a different node, more save "
                        "Range requests (default 1)")
    p.add_argument("--origin-streams", type=int, metavar="N",
                   help="origin leases out at once per blob, split among the downloading nodes; bounds the "
                        "origin's load and spreads new pieces over many uplinks (default 8; 0 = no cap)")
    p.add_argument("--origin-slow-start", action=argparse.BooleanOptionalAction, default=None,
                   help="open a blob's origin streams one at a time, one more per piece digested, so the "
                        "first pieces arrive at full origin speed (default on)")
    p.add_argument("--cluster-token", metavar="TOKEN",
                   help=f"shared secret agents must present; prefer {ENV_PREFIX}CLUSTER_TOKEN, "
                        "since flags are visible to every local user in ps")
    p.add_argument("--tls-cert", metavar="FILE", help="serve HTTPS with this certificate (`p2pdist certs issue "
                                                      "tracker --host ...`); with --tls-key")
    p.add_argument("--tls-key", metavar="FILE", help="the key of --tls-cert")
    p.add_argument("--insecure", action="store_true", default=None,
                   help="allow listening beyond loopback without a cluster token")
    p.add_argument("--redis", metavar="URL",
                   help="keep the state in this Redis (redis://HOST:6379/0) so several trackers serve one cluster "
                        "(default: in memory, one tracker)")
    p.add_argument("--log-level", choices=LOG_LEVELS, help="log verbosity (default info); logs are JSON lines")
    return p


async def serve(config: TrackerConfig) -> None:
    """Serve until SIGTERM/SIGINT, then close connections and stop cleanly."""
    shared = None
    if config.redis:
        shared = RedisState.from_url(config.redis, config)
        await shared.start()  # RedisUnavailable: main() says so and exits
        log_event(log, logging.INFO, "redis_state", url=config.redis.split("@")[-1])
    app = create_app(config, shared=shared)
    gc_tuning.install()  # this process's full collections come with the Freezer's thaw only
    access = logging.getLogger("aiohttp.access") if config.log_level == "debug" else None
    raise_file_limit(config.max_connections + 256)
    runner = ServerRunner(app, handle_signals=False, access_log=access, idle_timeout=config.idle_timeout,
                          max_connections=config.max_connections)
    await runner.setup()
    fast: asyncio.Server | None = None
    book = Connections(0)
    try:
        tls = server_context(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
        loop = asyncio.get_running_loop()
        if shared is None:
            # Announces on the fast path (tracker/fastpath.py), every other request by aiohttp. With
            # the state in Redis each announce waits on Redis anyway: aiohttp serves everything.
            aiohttp_server = runner.server
            assert aiohttp_server is not None
            book = Connections(config.max_connections)
            fast = await loop.create_server(
                fast_path_factory(app[TRACKER], aiohttp_server, book, config.idle_timeout),
                config.host, config.port, ssl=tls, backlog=1024)
            addresses = [sock.getsockname() for sock in fast.sockets]
        else:
            site = web.TCPSite(runner, config.host, config.port, ssl_context=tls)
            await site.start()
            addresses = runner.addresses
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        for sockname in addresses:
            host, port = sockname[0], sockname[1]
            scheme = "https" if tls is not None else "http"
            url = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
            print(f"p2pdist-tracker listening on {url}", flush=True)
            log_event(log, logging.INFO, "listening", url=url, auth=bool(config.cluster_token))
        await stop.wait()
        log_event(log, logging.INFO, "stopping")
    finally:
        if fast is not None:
            fast.close()
            for conn in list(book.open):
                conn.close()
        await runner.cleanup()
        if shared is not None:
            await shared.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {
        "listen": args.listen, "peer_ttl": args.peer_ttl, "lease_ttl": args.lease_ttl,
        "lease_pieces": args.lease_pieces, "origin_streams": args.origin_streams,
        "origin_slow_start": args.origin_slow_start, "cluster_token": args.cluster_token,
        "insecure": args.insecure, "log_level": args.log_level, "tls_cert": args.tls_cert, "tls_key": args.tls_key,
        "redis": args.redis,
    }
    try:
        config = load(args.config, flags=flags)
        check_exposure(config)
    except ConfigError as e:
        print(f"p2pdist-tracker: error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)
    try:
        run(serve(config), tls=config.tls_cert is not None)
    except CertError as e:
        print(f"p2pdist-tracker: error: {e}", file=sys.stderr)
        return 2
    except RedisUnavailable as e:
        print(f"p2pdist-tracker: error: {e}; start it, or check --redis", file=sys.stderr)
        return 1
    except OSError as e:  # typically the port is taken or the address is not ours
        print(f"p2pdist-tracker: error: cannot listen on {config.listen}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0
