"""``p2pdist demo``: a tracker, agents and an origin on loopback, fetching one image in a flash crowd.

Hooks for the CLI: :func:`add_parser` adds the ``demo`` subcommand, :func:`run` runs it.
"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Watch p2pdist work on one machine. The demo:
  1. generates a multi-layer OCI image (uncompressed tar layers of random bytes) in its workdir;
  2. starts an origin on 127.0.0.1: the real docker-registry (CNCF distribution) if it is on PATH,
     and pushes the image into it; otherwise an embedded origin serving the image layout;
  3. starts a tracker and N agents (`p2pdist daemon`) on free loopback ports, with a random cluster token;
  4. asks every agent for every blob of the image at the same moment (a flash crowd), with live progress;
  5. hashes every node's copy of every blob, then prints per node the time and the MiB that came from
     peers and from the origin, and the origin's egress divided by the image size: 1.00 means each
     byte left the origin once, where N nodes pulling directly would cost N.00."""

EPILOG = """\
examples:
  p2pdist demo                                 # 4 agents; layers of 64, 32, 16 and 8 MiB
  p2pdist demo --agents 8 --layers 256MiB,128MiB,64MiB
  p2pdist demo --origin embedded --json        # no docker-registry needed; results as JSON on stdout
  p2pdist demo --workdir /tmp/p2p-demo         # keep image, origin storage, agent stores and logs there

Nothing listens beyond 127.0.0.1. Every process the demo starts is stopped by its PID at the end,
also on Ctrl-C. The temporary workdir is removed unless --keep (or --workdir) is given; agent,
tracker and registry logs are in WORKDIR/logs and WORKDIR/registry.

exit status: 0 when every node holds every blob and it hashes to its digest; 1 when a fetch or a
check failed; 2 for bad options or an origin/cluster that could not start; 130 on Ctrl-C, 143 on SIGTERM."""


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--agents", type=int, default=4, metavar="N", help="agents to start (default %(default)s, min 2)")
    p.add_argument("--layers", default="64MiB,32MiB,16MiB,8MiB", metavar="SIZES",
                   help="comma-separated layer sizes, e.g. 256MiB,1GiB (default %(default)s)")
    p.add_argument("--origin", choices=("auto", "registry", "embedded"), default="auto",
                   help="auto: docker-registry if installed, else embedded (default %(default)s)")
    p.add_argument("--workdir", metavar="DIR",
                   help="new or empty directory for everything the demo writes; kept afterwards "
                        "(default: a temporary directory, removed at the end)")
    p.add_argument("--keep", action="store_true", help="keep the temporary workdir (logs, stores) at the end")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout, no progress display")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="give up on fetches still running after this long (default %(default)s)")
    return p


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``demo`` to a ``p2pdist`` subparsers object; dispatch with ``run(args)``."""
    p = subparsers.add_parser("demo", help="start a tracker, agents and an origin on loopback and watch a flash crowd",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return _configure(p)


def build_parser(prog: str = "p2pdist demo") -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m p2pdist.cli.demo``)."""
    return _configure(argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG,
                                              formatter_class=argparse.RawDescriptionHelpFormatter))


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the process exit status."""
    from p2pdist.cli.demo.runner import main  # heavy imports only when the demo actually runs

    return main(args)
