"""TLS for tracker and peer traffic: a cluster CA, certificates it issues, and the SSL contexts.

``p2pdist certs init`` makes the CA (and the cluster secret beside it); ``p2pdist certs issue NAME
--host ...`` makes a server certificate for the tracker or a node, and the node's credential. Keys
are ECDSA P-256: every TLS stack takes them, and they are quick to make and to handshake.
Servers present their certificate; clients verify it against the cluster CA and the host they dialed
(an IP address or a DNS name in the certificate). Node identity is the credential's business
(``p2pdist.core.identity``), not the certificate's: TLS here keeps it and the data private.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .errors import P2pdistError

CA_CERT = "ca.pem"
CA_KEY = "ca-key.pem"
SECRET_FILE = "cluster-secret"


class CertError(P2pdistError):
    """A certificate or key that cannot be made or used; the message names the file and the fix."""


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only; an existing file is never replaced."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise CertError(f"{path} exists: remove it first, or choose another --dir") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def write_public(path: Path, data: bytes) -> None:
    if path.exists():
        raise CertError(f"{path} exists: remove it first, or choose another --dir")
    path.write_bytes(data)


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "p2pdist"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def init_ca(directory: Path, days: int = 3650, name: str = "p2pdist cluster CA") -> Path:
    """Make the cluster CA in ``directory``: ca.pem (share with every node), ca-key.pem (keep)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for f in (CA_CERT, CA_KEY):
        if (directory / f).exists():
            raise CertError(f"{directory / f} exists: this directory already has a CA")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_private(directory / CA_KEY, _key_pem(key))
    write_public(directory / CA_CERT, cert.public_bytes(serialization.Encoding.PEM))
    return directory / CA_CERT


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return x509.DNSName(host)


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def issue_cert(directory: Path, name: str, hosts: list[str], days: int = 365) -> Issued:
    """A server certificate for ``name`` valid for ``hosts`` (IPs or DNS names), signed by the CA in
    ``directory``: NAME.pem and NAME-key.pem there."""
    if not hosts:
        raise CertError("a certificate needs at least one --host: the address or DNS name others dial")
    try:
        ca_key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
    except FileNotFoundError as e:
        raise CertError(f"no cluster CA in {directory} ({e.filename} missing): run `p2pdist certs init` first") \
            from None
    except ValueError as e:
        raise CertError(f"the CA in {directory} is unreadable: {e}") from None
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise CertError(f"{directory / CA_KEY} is not an ECDSA key made by `p2pdist certs init`")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + datetime.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    issued = Issued(directory / f"{name}.pem", directory / f"{name}-key.pem")
    write_private(issued.key, _key_pem(key))
    write_public(issued.cert, cert.public_bytes(serialization.Encoding.PEM)
                  + ca_cert.public_bytes(serialization.Encoding.PEM))
    return issued


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """What a tracker or peer port serves HTTPS with."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise CertError(f"cannot load the TLS certificate {cert} with key {key}: {e}") from None
    return ctx


def client_context(ca: Path | None) -> ssl.SSLContext:
    """What agents verify the tracker and peers with: the cluster CA (else the system's trust store)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca is not None:
        try:
            ctx.load_verify_locations(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise CertError(f"cannot load the cluster CA {ca}: {e}") from None
    return ctx
