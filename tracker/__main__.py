"""``python -m tracker``: the same as the ``p2pdist-tracker`` command."""

import sys

from .cli import main

sys.exit(main())
