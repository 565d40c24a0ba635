"""The whole Kubernetes install of p2pdist, rendered from one ``Values``: a list of plain dicts, and
multi-document YAML for ``kubectl apply -f`` (what ``p2pdist kubernetes render`` prints and what
deploy/kubernetes/ holds for the default values)."""

from __future__ import annotations

from typing import Any

import yaml

from p2pdist import __version__
from p2pdist.config import PLACEHOLDER_TOKEN  # agent and tracker refuse to run with it
from p2pdist.deploy import agent, tracker
from p2pdist.deploy.objects import UNINSTALL, Obj, metadata
from p2pdist.deploy.values import Values

__all__ = ["PLACEHOLDER_TOKEN", "render", "render_uninstall", "to_yaml"]


def _namespace(values: Values) -> Obj:
    meta = metadata(values, values.namespace, "p2pdist", namespaced=False)
    # The agent needs the host's network and disk, which Pod Security Admission calls "privileged";
    # its containers are confined one by one instead.
    meta["labels"]["pod-security.kubernetes.io/enforce"] = "privileged"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}


def _secret(values: Values) -> Obj:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": metadata(values, values.secret.name, "p2pdist"),
            "type": "Opaque", "stringData": {"token": values.secret.token or PLACEHOLDER_TOKEN}}


def render(values: Values) -> list[Obj]:
    """Every object of the install, in an order `kubectl apply` can create them in."""
    objects: list[Obj] = []
    if values.namespace != "kube-system":
        objects.append(_namespace(values))
    if values.secret.create:
        objects.append(_secret(values))
    objects += agent.rbac(values)
    objects.append(agent.config_map(values))
    if values.redis.enabled:
        objects += tracker.redis(values)
    objects += tracker.tracker(values)
    objects.append(agent.daemonset(values))
    return objects


def render_uninstall(values: Values, purge_store: bool = False) -> list[Obj]:
    """What removes, from every node, what the install's init containers wrote there."""
    return [agent.uninstall_daemonset(values, purge_store)]


def _note(obj: Obj, values: Values) -> str:
    """A comment above an object where the operator must know something before applying it."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind == "Secret" and obj["stringData"]["token"] == PLACEHOLDER_TOKEN:
        return ("CHANGE THIS TOKEN before applying: anyone who knows it can speak as any node. Better: create\n"
                "the Secret yourself and render with --set secret.create=false (deploy/README.md).")
    if kind == "DaemonSet" and name == UNINSTALL:
        return ("Uninstall: takes the p2pdist mirror out of containerd's hosts.toml on every node (keeping a\n"
                "backup). Wait for `kubectl -n " + values.namespace + " rollout status daemonset/" + name +
                "`, then delete it.")
    if kind == "DaemonSet":
        return ("The agent on every node. Host network: the mirror on 127.0.0.1 is the node's own loopback,\n"
                "where containerd pulls through it. The store lives on the host, capped.")
    if kind == "Deployment" and name == tracker.REDIS:
        return ("The tracker replicas' shared state. No persistence: agents re-announce within seconds.\n"
                "The image is pinned to a patch release (values redis.image): a moving tag could change\n"
                "the state store under a running cluster.")
    return ""


class _Dumper(yaml.SafeDumper):
    """Block style, keys in the order built, and multi-line text (agent.toml) as a literal block."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # a shared dict is written out each time: anchors would only puzzle a reader


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _text)


def to_yaml(objects: list[Obj], values: Values, command: str = "p2pdist kubernetes render") -> str:
    """Multi-document YAML with a header saying where it came from, as `helm template` prints."""
    parts = [f"# Rendered by `{command}` (p2pdist {__version__}). Do not edit: change the values\n"
             "# (--values FILE.toml, --set key=value) and render again.\n"]
    for obj in objects:
        note = _note(obj, values)
        comment = "".join(f"# {line}\n" for line in note.splitlines())
        body: Any = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)
        parts.append(f"---\n{comment}{body}")
    return "".join(parts)
