"""The root of every error p2pdist raises on purpose.

``except P2pdistError`` catches every one of them and nothing else (a bug's TypeError still shows).
Each module's errors subclass it, and a built-in too where callers already catch one
(``ValueError`` for bad input): ``WireError(P2pdistError, ValueError)``. The tracker's and the
simulator's roots (``tracker.errors.TrackerError``, ``simulations.units.ScenarioError``) subclass
it as well.
"""

from __future__ import annotations


class P2pdistError(Exception):
    """Something p2pdist refused or could not do; the message says what and, where it can, what to do."""
