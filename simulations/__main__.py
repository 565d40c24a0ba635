"""``python -m simulations build|clean|status``: the simulator's compiled core (simulations/native.py)."""

import sys

from .native import main

sys.exit(main())
