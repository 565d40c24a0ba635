"""The node agent's shell around the core: the swarm driver, neighbours, the peer server and
client, the origin and tracker clients, the local API and metrics. ``Agent`` ties them together."""

from .node import Agent

__all__ = ["Agent"]
