"""The Kubernetes install, rendered from one set of values (p2pdist.deploy.kubernetes), validates
against the Kubernetes schemas (kubernetes-validate, strict: no unknown fields) for the default
values and others, carries what a node needs (the tracker resolvable from the host network, probes
on /healthz and /readyz, least privilege, every node, a capped store, zone and rack from the node),
and is exactly what deploy/kubernetes/ holds, so the checked-in files cannot drift."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from p2pdist.cli.main import main
from p2pdist.deploy.kubernetes import PLACEHOLDER_TOKEN, render, render_uninstall, to_yaml
from p2pdist.deploy.values import ConfigError, Values, load_values

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
VERSION = "1.33.0"

VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "no-redis": ["redis.enabled=false"],
    "own-namespace": ["namespace=p2pdist", "tracker.replicas=5", "secret.create=false",
                      'agent.registries=["docker.io", "quay.io", "http://10.0.0.5:5000"]',
                      "agent.metrics_listen=0.0.0.0:9402", "containerd.default_host=false"],
    "no-containerd": ["containerd.configure=false", "agent.settings.limits.upload_slots=3"],
}


def _resources(values: Values | None = None) -> list[dict]:
    return render(values or Values())


def _one(kind: str, resources: list[dict] | None = None) -> dict:
    (found,) = [d for d in (resources or _resources()) if d["kind"] == kind]
    return found


def _named(resources: list[dict], kind: str, name: str) -> dict:
    (found,) = [d for d in resources if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def _all_rendered() -> list[tuple[str, dict]]:
    rendered = []
    for label, sets in VALUE_SETS.items():
        rendered += [(label, d) for d in render(load_values(None, sets))]
    rendered += [("uninstall", d) for d in render_uninstall(Values(), purge_store=True)]
    return rendered


@pytest.mark.parametrize(("values", "resource"), _all_rendered(),
                         ids=lambda x: x if isinstance(x, str) else f"{x['kind']}/{x['metadata']['name']}")
def test_every_resource_validates_strictly(values: str, resource: dict) -> None:
    kubernetes_validate.validate(resource, VERSION, strict=True)


def test_a_misspelt_field_is_caught() -> None:
    """The control: the validator refuses what it should (a broken check must not pass)."""
    broken = _one("DaemonSet")
    broken["spec"]["template"]["spec"]["dnsPolicyy"] = "ClusterFirstWithHostNet"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSION, strict=True)


def test_the_checked_in_manifests_are_the_default_render() -> None:
    fix = "regenerate: p2pdist kubernetes render -o deploy/kubernetes/p2pdist.yaml (and --uninstall)"
    assert (DEPLOY / "p2pdist.yaml").read_text() == to_yaml(render(Values()), Values()), fix
    uninstall = to_yaml(render_uninstall(Values()), Values(), "p2pdist kubernetes render --uninstall")
    assert (DEPLOY / "uninstall" / "p2pdist-uninstall.yaml").read_text() == uninstall, fix
    # Nothing else that kubectl would apply from the folder: no hand-written leftovers.
    assert sorted(p.name for p in DEPLOY.glob("*.y*ml")) == ["p2pdist.yaml"]
    # And the YAML reads back as the very objects rendered.
    assert [d for d in yaml.safe_load_all((DEPLOY / "p2pdist.yaml").read_text()) if d] == render(Values())


def test_the_example_values_file_renders() -> None:
    values = load_values(DEPLOY / "values.example.toml")
    for resource in render(values):
        kubernetes_validate.validate(resource, VERSION, strict=True)


def test_the_agent_daemonset_reaches_the_tracker_and_is_probed_and_confined() -> None:
    resources = _resources()
    pod = _one("DaemonSet", resources)["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert {"operator": "Exists"} in pod["tolerations"]
    assert pod["priorityClassName"] == "system-node-critical"
    (agent,) = pod["containers"]
    for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert agent[probe]["httpGet"] == {"path": path, "port": 65002, "host": "127.0.0.1"}
    ctx = agent["securityContext"]
    assert ctx["runAsNonRoot"] is True and ctx["runAsUser"] != 0 and ctx["allowPrivilegeEscalation"] is False
    assert ctx["readOnlyRootFilesystem"] is True and ctx["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    env = {e["name"]: e for e in agent["env"]}
    assert env["P2PDIST_CAPACITY"]["value"] == "20GiB"  # the store never fills the node's disk unbounded
    assert env["P2PDIST_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "p2pdist-cluster-token",
                                                                         "key": "token"}
    store = next(v for v in pod["volumes"] if v["name"] == "store")
    assert store["hostPath"]["path"] == "/var/lib/p2pdist"
    # The agent runs on the config the topology step wrote; the tracker by its Service name there
    # (resolvable with the dnsPolicy).
    assert agent["command"] == ["p2pdist", "daemon", "--config", "/run/p2pdist/agent.toml"]
    base = tomllib.loads(_one("ConfigMap", resources)["data"]["agent.toml"])
    assert base["tracker"] == "http://p2pdist-tracker.kube-system.svc:7070"
    assert _named(resources, "Service", "p2pdist-tracker")["metadata"]["namespace"] == "kube-system"
    for init in pod["initContainers"]:
        assert init["securityContext"]["allowPrivilegeEscalation"] is False
        assert "ALL" in init["securityContext"]["capabilities"]["drop"]
        assert init["securityContext"]["readOnlyRootFilesystem"] is True


def test_init_containers_configure_containerd_then_write_the_node_topology() -> None:
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    init = {c["name"]: c for c in pod["initContainers"]}
    assert list(init) == ["store-owner", "configure-containerd", "topology"]
    configure = init["configure-containerd"]["command"]
    assert configure[:3] == ["p2pdist", "configure", "containerd"] and "--remove" not in configure
    assert configure[configure.index("--config-path") + 1] == "/etc/containerd/certs.d"
    assert configure[configure.index("--registry") + 1] == "docker.io"
    topology = init["topology"]
    command = topology["command"]
    assert command[:3] == ["p2pdist", "kubernetes", "topology"]
    assert command[command.index("--node") + 1] == "$(NODE_NAME)"
    assert command[command.index("--zone-label") + 1] == "topology.kubernetes.io/zone"
    assert command[command.index("--rack-label") + 1] == "topology.kubernetes.io/rack"
    assert command[command.index("--output") + 1] == "/run/p2pdist/agent.toml"
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in topology["env"]
    assert topology["securityContext"]["runAsNonRoot"] is True


def test_only_the_topology_step_holds_an_api_token_and_it_may_only_get_nodes() -> None:
    resources = _resources()
    pod = _one("DaemonSet", resources)["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "p2pdist-agent"
    token_mounts = {c["name"] for c in pod["initContainers"] + pod["containers"]
                    for m in c.get("volumeMounts", []) if m["name"] == "kube-api-access"}
    assert token_mounts == {"topology"}
    role = _one("ClusterRole", resources)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    binding = _one("ClusterRoleBinding", resources)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "p2pdist-agent", "namespace": "kube-system"}]
    assert _one("ServiceAccount", resources)["automountServiceAccountToken"] is False


def test_the_tracker_has_replicas_on_redis_a_budget_and_is_confined() -> None:
    resources = _resources()
    deployment = _named(resources, "Deployment", "p2pdist-tracker")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    (tracker,) = pod["containers"]
    assert tracker["command"] == ["p2pdist-tracker", "--listen", "0.0.0.0:7070"]
    assert tracker["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 7070}
    assert tracker["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": 7070}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert tracker["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in tracker["env"]}
    assert env["P2PDIST_TRACKER_REDIS"]["value"] == "redis://p2pdist-redis.kube-system.svc:6379/0"
    assert env["P2PDIST_TRACKER_CLUSTER_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "p2pdist-cluster-token"
    pdb = _one("PodDisruptionBudget", resources)
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": deployment["spec"]["selector"]}
    service = _named(resources, "Service", "p2pdist-tracker")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_redis_is_pinned_non_root_ephemeral_and_probed() -> None:
    resources = _resources()
    deployment = _named(resources, "Deployment", "p2pdist-redis")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    (redis,) = pod["containers"]
    name, _, tag = redis["image"].partition(":")
    assert name == "redis" and tag[0].isdigit() and tag.count(".") == 2  # a patch release, not "latest"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert redis["securityContext"]["readOnlyRootFilesystem"] is True
    assert {"name": "data", "mountPath": "/data"} in redis["volumeMounts"]
    assert {"name": "data", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]
    assert redis["livenessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert redis["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    assert _named(resources, "Service", "p2pdist-redis")["spec"]["ports"][0]["port"] == 6379
    policy = _one("NetworkPolicy", resources)
    assert policy["spec"]["ingress"][0]["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "p2pdist-tracker"}}}]


def test_without_redis_one_tracker_and_no_redis_objects() -> None:
    resources = render(load_values(None, ["redis.enabled=false"]))
    assert _named(resources, "Deployment", "p2pdist-tracker")["spec"]["replicas"] == 1
    tracker = _named(resources, "Deployment", "p2pdist-tracker")["spec"]["template"]["spec"]["containers"][0]
    assert "P2PDIST_TRACKER_REDIS" not in {e["name"] for e in tracker["env"]}
    assert not [d for d in resources if "redis" in d["metadata"]["name"]]
    with pytest.raises(ConfigError, match=r"redis\.enabled"):
        load_values(None, ["redis.enabled=false", "tracker.replicas=2"])


def test_other_values_reach_the_objects() -> None:
    resources = render(load_values(None, VALUE_SETS["own-namespace"]))
    assert resources[0]["kind"] == "Namespace" and resources[0]["metadata"]["name"] == "p2pdist"
    assert "Secret" not in {d["kind"] for d in resources}  # made beforehand with kubectl
    assert {d["metadata"].get("namespace", "p2pdist") for d in resources} == {"p2pdist"}
    assert _named(resources, "Deployment", "p2pdist-tracker")["spec"]["replicas"] == 5
    base = tomllib.loads(_one("ConfigMap", resources)["data"]["agent.toml"])
    assert base["tracker"] == "http://p2pdist-tracker.p2pdist.svc:7070"
    assert base["metrics_listen"] == "0.0.0.0:9402"
    assert base["upstream"] == [{"registry": "docker.io"}, {"registry": "quay.io"},
                                {"registry": "10.0.0.5:5000", "plain_http": True}]
    pod = _one("DaemonSet", resources)["spec"]["template"]["spec"]
    configure = next(c for c in pod["initContainers"] if c["name"] == "configure-containerd")["command"]
    assert configure.count("--registry") == 3 and "--no-default-host" in configure
    tracker = _named(resources, "Deployment", "p2pdist-tracker")["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in tracker["env"]}
    assert env["P2PDIST_TRACKER_REDIS"] == "redis://p2pdist-redis.p2pdist.svc:6379/0"


def test_a_changed_agent_config_rolls_the_agents() -> None:
    def stamp(values: Values) -> str:
        return _one("DaemonSet", render(values))["spec"]["template"]["metadata"]["annotations"][
            "p2pdist.io/config-sha256"]

    assert stamp(Values()) == stamp(Values())
    assert stamp(Values()) != stamp(load_values(None, ["agent.settings.limits.upload_slots=3"]))


def test_agent_settings_the_agent_would_refuse_are_refused_at_render() -> None:
    with pytest.raises(ConfigError, match="upload_slotz"):
        render(load_values(None, ["agent.settings.limits.upload_slotz=3"]))
    with pytest.raises(ConfigError, match="upload_slots"):
        render(load_values(None, ["agent.settings.limits.upload_slots=0"]))


def test_uninstall_removes_the_mirror_on_every_node() -> None:
    (daemonset,) = render_uninstall(Values(), purge_store=True)
    pod = daemonset["spec"]["template"]["spec"]
    assert {"operator": "Exists"} in pod["tolerations"]
    init = {c["name"]: c["command"] for c in pod["initContainers"]}
    assert init["unconfigure-containerd"][:4] == ["p2pdist", "configure", "containerd", "--remove"]
    assert "/etc/containerd/certs.d" in init["unconfigure-containerd"]
    # Under the store's lock, so it waits for an agent still running rather than delete under it.
    assert init["purge-store"] == ["p2pdist", "cache", "gc", "--data-dir", "/var/lib/p2pdist", "--keep", "0",
                                   "--partials"]
    for container in pod["initContainers"] + pod["containers"]:
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
    (plain,) = render_uninstall(Values())
    assert [c["name"] for c in plain["spec"]["template"]["spec"]["initContainers"]] == ["unconfigure-containerd"]


def test_the_default_secret_is_a_placeholder_the_yaml_warns_about() -> None:
    text = to_yaml(render(Values()), Values())
    assert PLACEHOLDER_TOKEN in text and "# CHANGE THIS TOKEN" in text
    secret = _one("Secret")
    assert secret["metadata"]["name"] == "p2pdist-cluster-token" and secret["stringData"]["token"]
    chosen = render(load_values(None, ["secret.token=a-long-random-one"]))
    assert _one("Secret", chosen)["stringData"]["token"] == "a-long-random-one"
    assert "CHANGE THIS TOKEN" not in to_yaml(chosen, Values())


# The command line.

def test_render_prints_the_yaml_with_set_values(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kubernetes", "render", "--set", "tracker.replicas=5"]) == 0
    docs = [d for d in yaml.safe_load_all(capsys.readouterr().out) if d]
    assert _named(docs, "Deployment", "p2pdist-tracker")["spec"]["replicas"] == 5
    assert docs == render(load_values(None, ["tracker.replicas=5"]))


def test_render_reads_a_values_file_and_set_wins(tmp_path: Path) -> None:
    values = tmp_path / "values.toml"
    values.write_text('namespace = "p2pdist"\n[tracker]\nreplicas = 4\n[agent]\ncapacity = "100GiB"\n')
    out = tmp_path / "out.yaml"
    assert main(["kubernetes", "render", "--values", str(values), "--set", "tracker.replicas=2", "-o", str(out)]) == 0
    docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
    assert _named(docs, "Deployment", "p2pdist-tracker")["spec"]["replicas"] == 2
    agent = _one("DaemonSet", docs)["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "P2PDIST_CAPACITY", "value": "100GiB"} in agent["env"]


@pytest.mark.parametrize("assignment", ["tracker.replicas=0", "tracker.replicaz=3", "tracker.replicas",
                                        "agent.capacity=lots", "namespace=Kube_System",
                                        "agent.settings.no_such_setting=1"])
def test_a_bad_value_is_one_line_and_exit_2(assignment: str) -> None:
    # A real process: the exit status and stderr exactly as an operator sees them.
    done = subprocess.run([sys.executable, "-m", "p2pdist", "kubernetes", "render", "--set", assignment],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("p2pdist kubernetes render: "), done.stderr
    assert assignment.split("=")[0].rsplit(".", 1)[-1] in lines[0]


def test_help_shows_examples(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["kubernetes", "render", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--set tracker.replicas=5" in out and "--uninstall" in out
