"""`p2pdist kubernetes render|topology`: the Kubernetes install, and the agent's topology init step.

Hooks for the main command line: `add_parser(subparsers)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  p2pdist kubernetes render > p2pdist.yaml && kubectl apply -f p2pdist.yaml
  p2pdist kubernetes render --set secret.create=false --set tracker.replicas=5 --output p2pdist.yaml
  p2pdist kubernetes render --values my-cluster.toml --set agent.capacity=100GiB
  p2pdist kubernetes render --set redis.enabled=false        # one tracker, state in memory
  p2pdist kubernetes render --uninstall > p2pdist-uninstall.yaml

See deploy/README.md for the walkthrough (install, values, uninstall)."""

RENDER_EXAMPLES = """\
Values, lowest precedence first: the defaults, --values FILE.toml, then each --set in order.
KEY is a dotted path; VALUE is read as TOML when it is one (5, true, ["docker.io", "quay.io"]),
else as text (20GiB). Every key, with its default:

  namespace = "kube-system"            image = "ghcr.io/p2pdist/p2pdist:<version>"
  image_pull_policy = "IfNotPresent"
  [agent]       capacity = "20GiB", registries = ["docker.io"], store_path = "/var/lib/p2pdist",
                mirror_port = 65001, api_port = 65002, peer_port = 65003, metrics_listen = "",
                zone_label = "topology.kubernetes.io/zone", rack_label = "topology.kubernetes.io/rack",
                priority_class = "system-node-critical", resources = {requests = {...}, limits = {...}},
                settings = {}   (more agent.toml keys, e.g. {limits = {upload_slots = 3}})
  [containerd]  configure = true, config_path = "/etc/containerd/certs.d",
                config_file = "/etc/containerd/config.toml", default_host = true
  [tracker]     replicas = 3 with Redis, else 1; port = 7070; resources
  [redis]       enabled = true, image = "redis:7.2.5-alpine", resources
  [secret]      create = true, name = "p2pdist-cluster-token", token = "" (a placeholder: change it)

examples:
  p2pdist kubernetes render --set tracker.replicas=5
  p2pdist kubernetes render --set 'agent.registries=["docker.io", "quay.io"]' --set agent.capacity=100GiB
  p2pdist kubernetes render --uninstall --purge-store

exit status: 0 rendered; 2 a bad value (one line on stderr, nothing printed)."""

