"""Which upstream a mirror request is for, named by the client: never guessed.

Three ways a client names the registry, tried in this order:

1. ``?ns=REGISTRY`` (containerd adds it to every request to a mirror); the path names the repository.
2. A path prefix: the first component of the name is an upstream's :func:`path_prefix`
   (``/v2/quay.io/team/app/...``). containers/image clients (podman, CRI-O, skopeo, buildah) send no
   ``ns``, but a registries.conf mirror ``location`` may carry a path, which they put in front of every
   repository name: ``p2pdist configure podman`` writes ``location = "127.0.0.1:65001/quay.io"``.
3. Docker's ``registry-mirrors``, which apply to docker.io names only and send neither: a request
   from the Docker engine (its user agent starts with ``docker/``) goes to ``mirror.default_upstream``.

Anything else is refused. Falling back to the default for, say, a podman whose registries.conf has a
bare mirror location would answer ``quay.io/x`` with ``docker.io/x``: the wrong image, silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..core.names import InvalidName, check_repository, path_prefix
from .errors import MirrorError

if TYPE_CHECKING:
    from ..config import AgentConfig, Upstream

DOCKER_ENGINE_AGENT = "docker/"


@dataclass(frozen=True)
class Route:
    upstream: Upstream
    repo: str  # the repository name at the upstream
    name: str  # the repository name as the client wrote it (with the prefix, if any)
    by_ns: bool  # containerd: the upstream's own auth challenge goes back unchanged

    @property
    def registry(self) -> str:
        return self.upstream.registry


def allowed_upstream(config: AgentConfig, registry: str) -> Upstream:
    up = config.upstream(registry)
    if up is None:
        raise MirrorError(403, "DENIED", f"registry {registry[:100]!r} is not an upstream of this mirror "
                                         "(add it with --upstream or [[upstream]] in the agent config)")
    return up


def resolve(config: AgentConfig, name: str, ns: str | None, user_agent: str) -> Route:
    """The route of repository ``name`` (as in the request path); MirrorError when none is exact."""
    try:
        check_repository(name)
    except InvalidName as e:
        raise MirrorError(400, "NAME_INVALID", str(e)) from None
    if ns:
        return Route(allowed_upstream(config, ns), name, name, by_ns=True)
    first, _, rest = name.partition("/")
    if rest:
        for up in config.upstreams:
            if path_prefix(up.registry) == first:
                return Route(up, rest, name, by_ns=False)
    default = config.mirror.default_upstream
    if user_agent.startswith(DOCKER_ENGINE_AGENT) and default:
        return Route(allowed_upstream(config, default), name, name, by_ns=False)
    prefixes = ", ".join(path_prefix(u.registry) for u in config.upstreams) or "none configured"
    raise MirrorError(404, "NAME_UNKNOWN",
                      f"cannot tell which registry {name[:100]!r} belongs to: name it with ?ns=REGISTRY "
                      "(containerd) or with the registry as the first path component, as a registries.conf "
                      "mirror location HOST:PORT/REGISTRY does (`p2pdist configure podman` writes it). "
                      f"This mirror's prefixes: {prefixes}")
