"""``python -m p2pdist.cli.demo``: the same as ``p2pdist demo``."""

import sys

from p2pdist.cli.demo import build_parser, run

sys.exit(run(build_parser().parse_args()))
