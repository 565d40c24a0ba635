"""Tracker configuration: one frozen dataclass, loaded defaults < TOML file < environment < flags.

Every field can be set in a TOML file (top level or a ``[tracker]`` table), as the environment
variable ``P2PDIST_TRACKER_<FIELD>`` (upper case), or by a command-line flag where one exists.
``listen = "HOST:PORT"`` (env ``P2PDIST_TRACKER_LISTEN``) sets host and port together.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pdist.config import ConfigError, is_loopback
from p2pdist.core.handout import HANDOUTS
from p2pdist.core.layout import MAX_PIECE_SIZE, MIN_PIECE_SIZE, TARGET_PIECES, PieceRule
from p2pdist.core.wire import MAX_LIST

ENV_PREFIX = "P2PDIST_TRACKER_"
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class TrackerConfig:
    # Where to listen. Loopback by default: exposing the tracker is a deliberate act.
    host: str = "127.0.0.1"
    port: int = 7070
    # Shared secret every agent sends as "Authorization: Bearer <token>". Empty = authentication off,
    # which is only allowed on loopback unless `insecure` is set.
    cluster_token: str = ""
    insecure: bool = False
    # A peer that has not announced for this long is no longer handed out (agents announce every
    # few seconds, so 30 s survives a few lost announces).
    peer_ttl: float = 30.0
    # An origin lease with no reported progress for this long goes back to the pool for another node.
    lease_ttl: float = 10.0
    # Pieces per lease. One: each fresh piece lands on a different node, so more uplinks spread new
    # pieces at once (simulator: 1,000 nodes 0.08 s, 3,000 nodes 0.09 s sooner than 4-piece leases),
    # and the first node to ask does not take a long run. It costs a Range request per piece.
    lease_pieces: int = 1
    # Pieces per lease for a node that is the blob's only downloader: nobody to spread pieces to, and
    # fewer announce round trips between Range requests (p2pdist.core.leases.LeaseBook).
    solo_lease_pieces: int = 8
    leases_per_node: int = 5  # leases one node may hold per blob at once: its origin streams (4) + 1 spare
    # Leases out at once per blob, shared among the nodes still downloading (at least one each): the
    # origin's pieces then land on many nodes whose uplinks spread them in parallel, and the origin
    # sees a bounded number of streams per blob. 0 = no cap (every node gets leases_per_node).
    origin_streams: int = 8
    # Open those streams one at a time: one lease, then one more per piece digested. Streams share
    # the origin's uplink, so opening all at once delays every first piece (and the whole swarm).
    origin_slow_start: bool = True
    handout_size: int = 16  # peers per announce reply
    handout_policy: str = "locality"  # a name from p2pdist.core.handout.HANDOUTS
    announce_interval: float = 5.0  # seconds between announces in steady state
    # While some pieces still have no digest and leases are out, announce faster so digests flow.
    busy_interval: float = 1.0
    digests_per_reply: int = 4096  # page size of the digest log; ~40 bytes each on the wire
    max_blobs: int = 4096  # blobs tracked at once; idle ones are evicted first when full
    max_peers_per_blob: int = 16384  # peers kept per blob; handouts rank a bounded sample of them
    blob_ttl: float = 600.0  # a blob with no live peers is forgotten after this long
    max_blob_size: int = 1 << 40  # 1 TiB: bounds the per-blob piece tables
    # Piece size rule (see p2pdist.core.layout): smallest power of two from piece_min keeping the
    # blob at or below piece_target pieces, capped at piece_max. Agents adopt what the tracker says.
    piece_min: int = MIN_PIECE_SIZE
    piece_max: int = MAX_PIECE_SIZE
    piece_target: int = TARGET_PIECES
    log_level: str = "info"

    @property
    def piece_rule(self) -> PieceRule:
        return PieceRule(self.piece_target, self.piece_min, self.piece_max)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(bool(self.host), "host must not be empty (use 127.0.0.1, or 0.0.0.0 for every address)")
        need(0 <= self.port <= 65535, f"port must be in 0..65535, got {self.port}")
        for name in ("peer_ttl", "lease_ttl", "announce_interval", "busy_interval", "blob_ttl"):
            need(getattr(self, name) > 0, f"{name} must be > 0 seconds, got {getattr(self, name)}")
        need(self.blob_ttl >= self.peer_ttl, "blob_ttl must be >= peer_ttl (a blob outlives its peers)")
        need(self.lease_pieces >= 1, f"lease_pieces must be >= 1, got {self.lease_pieces}")
        need(1 <= self.solo_lease_pieces <= 1024, f"solo_lease_pieces must be in 1..1024, got {self.solo_lease_pieces}")
        # The wire reply carries at most 64 leases and 1024 peers.
        need(1 <= self.leases_per_node <= 64, f"leases_per_node must be in 1..64, got {self.leases_per_node}")
        need(0 <= self.origin_streams <= 4096, f"origin_streams must be in 0..4096, got {self.origin_streams}")
        need(1 <= self.handout_size <= 1024, f"handout_size must be in 1..1024, got {self.handout_size}")
        need(self.handout_policy in HANDOUTS,
             f"handout_policy {self.handout_policy!r} is unknown; choose one of {', '.join(HANDOUTS)}")
        need(1 <= self.digests_per_reply <= MAX_LIST,
             f"digests_per_reply must be in 1..{MAX_LIST}, got {self.digests_per_reply}")
        need(self.max_blobs >= 1, f"max_blobs must be >= 1, got {self.max_blobs}")
        need(self.max_peers_per_blob >= 1, f"max_peers_per_blob must be >= 1, got {self.max_peers_per_blob}")
        need(self.max_blob_size >= 0, f"max_blob_size must be >= 0, got {self.max_blob_size}")
        need(0 < self.piece_min <= self.piece_max,
             f"piece sizes need 0 < piece_min <= piece_max, got {self.piece_min} and {self.piece_max}")
        need(self.piece_target >= 1, f"piece_target must be >= 1, got {self.piece_target}")
        need(self.log_level in LOG_LEVELS, f"log_level must be one of {', '.join(LOG_LEVELS)}")

    @property
    def listen(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(TrackerConfig)}


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


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def _coerce(name: str, value: Any, source: str) -> Any:
    if name not in FIELDS:
        raise ConfigError(f"unknown setting {name!r} in {source}; known: listen, {', '.join(FIELDS)}")
    kind = type(FIELDS[name].default)
    if isinstance(value, str) and kind is not str:
        text = value.strip().lower()
        if kind is bool:
            if text not in ("1", "true", "yes", "on", "0", "false", "no", "off", ""):
                raise ConfigError(f"{name} in {source} must be true or false, got {value!r}")
            return text in ("1", "true", "yes", "on")
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(f"{name} in {source} must be {_KINDS[kind]}, got {value!r}") from None
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{name} in {source} must be {_KINDS[kind]}, got {value!r}")
    return value


def _layer(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name == "listen":
            out["host"], out["port"] = parse_listen(str(value))
        else:
            out[name] = _coerce(name, value, source)
    return out


def _from_file(path: str | Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    if isinstance(data.get("tracker"), dict):
        data = data["tracker"]  # lets the tracker share one file with other sections
    return _layer(data, str(path))


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    wanted = {f"{ENV_PREFIX}{name.upper()}": name for name in [*FIELDS, "listen"]}
    return _layer({wanted[k]: v for k, v in env.items() if k in wanted}, "the environment")


def load(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> TrackerConfig:
    """Defaults < TOML file (argument, else env P2PDIST_TRACKER_CONFIG) < environment < flags."""
    env = os.environ if env is None else env
    config_file = config_file or env.get(f"{ENV_PREFIX}CONFIG") or None
    values: dict[str, Any] = {}
    if config_file:
        values.update(_from_file(config_file))
    values.update(_from_env(env))
    values.update(_layer({k: v for k, v in (flags or {}).items() if v is not None}, "the command line"))
    return TrackerConfig(**values)
