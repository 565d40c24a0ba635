"""p2pdist tracker: knows which agents hold which blobs, hands out peers, piece digests and origin leases.

The announce logic lives in :mod:`tracker.service` (pure, clock passed in); :mod:`tracker.app` is the
thin aiohttp shell around it and :mod:`tracker.cli` the ``p2pdist-tracker`` command.
"""
