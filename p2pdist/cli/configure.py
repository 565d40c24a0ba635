"""`p2pdist configure containerd|docker|podman`: point a container runtime at the local mirror.

Hooks for the main command line: `add_parser(subparsers)` adds the `configure` command and
`run(args)` carries it out. Each runtime module only computes the files' new contents; this
module decides whether to print them (--dry-run) or write them, so both paths show the same text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from p2pdist.cli import configure_containerd, configure_docker, configure_podman
from p2pdist.cli.configure_common import (
    DOCKER_HUB,
    ConfigureError,
    FileChange,
    Mirror,
    Registry,
    apply,
    parse_mirror,
    parse_registries,
)

DEFAULT_MIRROR = "127.0.0.1:65001"

DESCRIPTION = """\
Write the runtime's registry-mirror configuration so that image pulls go through the local
p2pdist agent (p2pdist daemon, mirror on --mirror). Existing files are merged: other settings,
hosts and registries are kept, the p2pdist mirror is put first, the original is kept as FILE.bak
(or FILE.bak.<time> if a backup exists), and the file is replaced atomically. Running it again
changes nothing. --dry-run prints the resulting files and writes nothing."""

EXAMPLES = """\
examples:
  p2pdist configure containerd --dry-run          # show certs.d/docker.io and _default hosts.toml
  p2pdist configure containerd --registry docker.io --registry quay.io --registry http://127.0.0.1:5000
  p2pdist configure docker                        # /etc/docker/daemon.json registry-mirrors
  p2pdist configure podman --registry docker.io --registry ghcr.io --mirror-by-digest-only

Run `p2pdist configure RUNTIME --help` for the runtime's files and options. Registries other than
docker.io must also be allowed on the agent: p2pdist daemon --upstream quay.io --upstream http://127.0.0.1:5000

--remove undoes it: the mirror goes, everything else stays (with a backup).

exit status: 0 done (or nothing to do); 1 an existing file is unusable (nothing is changed) or a
file cannot be written; 2 a bad option value (nothing is changed)."""

CONTAINERD_EXAMPLES = """\
Writes CONFIG_PATH/<registry>/hosts.toml for each --registry, and CONFIG_PATH/_default/hosts.toml,
which containerd uses for every registry without a folder of its own:

  server = "https://registry-1.docker.io"      # omitted in _default: containerd derives it
  [host."http://127.0.0.1:65001"]
    capabilities = ["pull", "resolve"]

containerd falls back to `server` when the mirror fails, so pulls keep working without the agent.
Kubernetes (the CRI plugin) reads these files only when config_path is set in containerd's
config.toml; this command checks --containerd-config and says what to add. ctr needs --hosts-dir.

examples:
  p2pdist configure containerd
  p2pdist configure containerd --registry docker.io --registry registry.k8s.io --dry-run
  p2pdist configure containerd --config-path /etc/containerd/certs.d --mirror 127.0.0.1:65001
  p2pdist configure containerd --registry http://127.0.0.1:5000 --no-default-host"""

DOCKER_EXAMPLES = """\
Adds http://MIRROR first to "registry-mirrors" in daemon.json; every other key stays. Docker uses
mirrors for docker.io images only, and dockerd must be restarted (or sent SIGHUP) to use it.
A daemon.json that is not valid JSON is refused and left untouched.

examples:
  p2pdist configure docker
  p2pdist configure docker --daemon-json /etc/docker/daemon.json --mirror 127.0.0.1:65001 --dry-run"""

PODMAN_EXAMPLES = """\
For podman, CRI-O, buildah and skopeo (containers/image). For each --registry R, ensures:

  [[registry]]
  prefix = "R"
  location = "R"
  [[registry.mirror]]
  location = "127.0.0.1:65001"
  insecure = true                              # the mirror speaks plain http on loopback

An existing [[registry]] for R keeps its settings and other mirrors; the p2pdist mirror goes first.

examples:
  p2pdist configure podman
  p2pdist configure podman --registry docker.io --registry quay.io --dry-run
  p2pdist configure podman --registries-conf ~/.config/containers/registries.conf   # rootless
  p2pdist configure podman --mirror-by-digest-only   # tag pulls go straight to the registry"""

