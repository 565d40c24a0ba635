"""Tracker configuration: one frozen settings model, loaded defaults < TOML file < environment < flags.

Every field can be set in a TOML file (top level or a ``[tracker]`` table), as the environment
variable ``P2PDIST_TRACKER_<FIELD>`` (upper case), or by a command-line flag where one exists.
``listen = "HOST:PORT"`` (env ``P2PDIST_TRACKER_LISTEN``) sets host and port together. The loader
is the agent's (``p2pdist.settings``): one set of rules and error messages for both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from p2pdist.config import LOG_LEVELS, ConfigError, Size, is_loopback, refuse_placeholder
from p2pdist.core.handout import HANDOUTS
from p2pdist.core.layout import MAX_PIECE_SIZE, MIN_PIECE_SIZE, TARGET_PIECES, PieceRule
from p2pdist.core.wire import MAX_LIST
from p2pdist.settings import Settings, Source, env_layer, load_settings, read_toml

__all__ = ["ENV_PREFIX", "LOG_LEVELS", "ConfigError", "TrackerConfig", "check_exposure", "load", "parse_listen"]

ENV_PREFIX = "P2PDIST_TRACKER_"


class TrackerConfig(Settings):
    # Where to listen. Loopback by default: exposing the tracker is a deliberate act.
    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(7070, ge=0, le=65535)
    # The cluster secret. Agents prove who they are with node credentials derived from it (HMAC-signed
    # requests, p2pdist.core.identity); the tracker signs their peer tickets with a key derived from it.
    # Prometheus may scrape /metrics with "Authorization: Bearer <secret>" (use TLS beyond loopback).
    # Empty = authentication off, which is only allowed on loopback unless `insecure` is set.
    cluster_token: Annotated[str, AfterValidator(refuse_placeholder)] = ""
    insecure: bool = False
    # Serve HTTPS with this certificate and key (`p2pdist certs issue tracker --host ...`).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Keep the state in this Redis (redis://HOST:PORT/DB, rediss:// for TLS) instead of in memory:
    # several tracker replicas on one Redis serve one cluster, and any of them may go away.
    redis: str = ""
    # Seconds a peer ticket is good for; agents renew at half-life through their announces. A banned
    # node is off every peer port within this (and is handed out to nobody at once); agents keep
    # trading through a tracker outage for at least half of it.
    ticket_ttl: float = Field(3600.0, ge=60.0, le=86400.0)
    # A peer that has not announced for this long is no longer handed out (agents announce every
    # few seconds, so 30 s survives a few lost announces).
    peer_ttl: float = Field(30.0, gt=0)
    # An origin lease with no reported progress for this long goes back to the pool for another node.
    lease_ttl: float = Field(10.0, gt=0)
    # Pieces per lease. One: each fresh piece lands on a different node, so more uplinks spread new
    # pieces at once (simulator: 1,000 nodes 0.08 s, 3,000 nodes 0.09 s sooner than 4-piece leases),
    # and the first node to ask does not take a long run. It costs a Range request per piece.
    lease_pieces: int = Field(1, ge=1)
    # Pieces per lease for a node that is the blob's only downloader: nobody to spread pieces to, and
    # fewer announce round trips between Range requests (p2pdist.core.leases.LeaseBook).
    solo_lease_pieces: int = Field(8, ge=1, le=1024)
    # Leases one node may hold per blob at once: its origin streams (4) + 1 spare. The wire reply
    # carries at most 64 leases.
    leases_per_node: int = Field(5, ge=1, le=64)
    # Origin streams per blob at once, shared among the nodes still downloading (at least one each):
    # the origin's pieces then land on many nodes whose uplinks spread them in parallel, and the
    # origin sees a bounded number of streams per blob. Each lease taker also holds one spare lease,
    # queued behind its streams (core.leases.SPARE_LEASES), so a stream goes straight on to its next
    # piece. 0 = no cap (every node gets leases_per_node).
    origin_streams: int = Field(8, ge=0, le=4096)
    # Open those streams one at a time: one lease, then one more per piece digested. Streams share
    # the origin's uplink, so opening all at once delays every first piece (and the whole swarm).
    origin_slow_start: bool = True
    handout_size: int = Field(16, ge=1, le=1024)  # peers per announce reply (the wire carries 1024)
    handout_policy: str = "locality"  # a name from p2pdist.core.handout.HANDOUTS
    announce_interval: float = Field(5.0, gt=0)  # seconds between announces in steady state
    # While some pieces still have no digest and leases are out, announce faster so digests flow.
    busy_interval: float = Field(1.0, gt=0)
    digests_per_reply: int = Field(4096, ge=1, le=MAX_LIST)  # page size of the digest log; ~40 bytes each
    max_blobs: int = Field(4096, ge=1)  # blobs tracked at once; idle ones are evicted first when full
    max_peers_per_blob: int = Field(16384, ge=1)  # peers kept per blob; handouts rank a bounded sample
    blob_ttl: float = Field(600.0, gt=0)  # a blob with no live peers is forgotten after this long
    max_blob_size: Size = 1 << 40  # 1 TiB: bounds the per-blob piece tables
    # Pieces over all tracked blobs (about a byte each in the piece tables): the tracker's memory
    # stays bounded whatever sizes nodes announce; past it, blobs only one node announces make room.
    max_tracked_pieces: int = Field(1 << 24, ge=1)
    # Piece size rule (see p2pdist.core.layout): smallest power of two from piece_min keeping the
    # blob at or below piece_target pieces, capped at piece_max. Agents adopt what the tracker says.
    piece_min: Size = Field(MIN_PIECE_SIZE, gt=0)
    piece_max: Size = Field(MAX_PIECE_SIZE, gt=0)
    piece_target: int = Field(TARGET_PIECES, ge=1)
    # Audits (tracker/service.py): a node's piece digests are published once another node's origin
    # copy of one of its pieces agreed; until then they are withheld. Off: every lease holder's and
    # seeder's digests are published at once, and one lying node can poison a blob for everyone.
    audits: bool = True
    # Unproven nodes that may hold origin leases of a blob at once (each one's first digest is
    # audited); the other leases go to proven nodes.
    probation_nodes: int = Field(2, ge=1, le=1024)
    ban_seconds: float = Field(3600.0, gt=0)  # how long a node the origin contradicted is refused
    max_nodes: int = Field(1 << 16, ge=1)  # nodes whose standing (proven, banned) is remembered
    # Connections idle, or still sending a request, are closed after idle_timeout seconds; past
    # max_connections at once new ones are refused (p2pdist.serving). Agents keep one each.
    idle_timeout: float = Field(30.0, gt=0)
    max_connections: int = Field(16384, ge=1)
    # Announces per second to stay under: above it, replies ask agents for more room between their
    # announces (tracker/pacer.py). Unset: 4,500 in memory, 3,000 per replica on Redis (what one
    # core answers well, benchmarks/bench_tracker.py); 0 = no pacing.
    announce_budget: int | None = Field(None, ge=0)
    # Agents give up on an announce after this long (theirs: 5 s). Under overload, one that waited
    # longer is dropped unanswered instead of worked on for nobody (tracker/shedding.py).
    client_timeout: float = Field(5.0, gt=0)
    # Seconds between agents' polls for preheat orders (tracker/preheat.py): a job reaches its nodes
    # within this. The polls are also how the tracker knows which nodes are alive to be picked.
    preheat_poll: float = Field(15.0, ge=0.2, le=3600)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("handout_policy")
    @classmethod
    def _known_policy(cls, value: str) -> str:
        if value not in HANDOUTS:
            raise ValueError(f"handout_policy {value!r} is unknown; choose one of {', '.join(HANDOUTS)}")
        return value

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"redis {value!r} must be a URL such as redis://127.0.0.1:6379/0 (or empty: in memory)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrackerConfig:
        if self.blob_ttl < self.peer_ttl:
            raise ValueError("blob_ttl must be >= peer_ttl (a blob outlives its peers)")
        if self.piece_min > self.piece_max:
            raise ValueError(f"piece sizes need piece_min <= piece_max, got {self.piece_min} and {self.piece_max}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both (HTTPS) or neither (plain HTTP)")
        return self

    @property
    def piece_rule(self) -> PieceRule:
        return PieceRule(self.piece_target, self.piece_min, self.piece_max)

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


FIELDS = TrackerConfig.model_fields


def parse_listen(text: str) -> tuple[str, int]:
    """'HOST:PORT' or '[IPv6]:PORT' -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"listen address {text!r} must be HOST:PORT, e.g. 127.0.0.1:7070 or [::1]:7070")
    return host, int(port)


