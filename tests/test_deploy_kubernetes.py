"""deploy/kubernetes validates against the Kubernetes schemas (kubernetes-validate, strict: no
unknown fields), and carries what a node needs: the tracker resolvable from the host network,
probes on /healthz and /readyz, least privilege, every node, a capped store."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

MANIFESTS = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
VERSION = "1.33.0"


def _resources() -> list[dict]:
    docs = []
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _one(kind: str) -> dict:
    (found,) = [d for d in _resources() if d["kind"] == kind]
    return found


@pytest.mark.parametrize("resource", _resources(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_resource_validates_strictly(resource: dict) -> None:
    kubernetes_validate.validate(resource, VERSION, strict=True)


def test_a_misspelt_field_is_caught() -> None:
    """The control: the validator refuses what it should (a broken check must not pass)."""
    broken = _one("DaemonSet")
    broken["spec"]["template"]["spec"]["dnsPolicyy"] = "ClusterFirstWithHostNet"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_agent_daemonset_reaches_the_tracker_and_is_probed_and_confined() -> None:
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in pod["tolerations"]
    (agent,) = pod["containers"]
    assert agent["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    ctx = agent["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True and ctx["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    env = {e["name"]: e for e in agent["env"]}
    assert env["P2PDIST_CAPACITY"]["value"]  # the store never fills the node's disk unbounded
    assert "topology.kubernetes.io/zone" in env["NODE_ZONE"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert "svc" in " ".join(agent["args"])  # the tracker by its Service name: resolvable with the dnsPolicy
    for init in pod["initContainers"]:
        assert init["securityContext"]["allowPrivilegeEscalation"] is False
        assert "ALL" in init["securityContext"]["capabilities"]["drop"]


def test_the_tracker_is_probed_confined_and_has_a_disruption_budget() -> None:
    pod = _one("Deployment")["spec"]["template"]["spec"]
    (tracker,) = pod["containers"]
    assert tracker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert tracker["securityContext"]["readOnlyRootFilesystem"] is True
    pdb = _one("PodDisruptionBudget")
    assert pdb["spec"]["selector"] == _one("Deployment")["spec"]["selector"]
