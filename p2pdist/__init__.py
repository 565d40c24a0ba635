"""p2pdist: peer-to-peer layer distribution for container clusters."""

__version__ = "0.1.0"
