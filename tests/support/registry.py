"""A real CNCF distribution registry (``docker-registry``) for tests, started and stopped by PID.

The registry runs as a subprocess on 127.0.0.1 with its own config, storage and log in a temp dir.
Optional auth: htpasswd basic auth, or token auth backed by :class:`TokenIssuer`, a small in-process
token server with per-user rights that signs ES256 JWTs (``x5c`` header, checked by distribution 2.8
against its ``rootcertbundle``) and speaks both the GET token protocol and the OAuth2 POST form.

Byte accounting comes from the registry's own log (JSON formatter): every successful response logs
``"msg": "response completed"`` with ``http.response.written``, the body bytes it actually wrote.
The access log (Apache combined format on stdout) has one line for *every* request, 401s included,
so :meth:`Registry.requests` is built from it.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import fnmatch
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from p2pdist.cli.demo.procs import free_port

BINARY = "docker-registry"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
PUSH_USER_AGENT = "p2pdist-test-push"
SYNC_USER_AGENT = "p2pdist-test-log-sync"

_BLOB_PATH = re.compile(r"^/v2/(?P<repo>.+)/blobs/(?P<digest>sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})$")
# host ident user [time] "METHOD URI PROTO" status size "referer" "user-agent"
_ACCESS_LINE = re.compile(
    r'^(?P<remote>\S+) \S+ (?P<user>\S+) \[[^\]]+\] "(?P<method>[A-Z]+) (?P<uri>\S+) [^"]*" '
    r'(?P<status>\d{3}) (?P<size>\d+|-) "[^"]*" "(?P<ua>[^"]*)"$'
)


class RegistryError(RuntimeError):
    """The test registry could not be started or refused a push."""


def htpasswd_line(user: str, password: str) -> str:
    """One bcrypt htpasswd line, as distribution's htpasswd auth requires (bcrypt only)."""
    try:
        import bcrypt
    except ImportError:
        tool = shutil.which("htpasswd")
        if tool is None:
            raise RegistryError(
                "need the 'bcrypt' Python package (pip install bcrypt) or htpasswd "
                "(apt-get install -y apache2-utils) to write an htpasswd file"
            ) from None
        # -C 4: the cheapest bcrypt cost; the registry checks it on every request.
        out = subprocess.run([tool, "-nbB", "-C", "4", user, password], check=True, capture_output=True)
        return out.stdout.decode().strip()
    # Cost 4 for the same reason: the default (12) costs the registry ~200 ms per request.
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    return f"{user}:{hashed}"


