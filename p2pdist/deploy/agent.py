"""The agent on every node: its base config, its DaemonSet, the RBAC of its topology init container,
and the DaemonSet that undoes what the agent's init containers wrote on the nodes."""

from __future__ import annotations

import hashlib
from pathlib import PurePosixPath
from typing import Any

import tomlkit

from p2pdist.config import AgentConfig
from p2pdist.deploy.objects import (
    AGENT,
    AGENT_CONFIG,
    NODE_READER,
    NONROOT,
    TRACKER,
    UNINSTALL,
    Obj,
    confined,
    field_env,
    labels,
    metadata,
    secret_env,
    selector,
    small,
)
from p2pdist.deploy.values import Values
from p2pdist.settings import ConfigError, Source, load_settings

STORE = "/var/lib/p2pdist"  # in the container; values.agent.store_path is where it is on the host
BASE_CONFIG = "/etc/p2pdist/agent.toml"  # the ConfigMap
NODE_CONFIG = "/run/p2pdist/agent.toml"  # the base plus this node's zone and rack
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"

HEADER = """\
The base settings of every agent (the keys of p2pdist.config.AgentConfig).
At start, each agent's `topology` init container adds zone and rack from its node's labels and
writes /run/p2pdist/agent.toml; the DaemonSet's P2PDIST_* environment adds capacity, the
advertised peer address and the cluster secret. Rendered by `p2pdist kubernetes render`."""


def tracker_url(values: Values) -> str:
    # By its Service name: resolvable from the host network thanks to dnsPolicy ClusterFirstWithHostNet.
    return f"http://{TRACKER}.{values.namespace}.svc:{values.tracker.port}"


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def agent_settings(values: Values) -> dict[str, Any]:
    """The base agent.toml as a dict, checked against the agent's own settings model."""
    agent = values.agent
    settings: dict[str, Any] = {
        "tracker": tracker_url(values),
        "data_dir": STORE,
        "peer_listen": f"0.0.0.0:{agent.peer_port}",
        "api_listen": f"127.0.0.1:{agent.api_port}",
    }
    if agent.metrics_listen:
        settings["metrics_listen"] = agent.metrics_listen
    settings["mirror"] = {"listen": f"127.0.0.1:{agent.mirror_port}"}
    settings["upstream"] = [{"registry": r.host, **({"plain_http": True} if r.plain_http else {})}
                            for r in agent.registry_list()]
    settings = _merge(settings, agent.settings)
    _check_agent_settings(values, settings)
    return settings


def _check_agent_settings(values: Values, settings: dict[str, Any]) -> None:
    """Refuse at render time what every agent would refuse at start (an unknown key, a bad value)."""
    layer = dict(settings)
    if "upstream" in layer:  # TOML spells the list [[upstream]]; the model's field is upstreams
        layer["upstreams"] = layer.pop("upstream")
    env = {"capacity": values.agent.capacity, "cluster_token": "rendered",
           "peer_advertise": f"192.0.2.1:{values.agent.peer_port}"}
    try:
        load_settings(AgentConfig, [Source("agent settings", layer), Source("the DaemonSet's environment", env)])
    except ConfigError as e:
        raise ConfigError(f"the agent's config (values agent.*) would not load: {e}") from None


def agent_toml(values: Values) -> str:
    doc = tomlkit.document()
    for line in HEADER.splitlines():
        doc.add(tomlkit.comment(line))
    settings = agent_settings(values)
    # Plain keys first: in TOML every key after a table header belongs to that table.
    for key, value in sorted(settings.items(), key=lambda kv: isinstance(kv[1], dict | list)):
        if key == "upstream":
            tables = tomlkit.aot()
            for upstream in value:
                tables.append(tomlkit.item(upstream))
            doc[key] = tables
        else:
            doc[key] = value
    return tomlkit.dumps(doc)


def config_map(values: Values) -> Obj:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata(values, AGENT_CONFIG, AGENT),
            "data": {"agent.toml": agent_toml(values)}}


def rbac(values: Values) -> list[Obj]:
    """Read nodes, nothing else: the topology init container gets its node's labels."""
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(values, AGENT),
               # Only the topology init container gets a token, through its own projected volume.
               "automountServiceAccountToken": False}
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": metadata(values, NODE_READER, AGENT, namespaced=False),
            "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]}
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": metadata(values, NODE_READER, AGENT, namespaced=False),
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NODE_READER},
               "subjects": [{"kind": "ServiceAccount", "name": AGENT, "namespace": values.namespace}]}
    return [account, role, binding]