Planner = Callable[[argparse.Namespace, Mirror, list[Registry]], tuple[list[FileChange], list[str]]]


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `configure` and its runtime subcommands to the main parser's subparsers."""
    parser = subparsers.add_parser(
        "configure", help="point containerd, Docker or podman at the local mirror",
        description=DESCRIPTION, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    runtimes = parser.add_subparsers(dest="runtime", required=True, metavar="RUNTIME")
    common = _common_options()
    formatter = argparse.RawDescriptionHelpFormatter

    c = runtimes.add_parser("containerd", parents=[common], help="certs.d/<registry>/hosts.toml",
                            description="Configure containerd's registry hosts.", epilog=CONTAINERD_EXAMPLES,
                            formatter_class=formatter)
    c.add_argument("--config-path", type=Path, default=configure_containerd.DEFAULT_ROOT, metavar="DIR",
                   help="containerd's hosts folder, its config_path (default %(default)s)")
    c.add_argument("--containerd-config", type=Path, default=configure_containerd.DEFAULT_CONFIG, metavar="FILE",
                   help="containerd config.toml checked for config_path; never written (default %(default)s)")
    c.add_argument("--no-default-host", action="store_true",
                   help="do not write _default/hosts.toml (which sends every other registry to the mirror too)")

    d = runtimes.add_parser("docker", parents=[common], help="daemon.json registry-mirrors",
                            description="Configure dockerd's registry-mirrors.", epilog=DOCKER_EXAMPLES,
                            formatter_class=formatter)
    d.add_argument("--daemon-json", type=Path, default=configure_docker.DEFAULT_DAEMON_JSON, metavar="PATH",
                   help="dockerd's config file (default %(default)s)")

    p = runtimes.add_parser("podman", parents=[common], help="registries.conf (also CRI-O, buildah, skopeo)",
                            description="Configure containers/image registries.conf mirrors.",
                            epilog=PODMAN_EXAMPLES, formatter_class=formatter)
    p.add_argument("--registries-conf", type=Path, default=configure_podman.DEFAULT_REGISTRIES_CONF,
                   metavar="PATH", help="registries.conf to merge into (default %(default)s)")
    p.add_argument("--mirror-by-digest-only", action="store_true",
                   help="use the mirror only for pulls by digest (sets mirror-by-digest-only = true)")


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--mirror", default=DEFAULT_MIRROR, metavar="HOST:PORT",
                        help="the agent's mirror as the runtime dials it, plain http "
                             "(p2pdist daemon --mirror-listen; default %(default)s)")
    common.add_argument("--registry", action="append", dest="registries", metavar="REGISTRY",
                        help="registry host whose pulls use the mirror, e.g. quay.io or http://127.0.0.1:5000 "
                             "(http:// = the registry itself is plain http); repeatable (default docker.io)")
    common.add_argument("--dry-run", action="store_true", help="print the resulting files; write nothing")
    common.add_argument("--remove", action="store_true",
                        help="undo: take the p2pdist mirror out of the runtime's files (every registry), keeping "
                             "everything else and a backup; the runtime then pulls from the registries directly")
    return common


def run(args: argparse.Namespace) -> int:
    """Carry out `p2pdist configure RUNTIME`; returns the exit status."""
    try:
        mirror = parse_mirror(args.mirror)
        registries = parse_registries(args.registries)
        # Every file is computed (and every existing one checked) before any is written.
        if args.remove:
            changes, notes = _unplan(args, mirror)
        else:
            changes, notes = _PLANNERS[args.runtime](args, mirror, registries)
        if args.dry_run:
            _print_files(changes)
        else:
            _write_files(changes)
    except ConfigureError as e:
        print(f"p2pdist configure {args.runtime}: error: {e}", file=sys.stderr)
        return e.exit_code
    for note in notes:
        print(note)
    return 0


def _plan_containerd(args: argparse.Namespace, mirror: Mirror,
                     registries: list[Registry]) -> tuple[list[FileChange], list[str]]:
    root: Path = args.config_path
    changes = configure_containerd.plan(root, registries, mirror, default_host=not args.no_default_host)
    notes = configure_containerd.config_path_notes(args.containerd_config, root)
    notes += _upstream_notes(registries, default_host=not args.no_default_host)
    notes.append(configure_containerd.verify_note(root, registries))
    return changes, notes


def _plan_docker(args: argparse.Namespace, mirror: Mirror,
                 registries: list[Registry]) -> tuple[list[FileChange], list[str]]:
    return [configure_docker.plan(args.daemon_json, mirror)], configure_docker.notes(registries, mirror)


def _plan_podman(args: argparse.Namespace, mirror: Mirror,
                 registries: list[Registry]) -> tuple[list[FileChange], list[str]]:
    change = configure_podman.plan(args.registries_conf, registries, mirror, args.mirror_by_digest_only)
    notes = _upstream_notes(registries, default_host=False)
    notes += configure_podman.notes(change.new, registries, mirror, args.mirror_by_digest_only)
    return [change], notes


_PLANNERS: dict[str, Planner] = {
    "containerd": _plan_containerd,
    "docker": _plan_docker,
    "podman": _plan_podman,
}


def _unplan(args: argparse.Namespace, mirror: Mirror) -> tuple[list[FileChange], list[str]]:
    if args.runtime == "containerd":
        changes = configure_containerd.unplan(args.config_path, mirror)
        apply = "containerd reads hosts.toml at each pull: nothing to restart."
    elif args.runtime == "docker":
        changes = configure_docker.unplan(args.daemon_json, mirror)
        apply = "apply: restart dockerd (systemctl restart docker), or send it SIGHUP."
    else:
        changes = configure_podman.unplan(args.registries_conf, mirror)
        apply = "apply: podman, skopeo and buildah read registries.conf at each command; restart CRI-O."
    if not any(c.changed for c in changes):
        return changes, [f"nothing to remove: no {args.runtime} file names the mirror {mirror.url}"]
    return changes, [apply]


def _upstream_notes(registries: list[Registry], default_host: bool) -> list[str]:
    """The agent serves only the registries it allows; say how to allow the ones configured here."""
    notes = []
    others = [r.upstream_flag for r in registries if r.host != DOCKER_HUB]
    if others:
        flags = " ".join(f"--upstream {o}" for o in others)
        notes.append(f"agent: allow these registries on the agent too: p2pdist daemon {flags} "
                     "(docker.io is allowed by default); others fall back to the registry directly.")
    if default_host:
        notes.append("note: _default sends every other registry to the mirror first; those the agent does not "
                     "allow fall back to the registry directly.")
    return notes


def _print_files(changes: list[FileChange]) -> None:
    for change in changes:
        what = {"created": "would create", "updated": "would update, keeping a backup",
                "unchanged": "unchanged"}[change.status]
        print(f"==> {change.path} ({what}) <==")
        print(change.new, end="" if change.new.endswith("\n") else "\n")
        print()


def _write_files(changes: list[FileChange]) -> None:
    for change in changes:
        backup = apply(change)
        print(f"{change.status} {change.path}" + (f" (backup: {backup})" if backup else ""))