def libtrust_key_id(public_key: Any) -> str:
    """The key ID libtrust derives from a public key (distribution 2.8 matches a JWT ``kid`` to it).

    sha256 of the DER SubjectPublicKeyInfo, first 240 bits, base32, in 12 colon-separated groups of 4.
    Our tokens carry ``x5c`` instead; this stays for tests that want to build ``kid`` tokens themselves.
    """
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    b32 = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(b32[i : i + 4] for i in range(0, 48, 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def basic_header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# A rule grants actions on the repositories (or, as "TYPE:PATTERN", other resources such as
# "registry:catalog") whose name matches an fnmatch pattern: "private/*" grants pull,
# ("private/*", ["pull", "push"]) the listed actions, ("*", ["*"]) any action asked for.
Rule = str | tuple[str, Iterable[str]]
Rights = Mapping[str | None, Iterable[Rule]]
ALL_ACTIONS = ("*",)


@dataclass(frozen=True)
class TokenRequest:
    """One request the token issuer answered (refused ones included)."""

    user: str | None  # None: anonymous (or credentials that were refused)
    service: str | None
    scopes: tuple[str, ...]  # as requested: GET's scope params, POST's space-separated scope field(s)
    status: int
    method: str = "GET"  # "GET" (Docker token protocol) or "POST" (OAuth2 form)
    # What the token grants, as scope strings with the granted actions ("repository:public/x:pull");
    # requested scopes granted nothing are absent, as they are from the token's ``access`` claim.
    granted: tuple[str, ...] = ()
    grant_type: str | None = None  # POST: "password" or "refresh_token"
    client_id: str | None = None
    refresh_token_issued: bool = False  # a new refresh token was handed out (offline_token / access_type)
    username: str | None = None  # the username presented, also when refused (``user`` is None then)

    @property
    def denied(self) -> tuple[str, ...]:
        """Requested scopes the token grants nothing for (all of them when status is not 200)."""
        names = {s.rsplit(":", 1)[0] for s in self.granted}
        return tuple(s for s in self.scopes if s.rsplit(":", 1)[0] not in names)


@dataclass(frozen=True)
class RequestRecord:
    """One request the registry answered, from its access log."""

    method: str
    path: str
    query: str
    status: int
    written: int
    remote: str
    user_agent: str


_Answer = tuple[TokenRequest, Any, dict[str, str]]  # the record, the JSON body, extra headers


class _Refused(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


class TokenIssuer:
    """A Docker token server on 127.0.0.1 (``/token``), in a thread, with per-user rights.

    Speaks both halves of the protocol: ``GET /token?service=&scope=...`` with basic credentials or
    none (skopeo, podman, dockerd, containerd without credentials) and the OAuth2 form ``POST /token``
    (``grant_type=password`` or ``refresh_token``; containerd with credentials, docker login).
    Tokens are ES256 JWTs whose header ``x5c`` holds the issuer's self-signed certificate, the one
    :meth:`certificate_pem` returns for the registry's ``rootcertbundle``.

    ``rights`` maps a user (None: anonymous) to rules (see :data:`Rule`); anonymous rules apply to
    every user too (public repositories are public). Each requested scope is granted the requested
    actions its rules allow, independently; a scope allowed nothing is left out of the token's
    ``access`` (the registry then answers 401 ``insufficient_scope``), as Docker Hub does. Anonymous
    requests get a 401 only when ``None`` is not in ``rights`` at all; bad credentials always do.

    Without ``rights`` (the old behaviour): every user may do anything, anonymous may pull
    everything with ``anonymous_pull`` and is refused (401) otherwise. Every request is recorded:
    :meth:`token_requests`.
    """

    def __init__(
        self,
        users: Mapping[str, str],
        *,
        rights: Rights | None = None,
        service: str = "p2pdist-test-registry",
        issuer: str = "p2pdist-test-issuer",
        expires_in: int = 300,
        anonymous_pull: bool = False,
        oauth_post: bool = True,
    ) -> None:
        self.users = dict(users)
        self.service = service
        self.issuer = issuer
        self.expires_in = expires_in
        # False: POST answers 405, like registries without the OAuth2 endpoint (clients fall back to GET).
        self.oauth_post = oauth_post
        if rights is None:
            rights = {user: [("*", ALL_ACTIONS), ("registry:*", ALL_ACTIONS)] for user in self.users}
        self.rights: dict[str | None, list[tuple[str, tuple[str, ...]]]] = {
            who: [_parse_rule(rule) for rule in rules] for who, rules in rights.items()
        }
        if anonymous_pull:
            self.anonymous_pull = True
        self.requests: list[TokenRequest] = []
        self._refresh_tokens: dict[str, str] = {}  # opaque refresh token -> user
        self._lock = threading.Lock()
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_id = libtrust_key_id(self.key.public_key())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)])
        now = datetime.datetime.now(datetime.UTC)
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self._x5c = [base64.b64encode(self.certificate.public_bytes(serialization.Encoding.DER)).decode()]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- rights -----------------------------------------------------------------------------------

    @property
    def anonymous_pull(self) -> bool:
        """Whether anonymous requests may pull every repository."""
        return any(pattern in ("*", "repository:*") and bool({"pull", "*"} & set(actions))
                   for pattern, actions in self.rights.get(None, []))

    @anonymous_pull.setter
    def anonymous_pull(self, value: bool) -> None:
        # True: anonymous pulls everything; False: anonymous token requests are refused (401).
        if value:
            self.rights[None] = [("*", ("pull",))]
        else:
            self.rights.pop(None, None)

    def allowed(self, user: str | None, scope_type: str, name: str) -> set[str]:
        """The actions ``user``'s rules (and the anonymous ones) allow on one resource."""
        allowed: set[str] = set()
        for who in {user, None}:
            for pattern, actions in self.rights.get(who, []):
                kind, _, name_pattern = pattern.rpartition(":")
                if (kind or "repository") == scope_type and fnmatch.fnmatchcase(name, name_pattern):
                    allowed.update(actions)
        return allowed

    def grant(self, user: str | None, scopes: Iterable[str]) -> list[dict[str, Any]]:
        """The ``access`` claim for ``scopes``: each scope independently, those allowed nothing left out."""
        access: list[dict[str, Any]] = []
        for scope in scopes:
            parts = scope.split(":")
            if len(parts) < 3:
                continue  # not TYPE:NAME:ACTIONS; grants nothing
            # The name may hold a colon (a registry host:port); a type may carry a class: "repository(plugin)".
            kind, name, wanted = parts[0].partition("(")[0], ":".join(parts[1:-1]), parts[-1].split(",")
            allowed = self.allowed(user, kind, name)
            actions = [a for a in dict.fromkeys(wanted) if a and ("*" in allowed or a in allowed)]
            if not actions:
                continue
            for entry in access:  # the same resource asked twice: one entry
                if (entry["type"], entry["name"]) == (kind, name):
                    entry["actions"] += [a for a in actions if a not in entry["actions"]]
                    break
            else:
                access.append({"type": kind, "name": name, "actions": actions})
        return access

    # -- tokens -----------------------------------------------------------------------------------

    @property
    def realm(self) -> str:
        assert self._server is not None, "token issuer not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}/token"

    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def token_requests(self) -> list[TokenRequest]:
        with self._lock:
            return list(self.requests)

    def mint(self, subject: str, access: list[dict[str, Any]], *, expires_in: int | None = None) -> str:
        """A signed registry token granting ``access`` (list of {type, name, actions}), no rules asked."""
        now = int(time.time())
        header = {"typ": "JWT", "alg": "ES256", "x5c": self._x5c}
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + (self.expires_in if expires_in is None else expires_in),
            # Back-dated: the registry rejects tokens "not yet valid" on the slightest clock skew.
            "nbf": now - 60,
            "iat": now,
            "jti": secrets.token_hex(8),
            "access": access,
        }
        signing_input = f"{_b64url(json.dumps(header).encode())}.{_b64url(json.dumps(claims).encode())}"
        der = self.key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        # JWS ES256: the raw 32-byte big-endian r and s, not the DER structure cryptography returns.
        return f"{signing_input}.{_b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    def new_refresh_token(self, user: str) -> str:
        """An opaque refresh token for ``user`` (what ``access_type=offline`` hands out)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh_tokens[token] = user
        return token

    # -- HTTP -------------------------------------------------------------------------------------

    def _check_service(self, service: str | None) -> None:
        if service is not None and service != self.service:
            raise _Refused(400, "invalid_request", f"unknown service {service!r}")

    def _password_user(self, name: str, password: str) -> str:
        if name not in self.users or not secrets.compare_digest(self.users[name], password):
            raise _Refused(401, "invalid_grant", "incorrect username or password")
        return name

    def _handle_get(self, handler: BaseHTTPRequestHandler, query: dict[str, list[str]]) -> _Answer:
        scopes = tuple(query.get("scope", []))
        service = query.get("service", [None])[0]
        client_id = query.get("client_id", [None])[0]
        record = TokenRequest(None, service, scopes, 401, "GET", client_id=client_id)
        auth = handler.headers.get("Authorization")
        try:
            self._check_service(service)
            user: str | None = None
            if auth is not None:
                scheme, _, value = auth.partition(" ")
                try:
                    name, _, password = base64.b64decode(value, validate=True).decode().partition(":")
                except ValueError:
                    scheme = ""
                if scheme.lower() != "basic":
                    raise _Refused(401, "invalid_client", "basic credentials expected")
                record = replace(record, username=name)
                user = self._password_user(name, password)
            elif None not in self.rights:
                raise _Refused(401, "invalid_client", "authentication required")
        except _Refused as refused:
            body = {"errors": [{"code": "UNAUTHORIZED" if refused.status == 401 else "DENIED",
                                "message": refused.description}]}
            headers = {"WWW-Authenticate": f'Basic realm="{self.issuer}"'} if refused.status == 401 else {}
            return replace(record, status=refused.status), body, headers
        access = self.grant(user, scopes)
        token = self.mint(user or "", access)
        document: dict[str, Any] = {"token": token, "access_token": token, **self._times()}
        offline = user is not None and query.get("offline_token", [""])[0].lower() == "true"
        if offline:
            assert user is not None
            document["refresh_token"] = self.new_refresh_token(user)
        record = replace(record, user=user, status=200, granted=_granted(access), refresh_token_issued=offline)
        return record, document, {}

    def _handle_post(self, form: dict[str, list[str]]) -> _Answer:
        def one(key: str) -> str | None:
            values = form.get(key)
            return values[0] if values else None

        scopes = tuple(s for value in form.get("scope", []) for s in value.split())
        service, grant_type, client_id = one("service"), one("grant_type"), one("client_id")
        record = TokenRequest(None, service, scopes, 400, "POST", grant_type=grant_type, client_id=client_id)
        try:
            if not self.oauth_post:
                raise _Refused(405, "unsupported", "POST is not supported; use GET")
            if not client_id:
                raise _Refused(400, "invalid_request", "client_id is required")
            if not service:
                raise _Refused(400, "invalid_request", "service is required")
            self._check_service(service)
            user: str | None
            if grant_type == "password":
                name, password = one("username") or "", one("password") or ""
                record = replace(record, username=name or None)
                # No username and no password: anonymous, for what anonymous may have.
                user = self._password_user(name, password) if name or password else None
            elif grant_type == "refresh_token":
                refresh = one("refresh_token") or ""
                with self._lock:
                    user = self._refresh_tokens.get(refresh)
                if user is None:
                    raise _Refused(401, "invalid_grant", "unknown refresh token")
                record = replace(record, username=user)
            elif not grant_type:
                raise _Refused(400, "invalid_request", "grant_type is required")
            else:
                raise _Refused(400, "unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
            if user is None and None not in self.rights:
                raise _Refused(401, "invalid_grant", "authentication required")
        except _Refused as refused:
            headers = {"Allow": "GET"} if refused.status == 405 else {}
            body = {"error": refused.error, "error_description": refused.description}
            return replace(record, status=refused.status), body, headers
        access = self.grant(user, scopes)
        document: dict[str, Any] = {"access_token": self.mint(user or "", access), **self._times()}
        document["scope"] = " ".join(_granted(access))
        issued = False
        # As the spec says: a refresh token only with access_type=offline (the one used, when refreshing).
        if user is not None and one("access_type") == "offline":
            if grant_type == "refresh_token":
                document["refresh_token"] = one("refresh_token")  # not rotated
            else:
                document["refresh_token"], issued = self.new_refresh_token(user), True
        record = replace(record, user=user, status=200, granted=_granted(access), refresh_token_issued=issued)
        return record, document, {}

    def _times(self) -> dict[str, Any]:
        issued = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return {"expires_in": self.expires_in, "issued_at": issued}

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        body = b""
        if method == "POST":
            length = int(handler.headers.get("Content-Length") or 0)
            body = handler.rfile.read(length) if length > 0 else b""
        url = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if url.path != "/token":
            record = TokenRequest(None, query.get("service", [None])[0], tuple(query.get("scope", [])), 404, method)
            answer: _Answer = record, {"errors": [{"code": "NOT_FOUND", "message": f"no such endpoint {url.path}"}]}, {}
        elif method == "POST":
            answer = self._handle_post(urllib.parse.parse_qs(body.decode(errors="replace"), keep_blank_values=True))
        else:
            answer = self._handle_get(handler, query)
        record, document, headers = answer
        # Recorded before the answer goes out: a client that has its token finds the record.
        with self._lock:
            self.requests.append(record)
        _reply(handler, record.status, document, headers)

    def start(self) -> TokenIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                issuer._handle(self, "GET")

            def do_POST(self) -> None:
                issuer._handle(self, "POST")

            def log_message(self, format: str, *args: Any) -> None:
                pass  # requests are recorded in issuer.requests instead

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for it, and stop() runs after every test.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="token-issuer", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None


def _parse_rule(rule: Rule) -> tuple[str, tuple[str, ...]]:
    if isinstance(rule, str):
        return rule, ("pull",)
    pattern, actions = rule
    if isinstance(actions, str):
        actions = actions.split(",")
    return pattern, tuple(actions)


def _granted(access: list[dict[str, Any]]) -> tuple[str, ...]:
    return tuple(f"{e['type']}:{e['name']}:{','.join(e['actions'])}" for e in access)


def _reply(
    handler: BaseHTTPRequestHandler, status: int, document: Any, headers: Mapping[str, str] | None = None
) -> None:
    body = json.dumps(document).encode()
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@dataclass
class Registry:
    """A running ``docker-registry serve`` on 127.0.0.1. Use as a context manager or start()/stop().

    auth: None (anonymous), "basic" (htpasswd with ``users``) or "token" (a :class:`TokenIssuer`
    with ``users`` and ``rights``, available as ``.issuer`` once started). Token ``rights`` default
    to Docker Hub style: anonymous may pull ``public/*`` only (with a token: anonymous requests
    need one too), the first user may do anything; other users get what anonymous gets unless
    ``rights`` says more. ``anonymous_pull=True`` lets anonymous pull everything. ``push_blob`` and
    ``push_image`` mint their tokens directly, whatever the rights. ``redirect_baseurl`` turns on
    distribution's ``redirect`` storage middleware: blob GETs answer 307 to baseurl + storage path,
    as a registry backed by S3 or a CDN would.
    """

    auth: Literal["basic", "token"] | None = None
    users: dict[str, str] = field(default_factory=lambda: {"alice": "secret-pw"})
    token_expires_in: int = 300
    anonymous_pull: bool = False
    rights: Rights | None = None  # token auth only; see TokenIssuer
    oauth_post: bool = True  # token auth: False makes the issuer answer POST with 405 (GET only)
    redirect_baseurl: str | None = None
    workdir: Path | None = None
    startup_timeout: float = 15.0

    port: int = field(init=False, default=0)
    issuer: TokenIssuer | None = field(init=False, default=None)
    _proc: subprocess.Popen[bytes] | None = field(init=False, default=None, repr=False)
    _own_workdir: bool = field(init=False, default=False, repr=False)
    _sync_counter: int = field(init=False, default=0, repr=False)

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        """The registry process (benchmarks read its CPU time)."""
        assert self._proc is not None, "the registry is not running"
        return self._proc.pid

    @property
    def root(self) -> Path:
        """The filesystem storage root (blobs live under docker/registry/v2/blobs/)."""
        assert self.workdir is not None
        return self.workdir / "storage"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "registry.log"

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> Registry:
        binary = shutil.which(BINARY)
        if binary is None:
            # Fail, never skip: a test run without the real origin proves nothing.
            raise RegistryError(
                f"{BINARY} not found on PATH: install CNCF distribution with "
                "'apt-get install -y --no-install-recommends docker-registry'"
            )
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="p2pdist-registry-"))
            self._own_workdir = True
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(exist_ok=True)
        try:
            if self.auth == "token":
                self.issuer = TokenIssuer(
                    self.users,
                    rights=self.token_rights(),
                    expires_in=self.token_expires_in,
                    anonymous_pull=self.anonymous_pull,
                    oauth_post=self.oauth_post,
                ).start()
            # free_port() can race with another process; a bind failure shows in the log, so retry.
            for attempt in range(3):
                self.port = free_port()
                config = self.workdir / "config.yml"
                config.write_text(json.dumps(self._config()))  # JSON is valid YAML
                if self._launch(binary, config, last=attempt == 2):
                    return self
        except BaseException:
            self.stop()
            raise
        raise AssertionError("unreachable")

    def token_rights(self) -> Rights:
        """The issuer's rights: ``rights``, else anonymous pulls public/* and the first user does anything."""
        if self.rights is not None:
            return self.rights
        rights: dict[str | None, list[Rule]] = {None: ["public/*"]}
        if self.users:
            rights[next(iter(self.users))] = [("*", ALL_ACTIONS), ("registry:*", ALL_ACTIONS)]
        return rights

    def _config(self) -> dict[str, Any]:
        assert self.workdir is not None
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {"accesslog": {"disabled": False}, "level": "info", "formatter": "json"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root)},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{self.port}", "secret": secrets.token_hex(16)},
        }
        if self.auth == "basic":
            htpasswd = self.workdir / "htpasswd"
            htpasswd.write_text("".join(htpasswd_line(u, p) + "\n" for u, p in self.users.items()))
            config["auth"] = {"htpasswd": {"realm": "p2pdist-test", "path": str(htpasswd)}}
        elif self.auth == "token":
            assert self.issuer is not None
            bundle = self.workdir / "token-ca.pem"
            bundle.write_bytes(self.issuer.certificate_pem())
            config["auth"] = {
                "token": {
                    "realm": self.issuer.realm,
                    "service": self.issuer.service,
                    "issuer": self.issuer.issuer,
                    "rootcertbundle": str(bundle),
                }
            }
        elif self.auth is not None:
            raise ValueError(f"unknown auth mode {self.auth!r}: use None, 'basic' or 'token'")
        if self.redirect_baseurl is not None:
            config["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": self.redirect_baseurl}}]}
        return config

    def _launch(self, binary: str, config: Path, *, last: bool) -> bool:
        """Start the process and wait until /v2/ answers. False: port taken, try another."""
        with open(self.log_path, "ab") as log:
            # One file for both streams: JSON app log (stderr) and access log (stdout) stay in order.
            self._proc = subprocess.Popen(
                [binary, "serve", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self._log_tail()
                self._proc = None
                if "address already in use" in tail and not last:
                    return False
                raise RegistryError(f"{BINARY} exited during startup; log tail:\n{tail}")
            # Probes carry the sync user agent so requests() leaves them out.
            probe = urllib.request.Request(f"{self.url}/v2/", headers={"User-Agent": SYNC_USER_AGENT})
            try:
                with urllib.request.urlopen(probe, timeout=1):
                    return True
            except urllib.error.HTTPError:
                return True  # 401 under auth: it is up
            except OSError:
                time.sleep(0.05)
        self._stop_process()
        raise RegistryError(
            f"{BINARY} did not answer GET /v2/ within {self.startup_timeout}s; log tail:\n{self._log_tail()}"
        )

    def kill(self) -> None:
        """SIGKILL the registry (a crash): connections drop mid-body, the port refuses."""
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait(timeout=5)
        self._proc = None

    def relaunch(self) -> None:
        """Start the registry again on its port, with its storage: a restarted pod."""
        binary = shutil.which(BINARY)
        assert binary is not None and self.workdir is not None and self._proc is None
        if not self._launch(binary, self.workdir / "config.yml", last=True):
            raise RegistryError(f"port {self.port} was taken while the registry was down")

    def _stop_process(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop(self) -> None:
        self._stop_process()
        if self.issuer is not None:
            self.issuer.stop()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
            self._own_workdir = False

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- pushing ----------------------------------------------------------------------------------

    def _push_auth(self, repo: str) -> str | None:
        if self.auth is None:
            return None
        if not self.users:
            raise RegistryError("pushing to an auth registry needs at least one user in users")
        user, password = next(iter(self.users.items()))
        if self.auth == "basic":
            return basic_header(user, password)
        if self.auth == "token":
            assert self.issuer is not None
            # Minted directly: pushes are test setup and must not show up in the issuer's counts.
            access = [{"type": "repository", "name": repo, "actions": ["pull", "push"]}]
            return "Bearer " + self.issuer.mint(user, access)
        return None

    def _call(
        self, method: str, url: str, *, data: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
        request.add_header("User-Agent", PUSH_USER_AGENT)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
                return response.status, response.headers
        except urllib.error.HTTPError as e:
            raise RegistryError(f"{method} {url} -> {e.code}: {e.read()[:500]!r}") from None

    def push_blob(self, repo: str, data: bytes) -> str:
        """Upload ``data`` (POST an upload, then PUT it whole with ?digest=); returns its digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        auth = self._push_auth(repo)
        headers = {"Authorization": auth} if auth else {}
        _, response_headers = self._call("POST", f"{self.url}/v2/{repo}/blobs/uploads/", headers=headers)
        location = urllib.parse.urljoin(self.url + "/", response_headers["Location"])
        separator = "&" if "?" in location else "?"
        put_headers = {**headers, "Content-Type": "application/octet-stream"}
        _, response_headers = self._call("PUT", f"{location}{separator}digest={digest}", data=data, headers=put_headers)
        if response_headers.get("Docker-Content-Digest") not in (None, digest):
            raise RegistryError(f"registry stored {response_headers['Docker-Content-Digest']}, sent {digest}")
        return digest

    def push_image(self, repo: str, tag: str, layers: list[bytes]) -> tuple[str, list[str]]:
        """Push ``layers`` (uncompressed tar media type), a config and an OCI image manifest.

        Returns (manifest digest, layer digests). Layer bytes need not be real tars: registries
        don't look inside.
        """
        digest, _size, layer_digests = self._push_manifest(repo, tag, layers, "amd64")
        return digest, layer_digests

    def push_index(self, repo: str, tag: str, images: dict[str, list[bytes]]) -> tuple[str, dict[str, list[str]]]:
        """A multi-platform image: one manifest per architecture (``{"amd64": layers, ...}``, all
        linux) pushed by digest, and an OCI index of them under ``tag``. Returns (index digest,
        each architecture's layer digests)."""
        entries, layer_digests = [], {}
        for arch, layers in images.items():
            digest, size, layer_digests[arch] = self._push_manifest(repo, None, layers, arch)
            entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": size,
                            "platform": {"os": "linux", "architecture": arch}})
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}, sort_keys=True).encode()
        auth = self._push_auth(repo)
        headers = {"Content-Type": OCI_INDEX, **({"Authorization": auth} if auth else {})}
        self._call("PUT", f"{self.url}/v2/{repo}/manifests/{tag}", data=index, headers=headers)
        return "sha256:" + hashlib.sha256(index).hexdigest(), layer_digests

    def _push_manifest(self, repo: str, tag: str | None, layers: list[bytes],
                       architecture: str) -> tuple[str, int, list[str]]:
        layer_digests = [self.push_blob(repo, layer) for layer in layers]
        config = json.dumps(
            {
                "architecture": architecture,
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": layer_digests},
                "config": {},
            },
            sort_keys=True,
        ).encode()
        config_digest = self.push_blob(repo, config)
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
                "layers": [
                    {"mediaType": OCI_LAYER, "digest": d, "size": len(layer)}
                    for d, layer in zip(layer_digests, layers, strict=True)
                ],
            },
            sort_keys=True,
        ).encode()
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        auth = self._push_auth(repo)
        headers = {"Content-Type": OCI_MANIFEST, **({"Authorization": auth} if auth else {})}
        self._call("PUT", f"{self.url}/v2/{repo}/manifests/{tag or manifest_digest}", data=manifest, headers=headers)
        return manifest_digest, len(manifest), layer_digests

    # -- observing --------------------------------------------------------------------------------

    def sync(self, timeout: float = 5.0) -> None:
        """Wait until everything answered so far is in the log.

        The registry writes a request's log lines after the response is finished, so a client can
        have every byte before the line exists. A marker request answered after ours logs after them.
        """
        self._sync_counter += 1
        marker = f"/v2/?p2pdist-log-sync={os.getpid()}-{self._sync_counter}-{secrets.token_hex(4)}"
        request = urllib.request.Request(self.url + marker, headers={"User-Agent": SYNC_USER_AGENT})
        with contextlib.suppress(urllib.error.HTTPError):  # 401 under auth is logged just the same
            urllib.request.urlopen(request, timeout=5).close()
        deadline = time.monotonic() + timeout
        needle = f'"GET {marker} '.encode()
        while needle not in self.log_path.read_bytes():
            if time.monotonic() > deadline:
                raise RegistryError(f"registry log did not show {marker} within {timeout}s")
            time.sleep(0.01)

    def _log_lines(self) -> Iterator[str]:
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            yield from log

    def log_entries(self, *, sync: bool = True) -> list[dict[str, Any]]:
        """The registry's JSON app-log entries (``http.request.host``, ``http.response.written``, ...)."""
        if sync:
            self.sync()
        entries = []
        for line in self._log_lines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    entries.append(json.loads(line))
        return entries

    def requests(self, *, sync: bool = True) -> list[RequestRecord]:
        """Every request answered, in log order, from the access log (one line per request, any status).

        Excludes the startup probes and log-sync markers.
        """
        if sync:
            self.sync()
        records = []
        for line in self._log_lines():
            match = _ACCESS_LINE.match(line.rstrip("\n"))
            if match is None or match["ua"] == SYNC_USER_AGENT:
                continue
            path, _, query = match["uri"].partition("?")
            size = match["size"]
            records.append(
                RequestRecord(
                    method=match["method"],
                    path=path,
                    query=query,
                    status=int(match["status"]),
                    written=0 if size == "-" else int(size),
                    remote=match["remote"],
                    user_agent=match["ua"],
                )
            )
        return records

    def egress(self, digest: str | None = None, *, sync: bool = True) -> int:
        """Blob body bytes the registry served (GET, 200/206), optionally for one digest only.

        From ``http.response.written`` of the "response completed" log entries: bytes the registry
        wrote, so a client that hangs up early is charged for what was sent before, not the whole
        blob (bytes still in socket buffers count as sent). Redirected blob
        GETs (307) count nothing here: the bytes came from the redirect target.
        """
        total = 0
        for entry in self.log_entries(sync=sync):
            if entry.get("msg") != "response completed" or entry.get("http.request.method") != "GET":
                continue
            if entry.get("http.response.status") not in (200, 206):
                continue
            path = str(entry.get("http.request.uri", "")).partition("?")[0]
            match = _BLOB_PATH.match(path)
            if match is None or (digest is not None and match["digest"] != digest):
                continue
            total += int(entry.get("http.response.written", 0))
        return total
