"""The local registry mirror: the OCI distribution pull API, backed by the swarm."""

from .app import build_app

__all__ = ["build_app"]
