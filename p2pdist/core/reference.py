"""Image references: ``[REGISTRY/]REPO[:TAG][@DIGEST]`` as Docker and containerd read them."""

from __future__ import annotations

from dataclasses import dataclass

from .digest import Digest
from .names import InvalidName, check_registry, check_repository, check_tag

DOCKER_HUB = "docker.io"


@dataclass(frozen=True, slots=True)
class Reference:
    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __str__(self) -> str:
        out = f"{self.registry}/{self.repository}"
        if self.tag:
            out += f":{self.tag}"
        if self.digest:
            out += f"@{self.digest}"
        return out


def parse_reference(text: str) -> Reference:
    """Parse an image or blob reference; raises InvalidName or DigestError with the reason."""
    rest, _, digest_text = text.partition("@")
    digest = Digest.parse(digest_text) if digest_text else None
    first, slash, remainder = rest.partition("/")
    # Docker's rule: the first component is a registry only if it looks like a host.
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, path = check_registry(first), remainder
    else:
        registry, path = DOCKER_HUB, rest
    tag = None
    name, colon, maybe_tag = path.rpartition(":")
    if colon and "/" not in maybe_tag:
        path, tag = name, check_tag(maybe_tag)
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if not path:
        raise InvalidName(f"reference {text!r} has no repository")
    return Reference(registry, check_repository(path), tag, digest)
