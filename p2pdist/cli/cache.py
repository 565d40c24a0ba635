"""`p2pdist cache ls|rm|gc`: the agent's store, seen and managed by hand.

Through the running daemon's API when it answers (it owns the store: a blob being read or downloaded
is left alone, and its metrics follow); else directly on the data directory, under the lock the
daemon takes while it runs (``p2pdist.store.lock``). ``--data-dir`` always means the directory
itself: refused while a daemon owns it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from p2pdist import config
from p2pdist.core.digest import Digest, DigestError
from p2pdist.errors import P2pdistError
from p2pdist.store import Store, StoreError, admin
from p2pdist.store.lock import StoreLock, StoreLocked

EXAMPLES = """\
examples:
  p2pdist cache ls                          # through the daemon on 127.0.0.1:65002
  p2pdist cache ls --json | jq '.blobs[] | .digest'
  p2pdist cache rm sha256:4f3c...  sha256:9a1b...
  p2pdist cache gc                          # evict least recently used blobs down to the capacity
  p2pdist cache gc --keep 20GiB             # ... down to 20 GiB
  p2pdist cache gc --older-than 7d          # blobs unused for a week
  p2pdist cache gc --partials               # unfinished downloads and what crashed runs left
  p2pdist cache ls --data-dir /var/lib/p2pdist   # the directory itself, daemon stopped

Blobs being read (a pull, a peer upload) or downloaded are never removed: try again later.
"""

_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CliError(P2pdistError):
    """One line for the user, and the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


