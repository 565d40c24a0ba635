"""The values of a Kubernetes install: one typed, validated model, and its loader.

Defaults < a TOML file (``--values``) < ``--set key.path=value`` flags, layered and explained by the
same loader as the agent's and the tracker's settings (``p2pdist.settings``): an unknown key or a
bad value is one line naming the setting, the value and where it came from.
"""

from __future__ import annotations

import posixpath
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from p2pdist import __version__
from p2pdist.cli.configure_common import ConfigureError, Registry, parse_registries
from p2pdist.config import parse_size
from p2pdist.settings import ConfigError, Settings, Source, load_settings, read_toml

__all__ = ["ConfigError", "Values", "load_values", "parse_set"]

IMAGE = f"ghcr.io/p2pdist/p2pdist:{__version__}"
# Pinned: a moving tag would change the tracker's state store under a running cluster. Redis keeps
# only soft state here (agents re-announce), so any 7.x patch release works.
REDIS_IMAGE = "redis:7.2.5-alpine"

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# A Kubernetes quantity as people write them: 200m, 1.5, 256Mi, 2Gi, 1e3.
_QUANTITY = re.compile(r"(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+|m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?")
# A label key: an optional DNS prefix and a name (topology.kubernetes.io/zone).
_LABEL_KEY = re.compile(r"([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_RESOURCE_NAMES = frozenset({"cpu", "memory", "ephemeral-storage"})


def _dns_label(value: str) -> str:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError("must be a DNS label: lower-case letters, digits and '-', at most 63")
    return value


def _quantities(value: dict[str, str]) -> dict[str, str]:
    for name, quantity in value.items():
        if name not in _RESOURCE_NAMES:
            raise ValueError(f"unknown resource {name!r}; use {', '.join(sorted(_RESOURCE_NAMES))}")
        if not _QUANTITY.fullmatch(str(quantity)):
            raise ValueError(f"{name}: {quantity!r} is not a Kubernetes quantity (e.g. 200m, 256Mi, 2Gi)")
    return value


class Resources(Settings):
    """A container's resource requests and limits (Kubernetes quantities)."""

    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)

    check_quantities = field_validator("requests", "limits")(_quantities)

    def manifest(self) -> dict[str, dict[str, str]]:
        return {k: v for k, v in (("requests", self.requests), ("limits", self.limits)) if v}


def _resources(cpu: str, memory: str, memory_limit: str) -> Resources:
    # CPU is requested, never limited: a throttled agent or tracker slows every pull of the cluster.
    return Resources(requests={"cpu": cpu, "memory": memory}, limits={"memory": memory_limit})


SYSTEM_DIRS = frozenset({"/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc", "/root",
                         "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var", "/var/lib"})
RENDERED_SETTINGS = frozenset({"data_dir", "api_listen", "peer_listen", "peer_advertise", "mirror", "tracker",
                               "zone", "rack", "capacity", "cluster_token", "node_credential", "metrics_listen"})


