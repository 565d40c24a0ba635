"""Repository names and tags per the OCI distribution grammar."""

from __future__ import annotations

import re

from ..errors import P2pdistError

# From the distribution spec. Anchored full matches only: no '..', no leading '/', no upper case.
_NAME = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_REGISTRY = re.compile(rf"{_LABEL}(?:\.{_LABEL})*(?::[0-9]{{1,5}})?|\[[0-9a-fA-F:]+\](?::[0-9]{{1,5}})?")
MAX_NAME = 255


class InvalidName(P2pdistError, ValueError):
    """An invalid repository name, tag or registry host."""


def check_repository(name: str) -> str:
    if not isinstance(name, str) or len(name) > MAX_NAME or not _NAME.fullmatch(name):
        raise InvalidName(f"invalid repository name {str(name)[:80]!r}: must match the OCI name grammar")
    return name


def check_tag(tag: str) -> str:
    if not isinstance(tag, str) or not _TAG.fullmatch(tag):
        raise InvalidName(f"invalid tag {str(tag)[:80]!r}")
    return tag


def check_registry(host: str) -> str:
    if not isinstance(host, str) or len(host) > 255 or not _REGISTRY.fullmatch(host):
        raise InvalidName(f"invalid registry host {str(host)[:80]!r}: expected host[:port]")
    return host


def path_prefix(registry: str) -> str:
    """The repository-path component that names ``registry`` at a mirror (``127.0.0.1:5000`` ->
    ``127.0.0.1-5000``): containers/image puts a mirror location's path in front of every name, and a
    port's ':' is not allowed there."""
    return registry.lower().replace(":", "-")
