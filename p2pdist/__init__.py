"""p2pdist: peer-to-peer layer distribution for container clusters."""

__version__ = "0.1.0"

# How the agent names itself to origins: a registry's log tells the agents' requests from clients' by it.
USER_AGENT = f"p2pdist/{__version__}"
