"""Agent configuration: defaults < TOML file < P2PDIST_* environment < command-line flags.

Every field has a default that works on one machine with no config at all; the comments here are
the reference documentation for each setting (``p2pdist daemon --help`` points at them). The
models are validated (types, bounds, cross-field rules) however they are built; ``load`` layers the
sources through ``p2pdist.settings``.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from .core.names import path_prefix
from .settings import ConfigError, Settings, Source, env_layer, load_settings, read_toml, replace

__all__ = ["AgentConfig", "ConfigError", "Faults", "Limits", "MirrorConfig", "Upstream", "load", "parse_size"]

LOG_LEVELS = ("debug", "info", "warning", "error")
LogLevel = Literal["debug", "info", "warning", "error"]


def _default_data_dir() -> Path:
    if os.geteuid() == 0:
        return Path("/var/lib/p2pdist")
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local/share")) / "p2pdist"


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(value: str | int) -> int:
    """'50GiB', '512M', '1048576' -> bytes (binary units)."""
    if isinstance(value, bool):  # TOML `capacity = true` is a mistake, not one byte
        raise ConfigError(f"not a size: {value!r} (use e.g. 512MiB, 50GiB)")
    if isinstance(value, int):
        return value
    m = _SIZE.fullmatch(str(value))
    if not m:
        raise ConfigError(f"not a size: {value!r} (use e.g. 512MiB, 50GiB)")
    unit = (m.group(2) or "").upper()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


def _size(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return parse_size(value)
        except ConfigError:
            raise ValueError("not a size (use bytes, or e.g. 512MiB, 50GiB)") from None
    return value  # ints pass; floats and the rest are left to the int check


# A byte count: an integer, or a string with a binary unit ("50GiB", "512M").
Size = Annotated[int, BeforeValidator(_size), Field(ge=0)]


def split_hostport(value: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(f"{what} must be HOST:PORT, got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def _hostport(value: str) -> str:
    try:
        split_hostport(value)
    except ConfigError:
        raise ValueError("must be HOST:PORT, e.g. 127.0.0.1:65001 or [::1]:65001") from None
    return value


HostPort = Annotated[str, BeforeValidator(lambda v: _hostport(v) if isinstance(v, str) else v)]
OptionalHostPort = Annotated[str, BeforeValidator(lambda v: _hostport(v) if isinstance(v, str) and v else v)]


class Upstream(Settings):
    """An origin registry the agent may fetch from, with optional credentials."""

    registry: str = Field(min_length=1)  # host[:port], as in image references (and containerd's ?ns=)
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


class MirrorConfig(Settings):
    """The local registry mirror that Docker, containerd and podman pull through."""

    listen: OptionalHostPort = "127.0.0.1:65001"  # empty = no mirror. Loopback by default: not an open proxy.
    # Where the Docker engine's registry-mirrors requests go (docker.io names only, no ?ns=, no path
    # prefix). Empty = refuse them. Other clients must name the registry (see mirror/routes.py).
    default_upstream: str = "docker.io"
    tag_ttl: float = Field(600.0, ge=0)  # seconds a resolved tag may be served while the upstream is unreachable
    auth_ttl: float = Field(300.0, ge=0)  # seconds an upstream's yes for (credential, repository) is trusted
    public_ttl: float = Field(3600.0, ge=0)  # seconds an anonymous yes (a public repository) is trusted
    max_requests: int = Field(512, ge=1)  # concurrent mirror requests before answering 429 TOOMANYREQUESTS


class Limits(Settings):
    """Rates, sizes and concurrency in one place."""

    # Piece requests in flight to one peer. Two: a holder of a new piece then serves several askers
    # at once instead of one asker taking all its slots, so the piece reaches more nodes per hop.
    peer_concurrency: int = Field(2, ge=1)
    # Piece bytes being fetched at once, across peers: at least this, and at least one piece per
    # upload slot (core.selection.inflight_budget says why). Few: transfers share a link, so every
    # piece in flight slows the others, and a new piece's first copies must arrive fast for the
    # swarm to spread it. Simulator, 100 nodes x 1 GiB in 4 MiB pieces: 96 MiB in flight and 64
    # upload slots took 2.2x the chunked bound; 8 MiB and 2 slots 1.05x (1.09x at 10,000 nodes).
    inflight_bytes: Size = Field(8 << 20, ge=1)
    # Peers we dial per blob (inbound ones come on top). More neighbours see a rare piece sooner and
    # offer more holders with a free slot: simulator, 1,000 nodes, 16 -> 32 took 0.05-0.1 s off.
    neighbours: int = Field(32, ge=1)
    origin_concurrency: int = Field(4, ge=1)  # parallel Range requests to the origin
    # Concurrent piece uploads served before answering 503 (busy), and the fewest pieces fetched at
    # once (inflight_bytes). Few: transfers share a link, so a piece shared by k uploads reaches its
    # next holders k piece-times late, and a new piece's holders grow (k+1)-fold every k
    # piece-times: 4x per 3 with 3 slots, 3x per 2 with 2. Two still keep the uplink full (askers
    # hear our free slots through ROOM and come back as soon as one frees). Simulator, 1 GiB in
    # 4 MiB pieces: 96 MiB in flight and 64 slots took 2.2x the chunked bound at 100 nodes; 3 slots
    # and 12 MiB 1.08x at 1,000 and 1.11x at 10,000 nodes; 2 slots and 8 MiB 1.06x and 1.09x.
    upload_slots: int = Field(2, ge=1)
    # Pass a piece on to neighbours from its first verified 256 KiB block while the rest of it arrives
    # (core.blocks: every block is checked before it goes on), instead of once all of it is here.
    # A piece then spreads one hop per block-time, not per piece-time. Simulator, 1 GiB in 4 MiB
    # pieces: 1.029, 1.032, 1.037 x the chunked bound at 100, 1,000, 10,000 nodes, against 1.054,
    # 1.072, 1.087 store and forward; shaped benchmark, 16 nodes: 61.9 s against 63.7 s (README).
    cut_through: bool = True
    # Piece requests that may wait for a busy upload slot, and for how long, before a 503. A slot
    # then starts its next piece at once, without the 503, back-off and new request that cost one
    # round trip through the asker's loaded uplink. Shaped benchmark, 16 nodes: 503s 9,000-9,800
    # -> 1,000-1,200 per run, agent CPU 95-98 s -> 72-83 s, time unchanged. The wait stays below the
    # asker's shortest piece deadline (1 s, core.download.MIN_PIECE_TIMEOUT); 0 answers 503 at once.
    upload_line: int = Field(2, ge=0)
    upload_line_wait: float = Field(0.5, ge=0)
    # The longest one piece request to a peer may take; the machine's deadlines adapt below it to the
    # pieces that arrive (8 x their moving average, at least 1 s: p2pdist.core.download).
    piece_timeout: float = Field(30.0, gt=0)
    # Every server (peer port, API, mirror) closes a connection idle, or still sending its request,
    # after idle_timeout seconds, and refuses connections past max_connections at once (p2pdist.serving).
    idle_timeout: float = Field(15.0, gt=0)
    max_connections: int = Field(512, ge=1)
    # seconds of a silent swarm before fetching the rest from the origin directly
    stall_timeout: float = Field(10.0, gt=0)
    # Seconds a new download asks the tracker again (after 0.5 s, doubled per try) before fetching its
    # blob from the origin alone, counted from the failure of the first of the agent's requests failing
    # in a row (or of its own first try, if the tracker answers others meanwhile): at
    # once, every node of a rollout that began while the tracker restarted (or could not answer for a
    # moment) took the whole blob from the origin. While the tracker stays down, a download tries once.
    tracker_patience: float = Field(5.0, ge=0)
    # Seconds an origin run asks a failing origin again (unreachable, timing out, 5xx, 408, 429) from its
    # first failure without progress, before the download fails: a registry restarting mid-pull.
    origin_patience: float = Field(20.0, ge=0)
    # Seconds of waiting on an origin body in which it must move 32 KiB (agent.origin.StallWatch):
    # less, and the run is asked again from where it stopped, within origin_patience. A response
    # that stopped mid-body held its lease for the 30 s read timeout (one that trickled, for good)
    # while the other nodes waited for those pieces until their stall_timeout sent them to the
    # origin for everything: 3 nodes x 24 MiB, 10-30 s and 1.125x egress instead of 5 s and 1.0x.
    # Below stall_timeout, so the holder asks again before the others give up on the swarm.
    origin_stall_timeout: float = Field(5.0, gt=0)
    download_rate: Size = 0  # bytes/s this node takes from peers and origin together; 0 = unlimited
    # Pinned piece size, used only without a tracker: a tracker's piece size always wins, so every node of
    # a swarm cuts a blob the same way (core.layout.decide_layout). 0 = the layout rule (README "Piece size").
    piece_size: Size = 0

    @field_validator("piece_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if value & (value - 1):
            raise ValueError("must be a power of two (e.g. 4MiB), or 0 for the layout rule")
        return value


class Faults(Settings):
    """Fault injection for tests and drills. Never enable in production."""

    corrupt_uploads: bool = False  # flip a byte in every piece this node uploads


# The cluster secret `p2pdist kubernetes render` writes when it is given none: known to everyone who
# reads this file, so agent and tracker refuse it.
PLACEHOLDER_TOKEN = "replace-me-with-a-long-random-secret"


def refuse_placeholder(value: str) -> str:
    if value == PLACEHOLDER_TOKEN:
        raise ValueError("is the placeholder from the rendered manifests, which anyone can read: create the "
                         "Secret with a random token (deploy/README.md, step 2)")
    return value


def _tracker_url(value: Any) -> Any:
    if isinstance(value, str):
        urls = [u.strip() for u in value.split(",") if u.strip()]
        for url in urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"must be a URL with a scheme, e.g. http://tracker:7070 ({url!r} is not; several: "
                                 "comma-separated; empty for no tracker)")
        return ",".join(urls)
    return value


class AgentConfig(Settings):
    data_dir: Path = Field(default_factory=_default_data_dir)
    node_id: str = ""  # empty = hostname plus a random suffix, kept in data_dir/node-id
    # The tracker's URL; several (comma-separated) for tracker replicas sharing one Redis: the agent
    # keeps to one and moves to the next when it stops answering. Empty = no tracker: every piece
    # from the origin.
    tracker: Annotated[str, BeforeValidator(_tracker_url)] = "http://127.0.0.1:7070"
    # This node's identity: its credential from `p2pdist certs issue` (the file, or the text itself).
    # It names the node id; requests to the tracker and peers are signed with it (agent.identity).
    node_credential: str = ""
    # The cluster secret itself: the node derives its own credential from it (a demo or a trusted
    # fleet: whoever holds it can speak as any node). Without either = a node on its own: peers and
    # tracker on loopback only, and the peer port takes only this node's own secret
    # (data_dir/node-secret), so no peers.
    cluster_token: Annotated[str, AfterValidator(refuse_placeholder)] = ""
    # TLS: the cluster CA that tracker and peer certificates are checked against (an https:// tracker
    # without it is checked against the system's CAs), and this node's peer-port certificate. With
    # tls_cert set the peer port serves HTTPS and peers are dialed with https; every node alike.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    peer_listen: HostPort = "127.0.0.1:65003"  # peer data and control endpoint
    peer_advertise: OptionalHostPort = ""  # address other peers dial; empty = peer_listen
    api_listen: HostPort = "127.0.0.1:65002"  # local control API and /metrics (p2pdist fetch talks to it)
    # A second listener with only GET /metrics, /healthz and /readyz (nothing that fetches or writes),
    # safe to expose to Prometheus and probes without a token, e.g. "0.0.0.0:9402". Empty = off.
    metrics_listen: OptionalHostPort = ""
    zone: str = ""
    rack: str = ""
    capacity: Size = 0  # bytes of complete blobs kept; 0 = unlimited. TOML accepts "50GiB".
    log_level: LogLevel = "info"
    upstreams: tuple[Upstream, ...] = (Upstream(registry="docker.io"),)  # the allow-list of origins
    mirror: MirrorConfig = Field(default_factory=MirrorConfig)
    limits: Limits = Field(default_factory=Limits)
    faults: Faults = Field(default_factory=Faults)

    @field_validator("data_dir")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def advertise(self) -> str:
        return self.peer_advertise or self.peer_listen

    @property
    def peer_scheme(self) -> str:
        """How peers are dialed: every node of a cluster serves its peer port alike."""
        return "https" if self.tls_cert is not None else "http"

    def upstream(self, registry: str) -> Upstream | None:
        """The configured upstream for a registry name; None if it is not on the allow-list."""
        for up in self.upstreams:
            if up.registry == registry:
                return up
        return None

    @model_validator(mode="after")
    def _consistent(self) -> AgentConfig:
        if not (self.cluster_token or self.node_credential) and not is_loopback(split_hostport(self.peer_listen)[0]):
            raise ValueError(
                "peer_listen is not a loopback address but this node has no identity: set node_credential "
                "(P2PDIST_NODE_CREDENTIAL, from `p2pdist certs issue`) or the cluster secret (P2PDIST_CLUSTER_TOKEN)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (HTTPS peer port) or neither")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("tls_cert needs tls_ca: peers dialed with https are checked against the cluster CA")
        prefixes: dict[str, str] = {}
        for up in self.upstreams:
            # The mirror routes containers/image clients by this first path component (mirror/routes.py).
            prefix = path_prefix(up.registry)
            if prefix in prefixes:
                raise ValueError(f"upstreams {prefixes[prefix]} and {up.registry} share the mirror path prefix "
                                 f"{prefix!r}: the mirror could not tell their images apart")
            prefixes[prefix] = up.registry
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


def parse_upstream_spec(spec: str) -> Upstream:
    """``[http://|https://]REGISTRY[=ENDPOINT]``: http:// marks a plain-HTTP registry."""
    plain = spec.startswith("http://")
    rest = spec.removeprefix("http://").removeprefix("https://").rstrip("/")
    registry, _, endpoint = rest.partition("=")
    if not registry or "/" in registry:
        raise ConfigError(f"upstream {spec!r}: expected [http://|https://]REGISTRY[=ENDPOINT], e.g. http://127.0.0.1:5000")
    return Upstream(registry=registry, endpoint=endpoint, plain_http=plain)


def merge_upstreams(base: tuple[Upstream, ...], extra: list[Upstream]) -> tuple[Upstream, ...]:
    names = {u.registry for u in extra}
    return tuple(u for u in base if u.registry not in names) + tuple(extra)


def _file_layer(values: dict[str, Any]) -> dict[str, Any]:
    if "upstream" in values:  # TOML spells the list as [[upstream]] tables
        values = {**values, "upstreams": values["upstream"]}
        del values["upstream"]
    return values


def load(path: Path | None = None, environ: Mapping[str, str] | None = None,
         overrides: dict[str, Any] | None = None) -> AgentConfig:
    """Build the agent config from a TOML file, the environment and flag overrides."""
    environ = dict(os.environ if environ is None else environ)
    if path is None and environ.get("P2PDIST_CONFIG"):
        path = Path(environ["P2PDIST_CONFIG"])
    sources: list[Source] = []
    if path is not None:
        sources.append(Source(str(path), _file_layer(read_toml(path))))
    # P2PDIST_UPSTREAMS is a comma-separated list of specs (like --upstream), not a field: the
    # upstreams it names are merged into the file's list below instead of replacing it.
    specs = [s for s in environ.pop("P2PDIST_UPSTREAMS", "").split(",") if s.strip()]
    sources.append(Source("the environment", env_layer(AgentConfig, environ, "P2PDIST_"), env_prefix="P2PDIST_"))
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    specs += overrides.pop("upstream", None) or []
    sources.append(Source("the command line", overrides, flags=True))
    cfg = load_settings(AgentConfig, sources)
    if specs:
        extra = [parse_upstream_spec(s.strip()) for s in specs]
        cfg = replace(cfg, upstreams=merge_upstreams(cfg.upstreams, extra))
    return cfg


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
