"""The tracker (Deployment, Service, PodDisruptionBudget) and the Redis its replicas share."""

from __future__ import annotations

from p2pdist.deploy.objects import REDIS, TRACKER, Obj, confined, labels, metadata, secret_env, selector
from p2pdist.deploy.values import Values

REDIS_PORT = 6379
REDIS_USER = 999  # the redis user of the official image (uid 999, gid 1000)
REDIS_GROUP = 1000


def redis_url(values: Values) -> str:
    return f"redis://{REDIS}.{values.namespace}.svc:{REDIS_PORT}/0"


def _pod_security(user: int, group: int) -> Obj:
    return {"runAsUser": user, "runAsGroup": group, "runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}


def tracker(values: Values) -> list[Obj]:
    port = values.tracker.port
    replicas = values.tracker_replicas
    env = [secret_env(values, "P2PDIST_TRACKER_CLUSTER_TOKEN")]
    if values.redis.enabled:
        env.append({"name": "P2PDIST_TRACKER_REDIS", "value": redis_url(values)})
    container = {
        "name": "tracker", "image": values.image, "imagePullPolicy": values.image_pull_policy,
        "command": ["p2pdist-tracker", "--listen", f"0.0.0.0:{port}"],
        "env": env,
        "ports": [{"name": "http", "containerPort": port}],
        "securityContext": confined(user=None),
        "startupProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 2, "failureThreshold": 30},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 5},
        "resources": values.tracker.resources.manifest(),
    }
    pod: Obj = {
        "automountServiceAccountToken": False,  # the tracker never talks to the API server
        "enableServiceLinks": False,
        "securityContext": _pod_security(65532, 65532),
        "containers": [container],
    }
    if replicas > 1:
        # Replicas on different nodes where possible: one node going down keeps the others serving.
        pod["topologySpreadConstraints"] = [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector(TRACKER)}}]
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(values, TRACKER),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(TRACKER)},
            "template": {"metadata": {"labels": labels(TRACKER)}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata(values, TRACKER),
        "spec": {"selector": selector(TRACKER), "ports": [{"name": "http", "port": port, "targetPort": "http"}]},
    }
    # maxUnavailable, not minAvailable: with one replica a drain may still move it (agents keep
    # trading with the neighbours they have and rejoin when it is back); never blocks a drain.
    budget = {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata(values, TRACKER),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(TRACKER)}},
    }
    return [deployment, service, budget]


def redis(values: Values) -> list[Obj]:
    """One Redis, no persistence: the tracker's state is soft (agents re-announce within seconds)."""
    ping = {"exec": {"command": ["redis-cli", "ping"]}}
    container = {
        "name": "redis", "image": values.redis.image, "imagePullPolicy": values.image_pull_policy,
        "args": ["redis-server", "--save", "", "--appendonly", "no", "--port", str(REDIS_PORT)],
        "ports": [{"name": "redis", "containerPort": REDIS_PORT}],
        "securityContext": confined(user=None),
        "livenessProbe": {**ping, "periodSeconds": 10, "timeoutSeconds": 2},
        "readinessProbe": {**ping, "periodSeconds": 5, "timeoutSeconds": 2},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
        "resources": values.redis.resources.manifest(),
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(values, REDIS),
        "spec": {
            "replicas": 1,
            # Never two at once: a second, empty Redis behind the Service would split the state.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": selector(REDIS)},
            "template": {"metadata": {"labels": labels(REDIS)}, "spec": {
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "securityContext": _pod_security(REDIS_USER, REDIS_GROUP),
                "containers": [container],
                "volumes": [{"name": "data", "emptyDir": {"sizeLimit": "64Mi"}}],
            }},
        },
    }
    service = {
        "apiVersion": "v1", "kind": "Service", "metadata": metadata(values, REDIS),
        "spec": {"selector": selector(REDIS), "ports": [{"name": "redis", "port": REDIS_PORT, "targetPort": "redis"}]},
    }
    # Redis has no password here: only the tracker's pods may reach it (where the network plugin
    # enforces NetworkPolicy).
    policy = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": metadata(values, REDIS),
        "spec": {"podSelector": {"matchLabels": selector(REDIS)}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": selector(TRACKER)}}],
                              "ports": [{"protocol": "TCP", "port": REDIS_PORT}]}]},
    }
    return [deployment, service, policy]
