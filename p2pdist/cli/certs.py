"""`p2pdist certs`: the cluster CA, server certificates, and node credentials.

`init` makes, in one directory kept by the operator: the CA (ca.pem, ca-key.pem) and the cluster
secret (cluster-secret). `issue NAME` makes NAME.pem/NAME-key.pem for a server (tracker or node),
valid for the addresses given with --host, and NAME.credential: the node's identity (its id, an
expiry, its key, the tracker's ticket key). A node gets its three files and ca.pem, never the CA key
or the cluster secret; the tracker gets its certificate and the cluster secret.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

from p2pdist.core.identity import AuthError, NodeCredential, valid_node_id
from p2pdist.tls import SECRET_FILE, CertError, init_ca, issue_cert, write_private

EXAMPLES = """\
examples:
  p2pdist certs init --dir /etc/p2pdist/ca
  p2pdist certs issue tracker --dir /etc/p2pdist/ca --host tracker.example --host 10.0.0.5 --no-credential
  p2pdist certs issue node-7 --dir /etc/p2pdist/ca --host 10.0.1.7

then, on the tracker:   P2PDIST_TRACKER_CLUSTER_TOKEN=$(cat ca/cluster-secret)
                        p2pdist-tracker --listen 0.0.0.0:7070 --tls-cert ca/tracker.pem --tls-key ca/tracker-key.pem
and on node-7:          p2pdist daemon --tracker https://10.0.0.5:7070 --node-credential ca/node-7.credential \\
                          --tls-ca ca/ca.pem --tls-cert ca/node-7.pem --tls-key ca/node-7-key.pem \\
                          --peer-listen 0.0.0.0:65003 --peer-advertise 10.0.1.7:65003

Keep ca-key.pem and cluster-secret on the operator's machine (and the secret on the tracker): with
them anyone can mint any node. A node's credential expires (--days); issue a new one before then.
"""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("certs", help="make the cluster CA, certificates and node credentials",
                              description="Make the cluster CA and secret (init), then a TLS certificate "
                                          "and a node credential per node and one for the tracker (issue).",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="certs_command", required=True, metavar="ACTION")
    i = sub.add_parser("init", help="make the cluster CA and the cluster secret")
    i.add_argument("--dir", type=Path, default=Path("p2pdist-ca"), help="where to write them (default %(default)s)")
    i.add_argument("--days", type=int, default=3650, help="CA validity in days (default %(default)s)")
    s = sub.add_parser("issue", help="a certificate (and node credential) for one tracker or node")
    s.add_argument("name", help="the node id (or 'tracker'): names the files and the credential's node")
    s.add_argument("--dir", type=Path, default=Path("p2pdist-ca"), help="the CA's directory (default %(default)s)")
    s.add_argument("--host", action="append", default=[], metavar="IP|DNS",
                   help="an address others dial this server by (repeatable; at least one)")
    s.add_argument("--days", type=int, default=365, help="certificate and credential validity (default %(default)s)")
    s.add_argument("--no-credential", action="store_true", help="certificate only (for the tracker)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.certs_command == "init":
            return _init(args.dir, args.days)
        return _issue(args.dir, args.name, args.host, args.days, not args.no_credential)
    except (CertError, AuthError) as e:
        print(f"p2pdist certs: {e}", file=sys.stderr)
        return 1


def _init(directory: Path, days: int) -> int:
    cert = init_ca(directory, days)
    secret_path = directory / SECRET_FILE
    if not secret_path.exists():
        write_private(secret_path, (secrets.token_urlsafe(32) + "\n").encode())
    print(f"cluster CA: {cert} (give to every node and the tracker)")
    print(f"CA key:     {directory / 'ca-key.pem'} (keep here)")
    print(f"secret:     {secret_path} (the tracker's cluster_token; keep here)")
    return 0


def _issue(directory: Path, name: str, hosts: list[str], days: int, credential: bool) -> int:
    secret = ""
    if credential:
        try:
            secret = (directory / SECRET_FILE).read_text().strip()
        except FileNotFoundError:
            raise CertError(f"no cluster secret in {directory}: run `p2pdist certs init --dir {directory}` "
                            f"(or pass --no-credential for a certificate only)") from None
        if not valid_node_id(name):  # before any file is written
            raise CertError(f"node id {name[:40]!r} must be 1-128 characters of A-Z a-z 0-9 . _ : @ -")
    issued = issue_cert(directory, name, hosts, days)
    print(f"certificate: {issued.cert}")
    print(f"key:         {issued.key}")
    if credential:
        cred = NodeCredential.issue(secret, name, int(time.time()) + days * 86400)
        path = directory / f"{name}.credential"
        write_private(path, (cred.encode() + "\n").encode())
        print(f"credential:  {path} (node {name!r}, expires in {days} days)")
    return 0
