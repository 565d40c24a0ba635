"""``python -m p2pdist.demo``: the same as ``p2pdist demo``."""

import sys

from . import build_parser, run

sys.exit(run(build_parser().parse_args()))
