"""Agent configuration: defaults < TOML file < P2PDIST_* environment < command-line flags.

Every field has a default that works on one machine with no config at all; the comments here are
the reference documentation for each setting (``p2pdist daemon --help`` points at them).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import socket
import tomllib
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.names import path_prefix
from .errors import P2pdistError


class ConfigError(P2pdistError, ValueError):
    """A configuration value that cannot be used; the message says which and why."""


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/p2pdist")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "p2pdist"


@dataclass(frozen=True)
class Upstream:
    """An origin registry the agent may fetch from, with optional credentials."""

    registry: str  # host[:port], as it appears in image references (and in containerd's ?ns=)
    endpoint: str = ""  # host[:port] to connect to; empty = registry (docker.io: registry-1.docker.io)
    username: str = ""
    password: str = ""
    plain_http: bool = False  # speak http:// instead of https:// (only when configured: never guessed)
    skip_verify: bool = False  # accept any TLS certificate (insecure registries, only when configured)

    @property
    def host(self) -> str:
        if self.endpoint:
            return self.endpoint
        return "registry-1.docker.io" if self.registry == "docker.io" else self.registry


@dataclass(frozen=True)
class MirrorConfig:
    """The local registry mirror that Docker, containerd and podman pull through."""

    listen: str = "127.0.0.1:65001"  # empty = no mirror. Loopback by default: not an open proxy.
    # Where the Docker engine's registry-mirrors requests go (docker.io names only, no ?ns=, no path
    # prefix). Empty = refuse them. Other clients must name the registry (see mirror/routes.py).
    default_upstream: str = "docker.io"
    tag_ttl: float = 600.0  # seconds a resolved tag may be served while the upstream is unreachable
    auth_ttl: float = 300.0  # seconds an upstream's yes for (credential, repository) is trusted
    public_ttl: float = 3600.0  # seconds an anonymous yes (a public repository) is trusted
    max_requests: int = 512  # concurrent mirror requests before answering 429 TOOMANYREQUESTS


@dataclass(frozen=True)
class Limits:
    """Rates, sizes and concurrency in one place."""

    # Piece requests in flight to one peer. Two: a holder of a new piece then serves several askers
    # at once instead of one asker taking all its slots, so the piece reaches more nodes per hop.
    peer_concurrency: int = 2
    # Piece bytes being fetched at once, across peers: at least this, and at least one piece per
    # upload slot (core.selection.inflight_budget says why). Few: transfers share a link, so every
    # piece in flight slows the others, and a new piece's first copies must arrive fast for the
    # swarm to spread it. Simulator, 100 nodes x 1 GiB in 4 MiB pieces: 96 MiB in flight and 64
    # upload slots took 2.2x the chunked bound; 8 MiB and 2 slots 1.05x (1.09x at 10,000 nodes).
    inflight_bytes: int = 8 << 20
    # Peers we dial per blob (inbound ones come on top). More neighbours see a rare piece sooner and
    # offer more holders with a free slot: simulator, 1,000 nodes, 16 -> 32 took 0.05-0.1 s off.
    neighbours: int = 32
    origin_concurrency: int = 4  # parallel Range requests to the origin
    # Concurrent piece uploads served before answering 503 (busy), and the fewest pieces fetched at
    # once (inflight_bytes). Few: transfers share a link, so a piece shared by k uploads reaches its
    # next holders k piece-times late, and a new piece's holders grow (k+1)-fold every k
    # piece-times: 4x per 3 with 3 slots, 3x per 2 with 2. Two still keep the uplink full (askers
    # hear our free slots through ROOM and come back as soon as one frees). Simulator, 1 GiB in
    # 4 MiB pieces: 96 MiB in flight and 64 slots took 2.2x the chunked bound at 100 nodes; 3 slots
    # and 12 MiB 1.08x at 1,000 and 1.11x at 10,000 nodes; 2 slots and 8 MiB 1.06x and 1.09x.
    upload_slots: int = 2
    piece_timeout: float = 30.0  # seconds for one piece from a peer before trying elsewhere
    stall_timeout: float = 10.0  # seconds of a silent swarm before fetching the rest from the origin directly
    download_rate: int = 0  # bytes/s this node takes from peers and origin together; 0 = unlimited
    # Pinned piece size, used only without a tracker: a tracker's piece size always wins, so every node of
    # a swarm cuts a blob the same way (core.layout.decide_layout). 0 = the layout rule (README "Piece size").
    piece_size: int = 0


@dataclass(frozen=True)
class Faults:
    """Fault injection for tests and drills. Never enable in production."""

    corrupt_uploads: bool = False  # flip a byte in every piece this node uploads


@dataclass(frozen=True)
class AgentConfig:
    data_dir: Path = field(default_factory=_default_data_dir)
    node_id: str = ""  # empty = hostname plus a random suffix, kept in data_dir/node-id
    tracker: str = "http://127.0.0.1:7070"  # empty = no tracker: every piece from the origin
    # Shared secret for peers and tracker. Empty = a node on its own: peers and tracker on loopback
    # only, and the peer port takes only this node's own secret (data_dir/node-secret), so no peers.
    cluster_token: str = ""
    peer_listen: str = "127.0.0.1:65003"  # peer data and control endpoint
    peer_advertise: str = ""  # address other peers dial; empty = peer_listen
    api_listen: str = "127.0.0.1:65002"  # local control API and /metrics (p2pdist fetch talks to it)
    zone: str = ""
    rack: str = ""
    capacity: int = 0  # bytes of complete blobs kept; 0 = unlimited. TOML accepts "50GiB".
    log_level: str = "info"
    upstreams: tuple[Upstream, ...] = (Upstream("docker.io"),)  # the allow-list of origins
    mirror: MirrorConfig = field(default_factory=MirrorConfig)
    limits: Limits = field(default_factory=Limits)
    faults: Faults = field(default_factory=Faults)

    @property
    def advertise(self) -> str:
        return self.peer_advertise or self.peer_listen

    def upstream(self, registry: str) -> Upstream | None:
        """The configured upstream for a registry name; None if it is not on the allow-list."""
        for up in self.upstreams:
            if up.registry == registry:
                return up
        return None

    def check(self) -> AgentConfig:
        for name in ("peer_listen", "api_listen"):
            split_hostport(getattr(self, name), name)
        if self.mirror.listen:
            split_hostport(self.mirror.listen, "mirror.listen")
        if self.cluster_token == "" and not is_loopback(split_hostport(self.peer_listen, "peer_listen")[0]):
            raise ConfigError(
                "peer_listen is not a loopback address but no cluster_token is set: set "
                "P2PDIST_CLUSTER_TOKEN (the same secret on every node and the tracker)"
            )
        prefixes: dict[str, str] = {}
        for up in self.upstreams:
            # The mirror routes containers/image clients by this first path component (mirror/routes.py).
            prefix = path_prefix(up.registry)
            if prefix in prefixes:
                raise ConfigError(f"upstreams {prefixes[prefix]} and {up.registry} share the mirror path prefix "
                                  f"{prefix!r}: the mirror could not tell their images apart")
            prefixes[prefix] = up.registry
        if self.limits.piece_size and self.limits.piece_size & (self.limits.piece_size - 1):
            raise ConfigError(f"limits.piece_size must be a power of two, got {self.limits.piece_size}")
        return self


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine only (for the agent and the tracker alike). A host name other
    than localhost is not: where it resolves cannot be known here, so it counts as exposed."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_hostport(value: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str | int) -> int:
    """'50GiB', '512M', '1048576' -> bytes (binary units)."""
    if isinstance(value, int):
        return value
    m = _SIZE.fullmatch(str(value))
    if not m:
        raise ConfigError(f"not a size: {value!r} (use e.g. 512MiB, 50GiB)")
    unit = (m.group(2) or "").upper()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


def _coerce(name: str, value: Any, target: Any) -> Any:
    kind = type(target)
    if isinstance(target, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}: expected true/false, got {value!r}")
        return bool(value)
    if isinstance(target, Path):
        return Path(value).expanduser()
    if name.endswith("capacity") or name.endswith("bytes") or name.endswith("piece_size") or name.endswith("_rate"):
        return parse_size(value)
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {kind.__name__}, got {value!r}") from None


def _apply(obj: Any, values: dict[str, Any], where: str) -> Any:
    changes = {}
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        key = key.replace("-", "_")
        if key not in fields:
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {', '.join(sorted(fields))})")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: [{key}] must be a table")
            changes[key] = _apply(current, value, f"{where}.{key}")
        elif key == "upstreams":
            changes[key] = tuple(_upstream(u, where) for u in value)
        else:
            changes[key] = _coerce(f"{where}.{key}", value, current)
    return dataclasses.replace(obj, **changes)


def parse_upstream_spec(spec: str) -> Upstream:
    """``[http://|https://]REGISTRY[=ENDPOINT]``: http:// marks a plain-HTTP registry."""
    plain = spec.startswith("http://")
    rest = spec.removeprefix("http://").removeprefix("https://").rstrip("/")
    registry, _, endpoint = rest.partition("=")
    if not registry or "/" in registry:
        raise ConfigError(f"upstream {spec!r}: expected [http://|https://]REGISTRY[=ENDPOINT], e.g. http://127.0.0.1:5000")
    return Upstream(registry, endpoint=endpoint, plain_http=plain)


def merge_upstreams(base: tuple[Upstream, ...], extra: list[Upstream]) -> tuple[Upstream, ...]:
    names = {u.registry for u in extra}
    return tuple(u for u in base if u.registry not in names) + tuple(extra)


def _upstream(value: Any, where: str) -> Upstream:
    if not isinstance(value, dict) or "registry" not in value:
        raise ConfigError(f"{where}: each [[upstream]] needs at least registry = \"host[:port]\"")
    return _apply(Upstream(value["registry"]), value, f"{where}.upstream")


def _env_values(environ: dict[str, str], prefix: str, obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        current = getattr(obj, f.name)
        if dataclasses.is_dataclass(current):
            sub = _env_values(environ, f"{prefix}{f.name.upper()}_", current)
            if sub:
                out[f.name] = sub
        elif f.name != "upstreams" and f"{prefix}{f.name.upper()}" in environ:
            out[f.name] = environ[f"{prefix}{f.name.upper()}"]
    return out


def load(path: Path | None = None, environ: dict[str, str] | None = None,
         overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Build the agent config from a TOML file, the environment and flag overrides."""
    environ = dict(os.environ if environ is None else environ)
    cfg = AgentConfig()
    if path is None and environ.get("P2PDIST_CONFIG"):
        path = Path(environ["P2PDIST_CONFIG"])
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"config file {path}: {e}") from None
        if "upstream" in data:
            data["upstreams"] = data.pop("upstream")
        cfg = _apply(cfg, data, str(path))
    cfg = _apply(cfg, _env_values(environ, "P2PDIST_", cfg), "environment")
    specs = [s for s in environ.get("P2PDIST_UPSTREAMS", "").split(",") if s.strip()]
    overrides = dict(overrides or {})
    specs += overrides.pop("upstream", None) or []
    if specs:
        cfg = dataclasses.replace(cfg, upstreams=merge_upstreams(cfg.upstreams, [parse_upstream_spec(s.strip())
                                                                              for s in specs]))
    if overrides:
        cfg = _apply(cfg, {k: v for k, v in overrides.items() if v is not None}, "flags")
    return cfg.check()


def node_id(cfg: AgentConfig) -> str:
    """The configured node id, or a stable one generated once and kept in the data dir."""
    if cfg.node_id:
        return cfg.node_id
    path = cfg.data_dir / "node-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(value + "\n")
        tmp.replace(path)
        return value
