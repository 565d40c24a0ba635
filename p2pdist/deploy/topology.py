"""The node's zone and rack, for the agent's config: read from the Node object in the API server.

A pod cannot read its node's labels through the downward API, so the agent's init container asks
the API server for its Node (with the pod's service account, which may only `get nodes`) and writes
the agent's TOML: the base config with ``zone`` and ``rack`` set from the node's topology labels.
A label the node does not have leaves the base's value (empty by default): no locality, no failure.
"""

from __future__ import annotations

import json
import os
import ssl
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomlkit

from p2pdist.errors import P2pdistError

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
ZONE_LABEL = "topology.kubernetes.io/zone"
RACK_LABEL = "topology.kubernetes.io/rack"
# A Node object is a few KiB to a few hundred (status.images); anything past this is not one.
MAX_NODE_BYTES = 16 << 20
TIMEOUT = 10.0


class TopologyError(P2pdistError):
    """The node's labels could not be read, or the agent's config not written; the message says why."""


@dataclass(frozen=True)
class ApiServer:
    """Where the Kubernetes API is and how to authenticate to it."""

    url: str  # https://HOST:PORT
    token: str
    ca: Path

    @classmethod
    def in_cluster(cls, environ: Mapping[str, str] | None = None, account: Path = SERVICE_ACCOUNT,
                   url: str | None = None) -> ApiServer:
        """The API server as a pod sees it: KUBERNETES_SERVICE_HOST/PORT and the mounted service account
        token and CA (``url`` overrides the address)."""
        env = os.environ if environ is None else environ
        if url is None:
            host, port = env.get("KUBERNETES_SERVICE_HOST", ""), env.get("KUBERNETES_SERVICE_PORT", "443")
            if not host:
                raise TopologyError("KUBERNETES_SERVICE_HOST is not set: not in a pod? Pass --api-server URL")
            url = f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"
        try:
            token = (account / "token").read_text().strip()
        except OSError as e:
            raise TopologyError(f"cannot read the service account token {account / 'token'}: {e.strerror or e} "
                                "(is a service account token mounted in this container?)") from None
        if not token:
            raise TopologyError(f"the service account token {account / 'token'} is empty")
        return cls(url.rstrip("/"), token, account / "ca.crt")


def fetch_node(api: ApiServer, name: str) -> dict[str, Any]:
    """GET /api/v1/nodes/NAME: the Node object."""
    try:
        ctx = ssl.create_default_context(cafile=str(api.ca))
    except (OSError, ssl.SSLError) as e:
        raise TopologyError(f"cannot load the API server's CA {api.ca}: {e}") from None
    url = f"{api.url}/api/v1/nodes/{urllib.parse.quote(name, safe='')}"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api.token}",
                                                   "Accept": "application/json"})
    # No proxy: the API server is dialed directly (an HTTPS_PROXY meant for pulls must not see the token).
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ctx))
    try:
        with opener.open(request, timeout=TIMEOUT) as response:
            body = response.read(MAX_NODE_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise TopologyError(_refusal(e.code, name, url)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise TopologyError(f"cannot reach the API server at {api.url}: {reason}") from None
    if len(body) > MAX_NODE_BYTES:
        raise TopologyError(f"{url} answered more than {MAX_NODE_BYTES} bytes: not a Node object")
    try:
        node = json.loads(body)
    except ValueError:
        raise TopologyError(f"{url} did not answer JSON: is {api.url} a Kubernetes API server?") from None
    if not isinstance(node, dict) or node.get("kind") != "Node":
        raise TopologyError(f"{url} did not answer a Node object")
    return node


def _refusal(status: int, name: str, url: str) -> str:
    if status == 401:
        return (f"the API server refused the service account token (401 Unauthorized) for {url}: the token is "
                "wrong or expired")
    if status == 403:
        return (f"the service account may not read node {name!r} (403 Forbidden): it needs a ClusterRole with "
                "`get` on `nodes`, bound to it (p2pdist kubernetes render makes both)")
    if status == 404:
        return f"no node named {name!r} (404): pass the pod's spec.nodeName as --node"
    return f"the API server answered {status} for {url}"


def node_labels(node: Mapping[str, Any]) -> dict[str, str]:
    labels = (node.get("metadata") or {}).get("labels") or {}
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


@dataclass(frozen=True)
class Topology:
    zone: str | None  # None: the node has no such label
    rack: str | None


def node_topology(node: Mapping[str, Any], zone_label: str = ZONE_LABEL, rack_label: str = RACK_LABEL) -> Topology:
    labels = node_labels(node)
    return Topology(labels.get(zone_label), labels.get(rack_label))


def agent_toml(base: str, topology: Topology) -> str:
    """The base agent TOML with zone and rack set where the node has them (comments and order kept)."""
    try:
        doc = tomlkit.parse(base)
    except tomlkit.exceptions.ParseError as e:
        raise TopologyError(f"the base agent config is not valid TOML: {e}") from None
    for key, value in (("zone", topology.zone), ("rack", topology.rack)):
        if value is not None:
            doc[key] = value
    text = tomlkit.dumps(doc)
    tomllib.loads(text)  # what the agent will read: tomlkit's output must parse with the stdlib
    return text


def write_config(path: Path, text: str) -> None:
    """Replace ``path`` atomically: the agent never reads half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text)
        tmp.replace(path)
    except OSError as e:
        raise TopologyError(f"cannot write {path}: {e.strerror or e}") from None


def read_base(path: Path | None) -> str:
    if path is None:
        return ""
    try:
        return path.read_text()
    except OSError as e:
        raise TopologyError(f"cannot read the base agent config {path}: {e.strerror or e}") from None