def _image(values: Values) -> Obj:
    return {"image": values.image, "imagePullPolicy": values.image_pull_policy}


def _store_owner(values: Values) -> Obj:
    # The store on the host belongs to the agent's user: the agent itself runs as non-root.
    return {"name": "store-owner", **_image(values),
            "command": ["sh", "-c", f"chown {NONROOT}:{NONROOT} {STORE} && chmod 0700 {STORE}"],
            "securityContext": confined(user=0, add=["CHOWN", "FOWNER"]),
            "volumeMounts": [{"name": "store", "mountPath": STORE}],
            "resources": small()}


def _containerd_mounts(values: Values, config_file: bool) -> list[Obj]:
    # Mounted at the node's own paths, so what `configure` prints about them is true on the node.
    mounts = [{"name": "certs-d", "mountPath": values.containerd.config_path}]
    if config_file:
        mounts.insert(0, {"name": "containerd-config", "mountPath": _config_dir(values), "readOnly": True})
    return mounts


def _config_dir(values: Values) -> str:
    return str(PurePosixPath(values.containerd.config_file).parent)


def _registry_flags(values: Values) -> list[str]:
    flags = []
    for registry in values.agent.registries:
        flags += ["--registry", registry]
    return flags


def _configure_containerd(values: Values) -> Obj:
    # Writes certs.d/<registry>/hosts.toml, keeping a backup of what was there; containerd reads
    # hosts.toml at each pull (no restart) once its CRI plugin has config_path set (the log says).
    command = ["p2pdist", "configure", "containerd", "--config-path", values.containerd.config_path,
               "--containerd-config", values.containerd.config_file,
               "--mirror", f"127.0.0.1:{values.agent.mirror_port}", *_registry_flags(values)]
    if not values.containerd.default_host:
        command.append("--no-default-host")
    # Root: certs.d is root's on the node. No capability: root owns what it writes there.
    return {"name": "configure-containerd", **_image(values), "command": command,
            "securityContext": confined(user=0),
            "volumeMounts": _containerd_mounts(values, config_file=True),
            "resources": small("128Mi")}


def _topology(values: Values) -> Obj:
    agent = values.agent
    return {"name": "topology", **_image(values),
            "command": ["p2pdist", "kubernetes", "topology", "--node", "$(NODE_NAME)", "--base", BASE_CONFIG,
                        "--output", NODE_CONFIG, "--zone-label", agent.zone_label, "--rack-label", agent.rack_label],
            "env": [field_env("NODE_NAME", "spec.nodeName")],
            "securityContext": confined(),
            "volumeMounts": [{"name": "config", "mountPath": "/etc/p2pdist", "readOnly": True},
                             {"name": "run", "mountPath": "/run/p2pdist"},
                             {"name": "kube-api-access", "mountPath": SERVICE_ACCOUNT_DIR, "readOnly": True}],
            "resources": small("128Mi")}


def _probe(values: Values, path: str, period: int, failures: int) -> Obj:
    # The local API listens on the node's loopback (host network): the kubelet probes it there.
    return {"httpGet": {"path": path, "port": values.agent.api_port, "host": "127.0.0.1"},
            "periodSeconds": period, "failureThreshold": failures}


