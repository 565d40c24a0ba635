"""The tracker's errors: all ``TrackerError``, itself a ``p2pdist.errors.P2pdistError``."""

from __future__ import annotations

from p2pdist.errors import P2pdistError


class TrackerError(P2pdistError):
    """Something the tracker refused or could not do."""
