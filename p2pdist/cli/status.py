"""`p2pdist status`: what the local daemon is doing, as a table (or its JSON).

Reads the daemon's `/v1/status` and `/readyz` on the API address: readiness and why not, the
downloads in progress (size, progress, bytes from peers and from the origin), neighbours and banned
peers, and the store's use.
"""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request

from rich.console import Console
from rich.table import Table

EXAMPLES = """\
examples:
  p2pdist status                      # the daemon on 127.0.0.1:65002
  p2pdist status --api 127.0.0.1:65012 --json
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("status", help="what the local daemon is doing: readiness, downloads, peers, store",
                              description="Show the local daemon's readiness, downloads in progress, neighbours "
                                          "and store use.", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", default="127.0.0.1:65002", help="the daemon's API address (default %(default)s)")
    p.add_argument("--json", action="store_true", help="print the status and readiness as one JSON object")


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:  # /readyz says 503 with its reasons
        return e.code, json.loads(e.read() or b"{}")


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    base = f"http://{args.api}"
    try:
        _, status = _get(base + "/v1/status")
        _, ready = _get(base + "/readyz")
    except (urllib.error.URLError, OSError, ValueError) as e:
        err.print(f"[red]p2pdist status: no daemon answers at {args.api} ({getattr(e, 'reason', e)}); "
                  f"start one with `p2pdist daemon`, or pass --api")
        return 1
    if args.json:
        print(json.dumps({**status, "readiness": ready}))
        return 0
    out = Console()
    checks = ready.get("checks", {})
    verdict = "[green]ready[/]" if ready.get("ready") else "[red]not ready[/]"
    out.print(f"node [bold]{status['node']}[/] at {status['peer_addr']}: {verdict}")
    for name, why in checks.items():
        if why != "ok":
            out.print(f"  {name}: {why}")
    store = status["store"]
    out.print(f"store: {store['blobs']} blobs, {store['bytes'] / (1 << 20):.1f} MiB")
    out.print(f"neighbours: {len(status['neighbours'])}"
              + (f", banned: {', '.join(status['banned'])}" if status["banned"] else ""))
    downloads = status["downloads"]
    if not downloads:
        out.print("no downloads in progress")
        return 0
    table = Table(title="downloads in progress")
    for column in ("blob", "size", "progress", "from peers", "from origin", "resumed"):
        table.add_column(column, justify="left" if column == "blob" else "right")
    for blob, d in sorted(downloads.items()):
        size = d.get("size") or 0
        done = d.get("have", 0)
        table.add_row(blob[:19], _mib(size), f"{100 * done / size:.0f} %" if size else "?", _mib(d["from_peers"]),
                      _mib(d["from_origin"]), _mib(d["resumed"]))
    out.print(table)
    return 0


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / (1 << 20):.1f} MiB"
