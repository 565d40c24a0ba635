"""Small builders every rendered Kubernetes object shares: names, labels, security contexts."""

from __future__ import annotations

from typing import Any

from p2pdist import __version__
from p2pdist.deploy.values import Values

Obj = dict[str, Any]

AGENT = "p2pdist-agent"
TRACKER = "p2pdist-tracker"
REDIS = "p2pdist-redis"
UNINSTALL = "p2pdist-uninstall"
AGENT_CONFIG = "p2pdist-agent-config"
# Cluster-scoped: the one permission the agent's topology init container needs.
NODE_READER = "p2pdist-agent-topology"
NONROOT = 65532  # the image's user (deploy/docker/Dockerfile)


def selector(name: str) -> Obj:
    """The one label that picks an app's pods. Selectors are immutable: never put a version in them."""
    return {"app.kubernetes.io/name": name}


def labels(name: str) -> Obj:
    return {**selector(name), "app.kubernetes.io/part-of": "p2pdist", "app.kubernetes.io/version": __version__,
            "app.kubernetes.io/managed-by": "p2pdist-kubernetes-render"}


def metadata(values: Values, name: str, app: str | None = None, namespaced: bool = True) -> Obj:
    meta: Obj = {"name": name}
    if namespaced:
        meta["namespace"] = values.namespace
    meta["labels"] = labels(app or name)
    return meta


def confined(user: int | None = NONROOT, add: list[str] | None = None) -> Obj:
    """A container's least privilege: no escalation, read-only root, every capability dropped (but ``add``).
    ``user`` None leaves the user to the pod's securityContext."""
    ctx: Obj = {}
    if user is not None:
        ctx.update(runAsUser=user, runAsGroup=user if user else 0, runAsNonRoot=user != 0)
    ctx.update(allowPrivilegeEscalation=False, readOnlyRootFilesystem=True,
               capabilities={"drop": ["ALL"], **({"add": add} if add else {})})
    return ctx


def secret_env(values: Values, name: str) -> Obj:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": values.secret.name, "key": "token"}}}


def field_env(name: str, path: str) -> Obj:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def small(memory_limit: str = "64Mi") -> Obj:
    """Resources of a short init container."""
    return {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": memory_limit}}
