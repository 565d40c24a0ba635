"""The `p2pdist` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from p2pdist import __version__, config, logs
from p2pdist.cli import cache, certs, configure, demo, imports, kubernetes, preheat, status
from p2pdist.cli import simulate as simulate_cmd
from p2pdist.loop import run

DAEMON_EXAMPLES = """\
examples:
  p2pdist daemon                                  # all defaults: tracker on 127.0.0.1:7070
  p2pdist daemon --tracker http://10.0.0.5:7070 --peer-listen 0.0.0.0:65003 \\
      --peer-advertise 10.0.1.7:65003 --zone eu-1a --rack r12
  P2PDIST_CLUSTER_TOKEN=s3cret p2pdist daemon --config /etc/p2pdist/agent.toml

Every setting can come from the TOML file (--config or $P2PDIST_CONFIG), from the environment
(P2PDIST_<SETTING>, e.g. P2PDIST_DATA_DIR, P2PDIST_LIMITS_PEER_CONCURRENCY) or from a flag,
in rising order of precedence. Upstream credentials go in the TOML file:

  [[upstream]]
  registry = "registry.example.com"
  username = "robot"
  password = "..."
"""

FETCH_EXAMPLES = """\
examples:
  p2pdist fetch 127.0.0.1:5000/team/app@sha256:4f3c...   # through the local daemon
  p2pdist fetch --api 127.0.0.1:65002 --json registry.example.com/app@sha256:...

The daemon must be running (p2pdist daemon). The blob ends up in the daemon's store; the last
line printed says where, how long it took and how many bytes came from peers and the origin.
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="p2pdist",
        description="Peer-to-peer distribution of container image layers. Run `p2pdist daemon` on every "
                    "node and `p2pdist-tracker` once per cluster; nodes then fetch blobs from each other "
                    "and take each piece from the origin registry about once.",
    )
    p.add_argument("--version", action="version", version=f"p2pdist {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("daemon", help="run the node agent", description="Run the node agent: peer server, "
                       "local API and downloads.", epilog=DAEMON_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--config", type=Path, help="TOML config file (default: $P2PDIST_CONFIG, else none)")
    d.add_argument("--tracker", help="tracker URL; several comma-separated for replicas on Redis (tried in "
                                     "turn); '' for none (default http://127.0.0.1:7070)")
    d.add_argument("--peer-listen", help="HOST:PORT for peers (default 127.0.0.1:65003)")
    d.add_argument("--peer-advertise", help="HOST:PORT other peers dial (default: --peer-listen)")
    d.add_argument("--api-listen", help="HOST:PORT of the local API and /metrics (default 127.0.0.1:65002)")
    d.add_argument("--data-dir", help="where blobs are stored (default /var/lib/p2pdist as root)")
    d.add_argument("--node-id", help="this node's id (default: hostname + random suffix, kept in data dir)")
    d.add_argument("--zone", help="zone label; the tracker prefers peers in the same zone")
    d.add_argument("--rack", help="rack label; the tracker prefers peers in the same rack")
    d.add_argument("--capacity", help="bytes of blobs to keep, e.g. 50GiB (default unlimited)")
    d.add_argument("--upstream", action="append", metavar="[http://]REGISTRY[=ENDPOINT]",
                   help="allow this origin registry (repeatable; http:// = plain HTTP). Also $P2PDIST_UPSTREAMS "
                        "(comma-separated). docker.io is allowed by default")
    d.add_argument("--mirror-listen", help="HOST:PORT of the registry mirror (default 127.0.0.1:65001, '' = off)")
    d.add_argument("--metrics-listen", help="HOST:PORT serving only /metrics, /healthz and /readyz, safe to expose "
                                            "to Prometheus, e.g. 0.0.0.0:9402 (default '' = off)")
    d.add_argument("--node-credential", metavar="FILE",
                   help="this node's credential from `p2pdist certs issue` (names the node id); "
                        "or $P2PDIST_NODE_CREDENTIAL")
    d.add_argument("--cluster-token", help="the cluster secret itself, for a trusted node: it derives its own "
                                           "credential (prefer $P2PDIST_CLUSTER_TOKEN, or --node-credential)")
    d.add_argument("--tls-ca", help="cluster CA (ca.pem) to check the tracker's and peers' certificates")
    d.add_argument("--tls-cert", help="this node's certificate: the peer port serves HTTPS (with --tls-key)")
    d.add_argument("--tls-key", help="the key of --tls-cert")
    d.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    f = sub.add_parser("fetch", help="fetch a blob through the running daemon",
                       description="Fetch one blob (REGISTRY/REPO@DIGEST) through the local daemon, "
                                   "with a progress bar.", epilog=FETCH_EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("ref", help="REGISTRY/REPO@sha256:... (the registry defaults to docker.io)")
    f.add_argument("--api", default="127.0.0.1:65002", help="the daemon's API address (default %(default)s)")
    f.add_argument("--json", action="store_true", help="print one JSON result line instead of a progress bar")

    # Commands in their own modules: each brings its parser and its runner.
    configure.add_parser(sub)
    certs.add_parser(sub)
    status.add_parser(sub)
    demo.add_parser(sub)
    simulate_cmd.add_parser(sub)
    kubernetes.add_parser(sub)
    cache.add_parser(sub)
    preheat.add_parser(sub)
    imports.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "daemon":
        return _daemon(args)
    if args.command == "fetch":
        from p2pdist.cli.fetch import run_fetch
        return asyncio.run(run_fetch(args.ref, args.api, args.json))
    runners = {"configure": configure.run, "certs": certs.run, "status": status.run, "demo": demo.run,
               "simulate": simulate_cmd.run, "kubernetes": kubernetes.run,
               "cache": cache.run, "import": imports.run,
               "preheat": preheat.run}
    return runners[args.command](args)


def _daemon(args: argparse.Namespace) -> int:
    overrides = {k: getattr(args, k) for k in (
        "tracker", "peer_listen", "peer_advertise", "api_listen", "metrics_listen", "data_dir", "node_id", "zone",
        "rack", "capacity", "cluster_token", "node_credential", "tls_ca", "tls_cert", "tls_key", "log_level",
        "upstream")}
    if args.mirror_listen is not None:
        overrides["mirror"] = {"listen": args.mirror_listen}
    try:
        cfg = config.load(args.config, overrides=overrides)
    except config.ConfigError as e:
        print(f"p2pdist: {e}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level)
    from p2pdist.cli.daemon import serve
    try:
        run(serve(cfg), tls=cfg.tls_cert is not None)
    except OSError as e:
        print(f"p2pdist: cannot start: {e} (is another daemon using these ports? see --peer-listen/--api-listen)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