# The daemon's API is on this host: never through $http_proxy (urllib would send it there).
_LOCAL = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def add_target_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", help="the daemon's API address (default: api_listen of the config, 127.0.0.1:65002)")
    p.add_argument("--data-dir", type=Path, help="work on this data directory directly (the daemon must be stopped)")
    p.add_argument("--config", type=Path, help="the agent's TOML config, for data_dir, capacity and api_listen "
                                               "(default: $P2PDIST_CONFIG, else none)")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("cache", help="list, remove and garbage-collect the blobs the agent keeps",
                              description="See and manage the agent's store: complete blobs, unfinished "
                                          "downloads, use against capacity.", epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = sub.add_parser("ls", help="list complete blobs and unfinished downloads", epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("--json", action="store_true", help="print the listing as one JSON object")
    rm = sub.add_parser("rm", help="remove blobs (and unfinished downloads of them) by digest", epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    rm.add_argument("digests", nargs="+", metavar="DIGEST", help="sha256:<64 hex>")
    gc = sub.add_parser("gc", help="evict least recently used blobs; remove unfinished downloads",
                        description="Evict unused complete blobs, least recently used first, until the store holds "
                                    "at most --keep (default: the configured capacity). With --older-than only blobs "
                                    "unused for that long go (and --keep defaults to 0). --partials removes "
                                    "unfinished downloads nobody is running and temp files of crashed runs; "
                                    "alone, it touches no complete blob.", epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    gc.add_argument("--keep", metavar="SIZE", help="bytes to keep, e.g. 20GiB, 512MiB")
    gc.add_argument("--older-than", metavar="DURATION", help="only blobs unused for this long, e.g. 7d, 12h, 30m")
    gc.add_argument("--partials", action="store_true", help="also remove unfinished downloads and crash leftovers")
    gc.add_argument("--json", action="store_true", help="print what was removed as one JSON object")
    for action in (ls, rm, gc):
        add_target_options(action)


def parse_duration(text: str) -> float:
    m = _DURATION.fullmatch(text)
    if not m:
        raise CliError(f"not a duration: {text!r} (use e.g. 90s, 30m, 12h, 7d, 2w)", 2)
    return float(m.group(1)) * _SECONDS[m.group(2).lower()]


def human(n: int | None) -> str:
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# --- where the store is: the daemon's API, or the directory under its lock ----------------------------


@dataclass
class Target:
    api: str | None = None  # HOST:PORT of a daemon that answers
    store: Store | None = None  # the directory itself, under ``lock``
    lock: StoreLock | None = None
    cfg: config.AgentConfig | None = None

    def close(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def call(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        assert self.api is not None
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"http://{self.api}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with _LOCAL.open(req, timeout=120) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return e.code, json.loads(raw)
            except ValueError:
                if e.code in (404, 405):
                    raise CliError(f"the daemon at {self.api} has no store API ({path}): is it an older "
                                   "version? Stop it and use --data-dir, or upgrade it") from None
                raise CliError(f"the daemon at {self.api} answered {e.code}: {raw[:200]!r}") from None
        except (urllib.error.URLError, OSError) as e:
            raise CliError(f"the daemon at {self.api} stopped answering: {getattr(e, 'reason', e)}") from None


def _load_config(args: argparse.Namespace) -> config.AgentConfig:
    overrides = {"data_dir": args.data_dir} if args.data_dir is not None else {}
    try:
        return config.load(args.config, overrides=overrides)
    except config.ConfigError as e:
        raise CliError(str(e), 2) from None


def _answers(api: str) -> bool:
    try:
        with _LOCAL.open(f"http://{api}/healthz", timeout=5):
            return True
    except urllib.error.HTTPError:
        return True  # something answers: the calls say what
    except (urllib.error.URLError, OSError):
        return False


def _check_owner(data_dir: Path) -> None:
    """Files made here must belong to the daemon's user: root writing into a store owned by another
    user (the agent's 65532, say) would leave blobs and a lock the daemon cannot open."""
    try:
        owner = data_dir.stat().st_uid
    except FileNotFoundError:
        return  # made by this command: its user is the daemon's, presumably
    except OSError as e:
        raise CliError(f"cannot read {data_dir}: {e.strerror}") from None
    if owner != os.geteuid():
        raise CliError(f"{data_dir} belongs to uid {owner}, and this command runs as uid {os.geteuid()}: run it as "
                       f"the daemon's user (e.g. sudo -u '#{owner}' p2pdist ...), so the daemon can use what it writes")


def open_target(args: argparse.Namespace, create: bool = False) -> Target:
    """The daemon when it answers (unless --data-dir names the directory), else the directory
    under the store lock. ``create``: a missing store is made (an import before the first start)."""
    cfg = _load_config(args)
    api = args.api or cfg.api_listen
    if args.data_dir is None and _answers(api):
        return Target(api=api, cfg=cfg)
    root = cfg.data_dir / "store"
    if not create and not (root / "blobs").is_dir():
        where = "" if args.data_dir is not None else f"no daemon answers at {api} and "
        raise CliError(f"{where}there is no store at {root}; pass --api or --data-dir")
    _check_owner(cfg.data_dir)
    lock = StoreLock(root)
    try:
        lock.acquire()
        store = Store(root, capacity=cfg.capacity or None)
    except StoreLocked:
        if args.data_dir is not None:
            raise CliError(f"a running daemon owns {root}: leave out --data-dir to go through its API "
                           f"(--api, now {api})") from None
        raise CliError(f"a daemon owns {root} but does not answer at {api}: pass its --api HOST:PORT") from None
    except PermissionError as e:
        lock.release()
        raise CliError(f"cannot open the store at {root}: {e.strerror}; run as the daemon's user") from None
    except (OSError, StoreError) as e:
        lock.release()
        raise CliError(f"cannot open the store at {root}: {e}") from None
    return Target(store=store, lock=lock, cfg=cfg)


# --- the actions -----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    err = Console(stderr=True)
    prog = f"p2pdist cache {args.action}"
    try:
        if args.action == "rm":
            digests = _parse_digests(args.digests)  # all of them before anything is removed
        target = open_target(args)
        try:
            if args.action == "ls":
                return _ls(target, args.json)
            if args.action == "rm":
                return _rm(target, digests, err, prog)
            return _gc(target, args)
        finally:
            target.close()
    except CliError as e:
        err.print(f"[red]{prog}: {e}", highlight=False, soft_wrap=True)
        return e.status


def _parse_digests(texts: list[str]) -> list[Digest]:
    try:
        return admin.parse_digests(texts)
    except DigestError as e:
        raise CliError(str(e), 2) from None


def _ls(target: Target, as_json: bool) -> int:
    if target.api is not None:
        status, listing = target.call("GET", "/v1/cache")
        if status != 200:
            raise CliError(listing.get("error", f"the daemon answered {status}"))
    else:
        assert target.store is not None
        listing = admin.listing(target.store).to_json()
    if as_json:
        print(json.dumps({**listing, "source": "daemon" if target.api else "data_dir"}))
        return 0
    out = Console()
    blobs, partials = listing["blobs"], listing["partials"]
    if blobs:
        table = Table(title="complete blobs (least recently used first)")
        table.add_column("digest", no_wrap=True)
        for column in ("size", "last used", "state"):
            table.add_column(column, justify="right")
        now = time.time()
        for b in blobs:
            table.add_row(b["digest"], human(b["size"]), _ago(now - b["last_used"]), "in use" if b["in_use"] else "")
        out.print(table)
    if partials:
        table = Table(title="unfinished downloads")
        table.add_column("digest", no_wrap=True)
        for column in ("present", "size", "progress", "state"):
            table.add_column(column, justify="right")
        for p in partials:
            size = p["size"]
            table.add_row(p["digest"], human(p["present"]), human(size),
                          f"{100 * p['present'] / size:.0f} %" if size else "?",
                          "downloading" if p["downloading"] else "resumable")
        out.print(table)
    capacity, usage = listing["capacity"], listing["usage"]
    share = f" ({100 * usage / capacity:.0f} %)" if capacity else ""
    out.print(f"store: {len(blobs)} blobs, {human(usage)} of {human(capacity) if capacity else 'unlimited'}{share}"
              + (f"; {len(partials)} unfinished" if partials else ""), highlight=False)
    if listing.get("leftovers"):
        out.print(f"{human(listing['leftovers'])} left by interrupted runs: `p2pdist cache gc --partials` "
                  "removes it", highlight=False)
    return 0


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _rm(target: Target, digests: list[Digest], err: Console, prog: str) -> int:
    failed = 0
    for digest in digests:
        if target.api is not None:
            status, r = target.call("DELETE", f"/v1/cache/blobs/{digest}")
            if status not in (200, 404, 409):
                raise CliError(r.get("error", f"the daemon answered {status}"))
        else:
            assert target.store is not None
            r = vars(admin.remove(target.store, digest))
        what = [w for w in ("blob", "partial") if r.get(w)]
        if what:
            print(f"removed {digest} ({' and '.join('unfinished download' if w == 'partial' else w for w in what)})")
        if r.get("in_use") or r.get("downloading"):
            why = "a reader has it open" if r.get("in_use") else "it is being downloaded now"
            err.print(f"[yellow]{prog}: {digest} left in place: {why}; try again later", highlight=False,
                      soft_wrap=True)
            failed += 1
        elif not what:
            err.print(f"[red]{prog}: {digest} is not in the store", highlight=False, soft_wrap=True)
            failed += 1
    return 1 if failed else 0


def _gc(target: Target, args: argparse.Namespace) -> int:
    try:
        keep = config.parse_size(args.keep) if args.keep is not None else None
    except config.ConfigError as e:
        raise CliError(str(e), 2) from None
    older_than = parse_duration(args.older_than) if args.older_than is not None else None
    # --partials alone touches no complete blob.
    blobs = not (args.partials and keep is None and older_than is None)
    if target.api is not None:
        status, done = target.call("POST", "/v1/cache/gc", {"keep": keep, "older_than": older_than,
                                                            "partials": args.partials, "blobs": blobs})
        if status != 200:
            raise CliError(done.get("error", f"the daemon answered {status}"), 2 if status == 400 else 1)
    else:
        assert target.store is not None and target.cfg is not None
        if blobs and keep is None and older_than is None:
            if not target.cfg.capacity:
                raise CliError("no capacity is configured: say how much to keep (--keep SIZE) or what age goes "
                               "(--older-than DURATION)", 2)
            keep = target.cfg.capacity
        done = admin.collect(target.store, keep, older_than, args.partials, blobs).to_json()
    if args.json:
        print(json.dumps(done))
        return 0
    parts = [f"evicted {len(done['evicted'])} blobs ({human(done['freed'])})"] if blobs else []
    if args.partials:
        parts.append(f"removed {len(done['partials'])} unfinished downloads and {human(done['leftovers'])} "
                     "of leftovers")
    if done["skipped_in_use"]:
        parts.append(f"kept {done['skipped_in_use']} blobs in use")
    print("; ".join(parts))
    return 0