TOPOLOGY_EXAMPLES = """\
Run in the agent pod's init container with a service account that may `get nodes`: reads the Node
from the API server (KUBERNETES_SERVICE_HOST/PORT, the token and ca.crt in
/var/run/secrets/kubernetes.io/serviceaccount) and writes the base config with zone and rack set
from the node's labels. A label the node lacks leaves the base's value (empty): no failure.

examples:
  p2pdist kubernetes topology --node "$NODE_NAME" --base /etc/p2pdist/agent.toml --output /run/p2pdist/agent.toml
  p2pdist kubernetes topology --node worker-3 --rack-label example.com/rack --output agent.toml

exit status: 0 written; 1 the API server could not be asked or refused (the message says why);
2 a bad option."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add `kubernetes` and its subcommands to the main parser's subparsers."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = subparsers.add_parser(
        "kubernetes", help="render the Kubernetes install; the agent's topology init step",
        description="Install p2pdist on Kubernetes from one set of values: the agent DaemonSet, the tracker, "
                    "Redis, RBAC, Secret and ConfigMap, as YAML for kubectl apply.",
        epilog=EXAMPLES, formatter_class=formatter)
    sub = parser.add_subparsers(dest="kubernetes_command", required=True, metavar="ACTION")

    r = sub.add_parser("render", help="print the install (or the uninstall) as multi-document YAML",
                       description="Print every Kubernetes object of the install as YAML.",
                       epilog=RENDER_EXAMPLES, formatter_class=formatter)
    r.add_argument("--values", type=Path, metavar="FILE.toml", help="values file (TOML)")
    r.add_argument("--set", action="append", dest="assignments", default=[], metavar="KEY=VALUE",
                   help="one value, e.g. tracker.replicas=5 (repeatable; wins over --values)")
    r.add_argument("--output", "-o", type=Path, metavar="FILE", help="write here instead of standard output")
    r.add_argument("--uninstall", action="store_true",
                   help="render the DaemonSet that takes the mirror out of containerd on every node instead")
    r.add_argument("--purge-store", action="store_true",
                   help="with --uninstall: also empty the store (agent.store_path) on every node")

    t = sub.add_parser("topology", help="write the agent's config with its node's zone and rack",
                       description="Write the agent TOML: the base config plus zone and rack from the node's "
                                   "topology labels, read from the Kubernetes API.",
                       epilog=TOPOLOGY_EXAMPLES, formatter_class=formatter)
    t.add_argument("--node", default=os.environ.get("NODE_NAME", ""),
                   help="the node's name (the pod's spec.nodeName; default $NODE_NAME)")
    t.add_argument("--output", type=Path, required=True, metavar="FILE", help="the agent TOML to write")
    t.add_argument("--base", type=Path, metavar="FILE", help="the base agent TOML to add zone and rack to")
    t.add_argument("--zone-label", default="topology.kubernetes.io/zone",
                   help="node label holding the zone (default %(default)s)")
    t.add_argument("--rack-label", default="topology.kubernetes.io/rack",
                   help="node label holding the rack (default %(default)s)")
    t.add_argument("--api-server", metavar="URL",
                   help="the API server (default https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT)")
    t.add_argument("--service-account", type=Path, metavar="DIR",
                   default=Path("/var/run/secrets/kubernetes.io/serviceaccount"),
                   help="folder with the token and ca.crt (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    if args.kubernetes_command == "render":
        return _render(args)
    return _topology(args)


def _render(args: argparse.Namespace) -> int:
    from p2pdist.deploy.kubernetes import render, render_uninstall, to_yaml
    from p2pdist.deploy.values import ConfigError, load_values

    if args.purge_store and not args.uninstall:
        print("p2pdist kubernetes render: --purge-store goes with --uninstall", file=sys.stderr)
        return 2
    try:
        values = load_values(args.values, args.assignments)
        objects = render_uninstall(values, args.purge_store) if args.uninstall else render(values)
    except ConfigError as e:
        print(f"p2pdist kubernetes render: {e}", file=sys.stderr)
        return 2
    command = "p2pdist kubernetes render" + (" --uninstall" if args.uninstall else "")
    text = to_yaml(objects, values, command)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text)
    except OSError as e:
        print(f"p2pdist kubernetes render: cannot write {args.output}: {e.strerror or e}", file=sys.stderr)
        return 1
    return 0


def _topology(args: argparse.Namespace) -> int:
    from p2pdist.deploy.topology import (
        ApiServer,
        TopologyError,
        agent_toml,
        fetch_node,
        node_topology,
        read_base,
        write_config,
    )

    if not args.node:
        print("p2pdist kubernetes topology: --node is required (or $NODE_NAME)", file=sys.stderr)
        return 2
    try:
        base = read_base(args.base)
        api = ApiServer.in_cluster(account=args.service_account, url=args.api_server)
        topology = node_topology(fetch_node(api, args.node), args.zone_label, args.rack_label)
        write_config(args.output, agent_toml(base, topology))
    except TopologyError as e:
        print(f"p2pdist kubernetes topology: {e}", file=sys.stderr)
        return 1
    for what, value, label in (("zone", topology.zone, args.zone_label), ("rack", topology.rack, args.rack_label)):
        print(f"{what}: {value!r} (node label {label})" if value is not None
              else f"{what}: none (node {args.node} has no label {label})")
    print(f"wrote {args.output}")
    return 0