class AgentValues(Settings):
    """The agent DaemonSet."""

    # Bytes of complete blobs each node keeps on its disk (P2PDIST_CAPACITY).
    capacity: str = "20GiB"
    # Registries containerd sends through the mirror, and the agent allows as origins
    # (http://HOST for a plain-http registry).
    registries: tuple[str, ...] = ("docker.io",)
    store_path: str = "/var/lib/p2pdist"  # on the host: the store survives agent restarts
    mirror_port: int = Field(65001, ge=1, le=65535)  # on the node's loopback: only its runtime pulls there
    api_port: int = Field(65002, ge=1, le=65535)  # loopback: probes, p2pdist fetch/status, /metrics
    peer_port: int = Field(65003, ge=1, le=65535)  # on the node's address: other agents
    # A separate metrics listener (HOST:PORT), rendered as the agent setting `metrics_listen`; empty =
    # none. Checked against this p2pdist's agent settings at render time.
    metrics_listen: str = ""
    zone_label: str = "topology.kubernetes.io/zone"  # the node label holding its zone
    rack_label: str = "topology.kubernetes.io/rack"  # the node label holding its rack (none is standard)
    priority_class: str = "system-node-critical"  # image pulls of every pod depend on the agent
    resources: Resources = Field(default_factory=lambda: _resources("200m", "256Mi", "1Gi"))
    # More agent settings for the base agent.toml (the keys of p2pdist.config.AgentConfig), e.g.
    # {limits = {upload_slots = 3}}. Checked against the agent's settings at render time.
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("capacity", mode="before")
    @classmethod
    def _capacity(cls, value: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise ValueError("not a size (e.g. 20GiB, 500GiB)")
        try:
            size = parse_size(value)
        except ConfigError:
            raise ValueError("not a size (e.g. 20GiB, 500GiB)") from None
        if size <= 0:
            raise ValueError("must be more than 0: the store lives on the node's disk and must be capped")
        return str(value)

    @field_validator("registries")
    @classmethod
    def _registries(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("name at least one registry, e.g. [\"docker.io\"]")
        try:
            parse_registries(list(value))
        except ConfigureError as e:
            raise ValueError(str(e).removeprefix("--registry ")) from None
        return value

    @field_validator("store_path")
    @classmethod
    def _store_path(cls, value: str) -> str:
        # The init container chowns this host directory and --purge-store empties it: a system
        # directory there would break the node.
        if not value.startswith("/") or posixpath.normpath(value) != value or value in SYSTEM_DIRS:
            raise ValueError("must be an absolute, normalised path of p2pdist's own, e.g. /var/lib/p2pdist "
                             f"(not /, or one of {', '.join(sorted(SYSTEM_DIRS - {'/'}))})")
        return value

    @field_validator("settings")
    @classmethod
    def _own_settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        # The manifests are built around these (host paths, ports, probes, loopback-only listeners).
        taken = sorted(set(value) & RENDERED_SETTINGS)
        if taken:
            raise ValueError(f"{', '.join(taken)} are set by the manifests themselves (use store_path, the "
                             "*_port values or metrics_listen)")
        return value

    @field_validator("zone_label", "rack_label")
    @classmethod
    def _label_key(cls, value: str) -> str:
        if not _LABEL_KEY.fullmatch(value):
            raise ValueError("must be a node label key, e.g. topology.kubernetes.io/zone")
        return value

    @model_validator(mode="after")
    def _distinct_ports(self) -> AgentValues:
        if len({self.mirror_port, self.api_port, self.peer_port}) < 3:
            raise ValueError("mirror_port, api_port and peer_port must differ: they share the node's network")
        return self

    def registry_list(self) -> list[Registry]:
        return parse_registries(list(self.registries))


class ContainerdValues(Settings):
    """What the agent's init container writes into containerd's configuration on every node."""

    configure: bool = True  # false: leave containerd alone (configure it some other way)
    # containerd's registry hosts folder: its CRI plugin's `config_path`.
    config_path: str = "/etc/containerd/certs.d"
    config_file: str = "/etc/containerd/config.toml"  # only read, to say whether config_path is set
    # Also write _default/hosts.toml: every other registry tries the mirror first.
    default_host: bool = True

    @field_validator("config_path", "config_file")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or value.rstrip("/") == "":
            raise ValueError("must be an absolute path on the node below /")
        return value.rstrip("/")


class TrackerValues(Settings):
    """The tracker Deployment."""

    # Replicas behind the Service; default 3 with Redis (shared state), 1 without (state in memory).
    replicas: int | None = Field(None, ge=1)
    port: int = Field(7070, ge=1, le=65535)
    resources: Resources = Field(default_factory=lambda: _resources("500m", "256Mi", "2Gi"))

    @field_validator("replicas", mode="before")
    @classmethod
    def _not_a_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # pydantic would read true as 1 replica
            raise ValueError("expected a number of replicas, not true/false")
        return value


class RedisValues(Settings):
    """The tracker replicas' shared state."""

    enabled: bool = True
    image: str = REDIS_IMAGE
    resources: Resources = Field(default_factory=lambda: _resources("100m", "128Mi", "512Mi"))


class SecretValues(Settings):
    """The cluster secret: the tracker checks agents' requests with it; agents derive credentials from it."""

    # false: the Secret is made beforehand (kubectl create secret), so it never sits in a rendered file.
    create: bool = True
    name: str = "p2pdist-cluster-token"
    # Empty: a placeholder that must be replaced before the install is used.
    token: str = ""

    check_name = field_validator("name")(_dns_label)


class Values(Settings):
    """Everything a Kubernetes install of p2pdist can be told."""

    namespace: str = "kube-system"
    image: str = IMAGE
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    agent: AgentValues = Field(default_factory=AgentValues)
    containerd: ContainerdValues = Field(default_factory=ContainerdValues)
    tracker: TrackerValues = Field(default_factory=TrackerValues)
    redis: RedisValues = Field(default_factory=RedisValues)
    secret: SecretValues = Field(default_factory=SecretValues)

    check_namespace = field_validator("namespace")(_dns_label)

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not value or any(c.isspace() for c in value):
            raise ValueError("must be an image reference, e.g. ghcr.io/p2pdist/p2pdist:0.1.0")
        return value

    @model_validator(mode="after")
    def _replicas_need_shared_state(self) -> Values:
        if (self.tracker.replicas or 1) > 1 and not self.redis.enabled:
            raise ValueError("tracker.replicas above 1 needs redis.enabled = true: without Redis each replica "
                             "keeps its own state and agents would see a split cluster")
        return self

    @property
    def tracker_replicas(self) -> int:
        if self.tracker.replicas is not None:
            return self.tracker.replicas
        return 3 if self.redis.enabled else 1


def parse_set(assignment: str) -> dict[str, Any]:
    """``tracker.replicas=5`` -> ``{"tracker": {"replicas": 5}}``. The value is read as a TOML value
    when it is one (5, true, ["docker.io", "quay.io"], "text"), else taken as a string (20GiB)."""
    key, sep, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. tracker.replicas=5")
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    for part in reversed(parts):
        value = {part.strip(): value}
    return value


def load_values(path: Path | None = None, assignments: list[str] | None = None) -> Values:
    """The values from defaults, an optional TOML file and ``--set`` assignments, in that order."""
    sources: list[Source] = []
    if path is not None:
        sources.append(Source(str(path), read_toml(path)))
    for assignment in assignments or []:
        sources.append(Source(f"--set {assignment}", parse_set(assignment)))
    return load_settings(Values, sources)