def _agent_container(values: Values) -> Obj:
    agent = values.agent
    return {
        "name": "agent", **_image(values),
        "command": ["p2pdist", "daemon", "--config", NODE_CONFIG],
        "env": [field_env("NODE_IP", "status.hostIP"),
                {"name": "P2PDIST_PEER_ADVERTISE", "value": f"$(NODE_IP):{agent.peer_port}"},
                # The store is an LRU of complete blobs: it must not fill the node's disk.
                {"name": "P2PDIST_CAPACITY", "value": agent.capacity},
                # A fleet on the cluster secret (README, "Node identity"): every agent derives its credential.
                secret_env(values, "P2PDIST_CLUSTER_TOKEN")],
        "ports": [{"name": "peer", "containerPort": agent.peer_port}],
        "securityContext": confined(),
        # /healthz: the process answers; /readyz: the store takes writes and the tracker answers.
        "startupProbe": _probe(values, "/healthz", 2, 30),
        "livenessProbe": _probe(values, "/healthz", 10, 3),
        "readinessProbe": _probe(values, "/readyz", 10, 3),
        "volumeMounts": [{"name": "store", "mountPath": STORE},
                         {"name": "run", "mountPath": "/run/p2pdist", "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "resources": agent.resources.manifest(),
    }


def _host_dir(name: str, path: str) -> Obj:
    return {"name": name, "hostPath": {"path": path, "type": "DirectoryOrCreate"}}


def _kube_api_access() -> Obj:
    # What automounting would give, for the topology init container alone: a short-lived token
    # the kubelet renews, the cluster's CA, read-only.
    return {"name": "kube-api-access", "projected": {"defaultMode": 0o444, "sources": [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    ]}}


def _node_pod(values: Values) -> Obj:
    """What every per-node pod shares: host namespaces, every node, node-critical, confined."""
    return {
        "hostNetwork": True,
        # With the host's network the pod would use the host's resolver, where the tracker's Service
        # name does not resolve: every pull would silently go to the origin.
        "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": values.agent.priority_class,
        "tolerations": [{"operator": "Exists"}],  # every node pulls images, tainted ones too
        "automountServiceAccountToken": False,
        "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
    }


def daemonset(values: Values) -> Obj:
    config = agent_toml(values)
    init = [_store_owner(values)]
    volumes = [_host_dir("store", values.agent.store_path)]
    if values.containerd.configure:
        init.append(_configure_containerd(values))
        volumes += [_host_dir("containerd-config", _config_dir(values)),
                    _host_dir("certs-d", values.containerd.config_path)]
    init.append(_topology(values))
    volumes += [{"name": "config", "configMap": {"name": AGENT_CONFIG}},
                {"name": "run", "emptyDir": {"sizeLimit": "1Mi"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                _kube_api_access()]
    pod = {**_node_pod(values), "serviceAccountName": AGENT, "initContainers": init,
           "containers": [_agent_container(values)], "volumes": volumes}
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": metadata(values, AGENT),
        "spec": {
            "selector": {"matchLabels": selector(AGENT)},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
            "template": {
                # A changed agent.toml rolls the agents (a ConfigMap change alone would not).
                "metadata": {"labels": labels(AGENT),
                             "annotations": {"p2pdist.io/config-sha256": hashlib.sha256(config.encode()).hexdigest()}},
                "spec": pod,
            },
        },
    }


def uninstall_daemonset(values: Values, purge_store: bool = False) -> Obj:
    """Runs once on every node: takes the mirror out of containerd's hosts.toml (keeping a backup),
    and with ``purge_store`` empties the store. Then it idles, so `kubectl rollout status` tells
    when every node is done; delete it after."""
    init = []
    volumes = []
    if values.containerd.configure:
        init.append({"name": "unconfigure-containerd", **_image(values),
                     "command": ["p2pdist", "configure", "containerd", "--remove",
                                 "--config-path", values.containerd.config_path,
                                 "--mirror", f"127.0.0.1:{values.agent.mirror_port}"],
                     "securityContext": confined(user=0),
                     "volumeMounts": _containerd_mounts(values, config_file=False), "resources": small("128Mi")})
        volumes.append(_host_dir("certs-d", values.containerd.config_path))
    if purge_store:
        # As the agent's user, who owns every file of the store, and under the store's lock: while an
        # agent still runs on the node it refuses (and the pod retries), so nothing is pulled from
        # under a live agent; then every blob and unfinished download goes.
        init.append({"name": "purge-store", **_image(values),
                     "command": ["p2pdist", "cache", "gc", "--data-dir", STORE, "--keep", "0", "--partials"],
                     "securityContext": confined(),
                     "volumeMounts": [{"name": "store", "mountPath": STORE}], "resources": small()})
        volumes.append(_host_dir("store", values.agent.store_path))
    pod = {**_node_pod(values), "hostNetwork": False, "dnsPolicy": "ClusterFirst", "initContainers": init,
           "containers": [{"name": "done", **_image(values), "command": ["sleep", "infinity"],
                           "securityContext": confined(), "resources": small("16Mi")}],
           "volumes": volumes}
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": metadata(values, UNINSTALL),
        "spec": {"selector": {"matchLabels": selector(UNINSTALL)},
                 "template": {"metadata": {"labels": labels(UNINSTALL)}, "spec": pod}},
    }