def check_exposure(config: TrackerConfig) -> None:
    """Refuse an unauthenticated tracker on a reachable address unless asked for explicitly."""
    if config.cluster_token or config.insecure or is_loopback(config.host):
        return
    raise ConfigError(
        f"refusing to listen on {config.listen} without a cluster token: anyone who can reach it could "
        f"announce and steer origin leases. Set --cluster-token or {ENV_PREFIX}CLUSTER_TOKEN, "
        "or pass --insecure if this network is already trusted."
    )


def _split_listen(values: dict[str, Any]) -> dict[str, Any]:
    if "listen" not in values:
        return values
    values = dict(values)
    values["host"], values["port"] = parse_listen(str(values.pop("listen")))
    return values


def load(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> TrackerConfig:
    """Defaults < TOML file (argument, else env P2PDIST_TRACKER_CONFIG) < environment < flags."""
    env = os.environ if env is None else env
    config_file = config_file or env.get(f"{ENV_PREFIX}CONFIG") or None
    sources: list[Source] = []
    if config_file:
        sources.append(Source(str(config_file), read_toml(config_file, table="tracker")))
    values = env_layer(TrackerConfig, env, ENV_PREFIX)
    if f"{ENV_PREFIX}LISTEN" in env:  # not a field: host and port together
        values["listen"] = env[f"{ENV_PREFIX}LISTEN"]
    sources.append(Source("the environment", values, env_prefix=ENV_PREFIX))
    sources.append(Source("the command line", {k: v for k, v in (flags or {}).items() if v is not None}, flags=True))
    return load_settings(TrackerConfig, sources, prepare=_split_listen)
