"""The test registry support itself: byte accounting, request records, auth setup, failure modes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from p2pdist.agent.origin import Credentials, OriginClient
from tests.support.clients import Containerd
from tests.support.registry import OCI_MANIFEST, Registry, RegistryError, Rule, TokenIssuer, TokenRequest

pytestmark = pytest.mark.integration


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes, Message]:
    """A GET with urllib: status, body and (case-insensitive) headers, errors included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


async def test_egress_counts_bytes_actually_fetched(registry: Registry) -> None:
    data = os.urandom(1_000_003)
    other = os.urandom(4096)
    digest = registry.push_blob("library/app", data)
    other_digest = registry.push_blob("library/app", other)
    assert registry.egress() == 0, "pushes are not egress"

    received = 0
    async with aiohttp.ClientSession() as http:
        origin = OriginClient(http, registry.host, plain_http=True)
        assert await origin.blob_size("library/app", digest) == len(data)
        assert registry.egress(digest) == 0, "HEAD serves no body"

        async for chunk in origin.fetch_all("library/app", digest):
            received += len(chunk)
        assert received == len(data)
        assert registry.egress(digest) == len(data)

        for start, end in [(0, 1), (12_345, 262_144), (len(data) - 77, len(data))]:
            async for chunk in origin.fetch_range("library/app", digest, start, end):
                received += len(chunk)
            assert registry.egress(digest) == received

        async for chunk in origin.fetch_all("library/app", other_digest):
            received += len(chunk)
    assert registry.egress(other_digest) == len(other)
    expected = len(data) + 1 + (262_144 - 12_345) + 77 + len(other)
    assert received == expected
    assert registry.egress() == expected


def test_egress_ignores_errors_and_manifests(registry: Registry) -> None:
    _, (digest,) = registry.push_image("library/app", "v1", [b"layer"])
    assert get(f"{registry.url}/v2/library/app/blobs/sha256:{'1' * 64}")[0] == 404
    status, body, _ = get(f"{registry.url}/v2/library/app/manifests/v1", {"Accept": OCI_MANIFEST})
    assert status == 200 and body
    assert registry.egress() == 0
    assert get(f"{registry.url}/v2/library/app/blobs/{digest}", {"Range": "bytes=1-3"})[1] == b"aye"
    assert registry.egress() == 3


def test_requests_lists_every_request_with_status_and_size(registry_basic: Registry) -> None:
    digest = registry_basic.push_blob("private/app", b"0123456789")
    url = f"{registry_basic.url}/v2/private/app/blobs/{digest}"
    auth = {"Authorization": "Basic YWxpY2U6c2VjcmV0LXB3", "User-Agent": "probe/1"}  # alice:secret-pw
    assert get(url, {"User-Agent": "probe/1"})[0] == 401
    assert get(url, {**auth, "Range": "bytes=2-5"})[1] == b"2345"
    assert get(url, auth)[1] == b"0123456789"
    records = [r for r in registry_basic.requests() if r.user_agent == "probe/1"]
    assert [(r.method, r.path, r.status) for r in records] == [
        ("GET", f"/v2/private/app/blobs/{digest}", 401),
        ("GET", f"/v2/private/app/blobs/{digest}", 206),
        ("GET", f"/v2/private/app/blobs/{digest}", 200),
    ]
    assert [r.written for r in records[1:]] == [4, 10]
    assert all(r.remote == "127.0.0.1" for r in records)
    # The access log and the app log's http.response.written agree on blob bytes.
    assert registry_basic.egress(digest) == 14
    entries = [e for e in registry_basic.log_entries() if e.get("http.request.useragent") == "probe/1"]
    assert {e["http.request.host"] for e in entries} == {registry_basic.host}


def test_push_image_serves_the_manifest_it_returns(registry: Registry) -> None:
    layers = [os.urandom(100), os.urandom(200)]
    manifest_digest, layer_digests = registry.push_image("team/app", "1.0", layers)
    status, body, headers = get(f"{registry.url}/v2/team/app/manifests/1.0", {"Accept": OCI_MANIFEST})
    assert status == 200
    assert headers["Docker-Content-Digest"] == manifest_digest
    manifest = json.loads(body)
    assert manifest["mediaType"] == OCI_MANIFEST
    assert [layer["digest"] for layer in manifest["layers"]] == layer_digests
    assert [layer["size"] for layer in manifest["layers"]] == [100, 200]


def test_token_registry_verifies_signatures(registry_token: Registry) -> None:
    issuer = registry_token.issuer
    assert issuer is not None
    digest = registry_token.push_blob("private/app", b"layer")
    url = f"{registry_token.url}/v2/private/app/blobs/{digest}"
    pull = [{"type": "repository", "name": "private/app", "actions": ["pull"]}]

    status, _, headers = get(url)
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="{issuer.realm}",service="{issuer.service}",scope="repository:private/app:pull"'
    )
    assert get(url, {"Authorization": "Bearer " + issuer.mint("alice", pull)})[:2] == (200, b"layer")
    # Same claims, signed by a key the registry's rootcertbundle does not hold.
    stranger = TokenIssuer({}, service=issuer.service, issuer=issuer.issuer)
    assert get(url, {"Authorization": "Bearer " + stranger.mint("alice", pull)})[0] == 401
    # Expired, and granting another repository only.
    assert get(url, {"Authorization": "Bearer " + issuer.mint("alice", pull, expires_in=-120)})[0] == 401
    other = [{"type": "repository", "name": "private/other", "actions": ["pull"]}]
    assert get(url, {"Authorization": "Bearer " + issuer.mint("alice", other)})[0] == 401


async def test_token_issuer_checks_credentials(registry_token: Registry) -> None:
    issuer = registry_token.issuer
    assert issuer is not None
    query = f"?service={issuer.service}&scope=repository:private/app:pull"
    # Anonymous: a token (Docker Hub style), but one that grants nothing on a private repository.
    status, body, _ = get(issuer.realm + query)
    assert status == 200 and claims(json.loads(body)["token"])["access"] == []
    assert get(issuer.realm + query, {"Authorization": "Basic YWxpY2U6d3Jvbmc="})[0] == 401  # alice:wrong
    status, body, _ = get(issuer.realm + query, {"Authorization": "Basic YWxpY2U6c2VjcmV0LXB3"})
    assert status == 200
    document = json.loads(body)
    assert document["token"] == document["access_token"]
    assert document["expires_in"] == issuer.expires_in
    assert [(r.user, r.status) for r in issuer.token_requests()] == [(None, 200), (None, 401), ("alice", 200)]
    async with aiohttp.ClientSession() as http:
        origin = OriginClient(http, registry_token.host, plain_http=True, credentials=Credentials("alice", "secret-pw"))
        digest = registry_token.push_blob("private/app", b"x" * 10)
        assert await origin.blob_size("private/app", digest) == 10


# -- token auth with per-user rights ----------------------------------------------------------------

USERS = {"alice": "alice-pw", "bob": "bob-pw"}
RIGHTS: dict[str | None, list[Rule]] = {
    "alice": ["private/*", "public/*"],
    "bob": ["other/*"],
    None: ["public/*"],
}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Registry]:
    """A token-auth registry with private/x:1 and public/x:1; alice pulls private/*, bob other/*."""
    with Registry(auth="token", users=USERS, rights=RIGHTS, workdir=tmp_path / "registry") as registry:
        registry.push_image("private/x", "1", [b"private layer"])
        registry.push_image("public/x", "1", [b"public layer"])
        yield registry


def claims(token: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def get_token(
    registry: Registry, scopes: list[str], headers: dict[str, str] | None = None, **params: str
) -> tuple[int, dict[str, Any]]:
    issuer = registry.issuer
    assert issuer is not None
    query = urllib.parse.urlencode([("service", issuer.service), *(("scope", s) for s in scopes), *params.items()])
    status, body, _ = get(f"{issuer.realm}?{query}", headers)
    return status, json.loads(body)


def post_token(registry: Registry, form: dict[str, str]) -> tuple[int, dict[str, Any], Message]:
    issuer = registry.issuer
    assert issuer is not None
    request = urllib.request.Request(issuer.realm, data=urllib.parse.urlencode(form).encode(), method="POST")
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read()), response.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def pull_manifest(registry: Registry, repo: str, token: str) -> tuple[int, Message]:
    headers = {"Authorization": f"Bearer {token}", "Accept": OCI_MANIFEST}
    status, _, response_headers = get(f"{registry.url}/v2/{repo}/manifests/1", headers)
    return status, response_headers


def test_tokens_are_es256_with_the_bundle_certificate_in_x5c(hub: Registry) -> None:
    issuer = hub.issuer
    assert issuer is not None and hub.workdir is not None
    status, document = get_token(hub, ["repository:public/x:pull"])
    assert status == 200
    token = document["token"]
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["alg"] == "ES256"
    certificate = x509.load_der_x509_certificate(base64.b64decode(header["x5c"][0]))
    bundle = x509.load_pem_x509_certificate((hub.workdir / "token-ca.pem").read_bytes())
    assert certificate == bundle == issuer.certificate
    # JWS ES256: raw r || s, 64 bytes, verifiable with the certificate's key.
    signing_input, _, signature = token.rpartition(".")
    raw = base64.urlsafe_b64decode(signature + "==")
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public_key = certificate.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(der, signing_input.encode(), ec.ECDSA(hashes.SHA256()))
    body = claims(token)
    assert {k: body[k] for k in ("iss", "sub", "aud")} == {"iss": issuer.issuer, "sub": "", "aud": issuer.service}
    assert body["nbf"] < body["iat"] < body["exp"] == body["iat"] + issuer.expires_in
    assert body["jti"] and body["jti"] != claims(get_token(hub, [])[1]["token"])["jti"]
    # ... and docker-registry accepts it: it checks the x5c chain against its rootcertbundle.
    assert pull_manifest(hub, "public/x", token)[0] == 200


def test_anonymous_pulls_public_with_a_token(hub: Registry) -> None:
    issuer = hub.issuer
    assert issuer is not None
    status, _, headers = get(f"{hub.url}/v2/public/x/manifests/1", {"Accept": OCI_MANIFEST})
    assert status == 401, "anonymous pulls need a token too"
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="{issuer.realm}",service="{issuer.service}",scope="repository:public/x:pull"'
    )
    status, document = get_token(hub, ["repository:public/x:pull"])
    assert status == 200
    assert claims(document["token"])["access"] == [{"type": "repository", "name": "public/x", "actions": ["pull"]}]
    assert pull_manifest(hub, "public/x", document["token"])[0] == 200
    assert issuer.token_requests() == [
        TokenRequest(None, issuer.service, ("repository:public/x:pull",), 200, "GET", ("repository:public/x:pull",))
    ]


def test_anonymous_token_for_private_grants_nothing(hub: Registry) -> None:
    issuer = hub.issuer
    assert issuer is not None
    status, document = get_token(hub, ["repository:private/x:pull"])
    assert status == 200
    assert claims(document["token"])["access"] == []
    status, headers = pull_manifest(hub, "private/x", document["token"])
    assert status == 401
    assert headers["WWW-Authenticate"] == (
        f'Bearer realm="{issuer.realm}",service="{issuer.service}",scope="repository:private/x:pull",'
        'error="insufficient_scope"'
    )
    (request,) = issuer.token_requests()
    assert (request.user, request.status, request.granted) == (None, 200, ())
    assert request.denied == ("repository:private/x:pull",)
    # A token the registry cannot verify is another error.
    assert 'error="invalid_token"' in pull_manifest(hub, "private/x", "not.a.token")[1]["WWW-Authenticate"]


def test_users_get_their_own_rights(hub: Registry) -> None:
    issuer = hub.issuer
    assert issuer is not None
    status, alice = get_token(hub, ["repository:private/x:pull"], basic("alice", "alice-pw"))
    assert status == 200 and claims(alice["token"])["sub"] == "alice"
    assert pull_manifest(hub, "private/x", alice["token"])[0] == 200

    status, bob = get_token(hub, ["repository:private/x:pull"], basic("bob", "bob-pw"))
    assert status == 200 and claims(bob["token"])["access"] == []
    status, headers = pull_manifest(hub, "private/x", bob["token"])
    assert status == 401 and 'error="insufficient_scope"' in headers["WWW-Authenticate"]
    # What anonymous may do, every user may do.
    status, bob = get_token(hub, ["repository:public/x:pull", "repository:other/y:pull"], basic("bob", "bob-pw"))
    assert [a["name"] for a in claims(bob["token"])["access"]] == ["public/x", "other/y"]

    assert [(r.user, r.granted) for r in issuer.token_requests()] == [
        ("alice", ("repository:private/x:pull",)),
        ("bob", ()),
        ("bob", ("repository:public/x:pull", "repository:other/y:pull")),
    ]


def test_scopes_are_granted_independently(hub: Registry) -> None:
    issuer = hub.issuer
    assert issuer is not None
    scopes = [
        "repository:private/x:pull,push",  # alice may pull, not push
        "repository:other/y:pull",  # bob's
        "repository:public/x:pull",
        "registry:catalog:*",
        "nonsense",
    ]
    status, document = get_token(hub, scopes, basic("alice", "alice-pw"))
    assert status == 200
    assert claims(document["token"])["access"] == [
        {"type": "repository", "name": "private/x", "actions": ["pull"]},
        {"type": "repository", "name": "public/x", "actions": ["pull"]},
    ]
    (request,) = issuer.token_requests()
    assert request.scopes == tuple(scopes)
    assert request.granted == ("repository:private/x:pull", "repository:public/x:pull")
    assert request.denied == ("repository:other/y:pull", "registry:catalog:*", "nonsense")
    # One token, both repositories.
    assert pull_manifest(hub, "private/x", document["token"])[0] == 200
    assert pull_manifest(hub, "public/x", document["token"])[0] == 200


def test_wrong_password_is_refused_by_the_token_server(hub: Registry) -> None:
    issuer = hub.issuer
    assert issuer is not None
    issuer_url = f"{issuer.realm}?service={issuer.service}&scope=repository:private/x:pull"
    status, _, headers = get(issuer_url, basic("alice", "wrong"))
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic realm=")
    assert get(issuer_url, basic("mallory", "alice-pw"))[0] == 401
    assert get(issuer_url, {"Authorization": "Bearer whatever"})[0] == 401
    form = {"grant_type": "password", "username": "alice", "password": "wrong", "service": issuer.service,
            "client_id": "test", "scope": "repository:private/x:pull"}
    status, document, _ = post_token(hub, form)
    assert (status, document["error"]) == (401, "invalid_grant")
    assert [(r.method, r.user, r.username, r.status) for r in issuer.token_requests()] == [
        ("GET", None, "alice", 401),
        ("GET", None, "mallory", 401),
        ("GET", None, None, 401),
        ("POST", None, "alice", 401),
    ]


def test_oauth_post_password_and_refresh_grants(hub: Registry) -> None:
    issuer = hub.issuer
    assert issuer is not None
    form = {"grant_type": "password", "username": "alice", "password": "alice-pw", "service": issuer.service,
            "client_id": "p2pdist-test", "scope": "repository:private/x:pull repository:other/y:pull"}
    status, document, _ = post_token(hub, form)
    assert status == 200
    assert set(document) == {"access_token", "expires_in", "issued_at", "scope"}, "no refresh token unless offline"
    assert document["scope"] == "repository:private/x:pull"
    assert document["expires_in"] == issuer.expires_in
    assert pull_manifest(hub, "private/x", document["access_token"])[0] == 200

    status, document, _ = post_token(hub, {**form, "access_type": "offline"})
    assert status == 200
    refresh = document["refresh_token"]
    refreshed_form = {"grant_type": "refresh_token", "refresh_token": refresh, "service": issuer.service,
                      "client_id": "p2pdist-test", "scope": "repository:public/x:pull repository:private/x:pull"}
    status, document, _ = post_token(hub, refreshed_form)
    assert status == 200 and "refresh_token" not in document
    assert claims(document["access_token"])["sub"] == "alice"
    assert pull_manifest(hub, "private/x", document["access_token"])[0] == 200
    status, document, _ = post_token(hub, {**refreshed_form, "access_type": "offline"})
    assert status == 200 and document["refresh_token"] == refresh, "refresh tokens are not rotated"

    # A refresh token from GET's offline_token, too.
    status, got = get_token(hub, ["repository:private/x:pull"], basic("alice", "alice-pw"), offline_token="true")
    assert status == 200
    status, document, _ = post_token(hub, {**refreshed_form, "refresh_token": got["refresh_token"]})
    assert status == 200 and claims(document["access_token"])["sub"] == "alice"

    assert post_token(hub, {**refreshed_form, "refresh_token": "made-up"})[:2] == (
        401, {"error": "invalid_grant", "error_description": "unknown refresh token"})
    # Anonymous POST: public scopes only.
    anonymous = {"grant_type": "password", "service": issuer.service, "client_id": "p2pdist-test",
                 "scope": "repository:public/x:pull repository:private/x:pull"}
    status, document, _ = post_token(hub, anonymous)
    assert status == 200 and document["scope"] == "repository:public/x:pull"
    assert claims(document["access_token"])["sub"] == ""
    assert pull_manifest(hub, "public/x", document["access_token"])[0] == 200
    # Required fields.
    assert post_token(hub, {**form, "client_id": ""})[0] == 400
    assert post_token(hub, {**form, "grant_type": "client_credentials"})[1]["error"] == "unsupported_grant_type"
    assert post_token(hub, {**form, "service": "elsewhere"})[0] == 400

    records = [(r.method, r.grant_type, r.user, r.status, r.refresh_token_issued) for r in issuer.token_requests()]
    assert records == [
        ("POST", "password", "alice", 200, False),
        ("POST", "password", "alice", 200, True),
        ("POST", "refresh_token", "alice", 200, False),
        ("POST", "refresh_token", "alice", 200, False),
        ("GET", None, "alice", 200, True),
        ("POST", "refresh_token", "alice", 200, False),
        ("POST", "refresh_token", None, 401, False),
        ("POST", "password", None, 200, False),
        ("POST", "password", None, 400, False),
        ("POST", "client_credentials", None, 400, False),
        ("POST", "password", None, 400, False),
    ]
    assert {r.client_id for r in issuer.token_requests() if r.method == "POST"} == {"p2pdist-test", ""}


def test_oauth_post_can_be_turned_off() -> None:
    issuer = TokenIssuer(USERS, rights=RIGHTS, oauth_post=False).start()
    try:
        request = urllib.request.Request(issuer.realm, data=b"grant_type=password&client_id=x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=10)
        assert raised.value.code == 405 and raised.value.headers["Allow"] == "GET"
        status, _, _ = get(f"{issuer.realm}?service={issuer.service}&scope=repository:public/x:pull")
        assert status == 200
        assert get(issuer.realm.replace("/token", "/elsewhere"))[0] == 404
        assert [(r.method, r.status) for r in issuer.token_requests()] == [("POST", 405), ("GET", 200), ("GET", 404)]
    finally:
        issuer.stop()


def test_default_token_rights(tmp_path: Path) -> None:
    users = {"alice": "alice-pw", "carol": "carol-pw"}
    with Registry(auth="token", users=users, workdir=tmp_path / "registry") as registry:
        issuer = registry.issuer
        assert issuer is not None
        assert not issuer.anonymous_pull
        scopes = ["repository:private/x:pull,push", "repository:public/x:pull,push"]
        assert claims(get_token(registry, scopes)[1]["token"])["access"] == [
            {"type": "repository", "name": "public/x", "actions": ["pull"]}
        ]
        assert claims(get_token(registry, scopes, basic("alice", "alice-pw"))[1]["token"])["access"] == [
            {"type": "repository", "name": "private/x", "actions": ["pull", "push"]},
            {"type": "repository", "name": "public/x", "actions": ["pull", "push"]},
        ]
        catalog = get_token(registry, ["registry:catalog:*"], basic("alice", "alice-pw"))[1]["token"]
        assert claims(catalog)["access"] == [{"type": "registry", "name": "catalog", "actions": ["*"]}]
        assert get(f"{registry.url}/v2/_catalog", {"Authorization": f"Bearer {catalog}"})[0] == 200
        assert claims(get_token(registry, scopes, basic("carol", "carol-pw"))[1]["token"])["access"] == [
            {"type": "repository", "name": "public/x", "actions": ["pull"]}
        ]
        # The legacy switches: anonymous pulls everything, or gets no token at all.
        issuer.anonymous_pull = True
        access = claims(get_token(registry, scopes)[1]["token"])["access"]
        assert [a["name"] for a in access] == ["private/x", "public/x"]
        issuer.anonymous_pull = False
        assert get_token(registry, scopes)[0] == 401
    with Registry(auth="token", users=users, anonymous_pull=True, workdir=tmp_path / "registry2") as registry:
        assert registry.issuer is not None and registry.issuer.anonymous_pull


def test_skopeo_against_the_token_flow(hub: Registry, tmp_path: Path) -> None:
    issuer = hub.issuer
    assert issuer is not None
    skopeo = shutil.which("skopeo")
    assert skopeo is not None, "skopeo not found on PATH: apt-get install -y skopeo"

    def copy(repo: str, *creds: str) -> subprocess.CompletedProcess[str]:
        out = tmp_path / f"{repo.replace('/', '_')}-{len(creds)}"
        command = [skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", *creds,
                   f"docker://{hub.host}/{repo}:1", f"dir:{out}"]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    assert copy("private/x", "--src-creds", "alice:alice-pw").returncode == 0
    assert copy("public/x", "--src-no-creds").returncode == 0
    refused = copy("private/x", "--src-no-creds")
    assert refused.returncode != 0 and "denied" in refused.stderr
    assert copy("private/x", "--src-creds", "bob:bob-pw").returncode != 0
    assert copy("private/x", "--src-creds", "alice:wrong").returncode != 0

    requests = [(r.user, r.username, r.method, r.status, r.granted) for r in issuer.token_requests()]
    private, public = ("repository:private/x:pull",), ("repository:public/x:pull",)
    # skopeo asks for the repository's scope before its first manifest request (after a bare
    # GET /v2/); refused, it asks again with the challenge's scope added: the same one, twice.
    assert requests[:2] == [("alice", "alice", "GET", 200, private), (None, None, "GET", 200, public)]
    assert [r.scopes for r in issuer.token_requests()[2:4]] == [private, private * 2]
    assert requests[2:4] == [(None, None, "GET", 200, ())] * 2
    assert all(r[:4] == ("bob", "bob", "GET", 200) and r[4] == () for r in requests[4:6])
    assert requests[6:] == [(None, "alice", "GET", 401, ())]
    # Only skopeo's successful copies fetched blobs.
    blobs = {r.path.split("/")[2] for r in hub.requests() if "/blobs/" in r.path and r.status == 200
             and r.user_agent.startswith("skopeo")}
    assert blobs == {"private", "public"}


def test_containerd_posts_for_a_token_with_credentials(hub: Registry, tmp_path: Path) -> None:
    # containerd 1.6 with credentials: an OAuth2 POST (grant_type=password, client_id containerd-client);
    # without: GET. After a refused POST (401) it tries GET with basic auth before giving up.
    issuer = hub.issuer
    assert issuer is not None
    containerd = Containerd(tmp_path / "containerd", f"http://{hub.host}", hub.host).start()
    try:
        def fetch(repo: str, *user: str) -> subprocess.CompletedProcess[str]:
            command = containerd.ctl("content", "fetch", "--plain-http", *user, f"{hub.host}/{repo}:1")
            return subprocess.run(command, capture_output=True, text=True, timeout=120)

        assert fetch("private/x", "--user", "alice:alice-pw").returncode == 0
        posts = [r for r in issuer.token_requests() if r.method == "POST"]
        assert posts and all(
            (r.user, r.grant_type, r.client_id, r.scopes, r.status)
            == ("alice", "password", "containerd-client", ("repository:private/x:pull",), 200)
            for r in posts
        )
        assert all(r.method == "POST" for r in issuer.token_requests())
        done = len(issuer.token_requests())
        assert fetch("public/x").returncode == 0
        assert {(r.method, r.user, r.status) for r in issuer.token_requests()[done:]} == {("GET", None, 200)}
        done = len(issuer.token_requests())
        refused = fetch("private/x", "--user", "alice:wrong")
        assert refused.returncode != 0
        assert [(r.method, r.username, r.status) for r in issuer.token_requests()[done:]] == [
            ("POST", "alice", 401),
            ("GET", "alice", 401),
        ]
    finally:
        containerd.stop()


def test_missing_binary_fails_loudly(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RegistryError, match="docker-registry not found on PATH: install"):
        Registry(workdir=tmp_path / "registry").start()


def test_stop_ends_the_process(tmp_path: Path) -> None:
    registry = Registry(workdir=tmp_path / "registry").start()
    process = registry._proc
    assert process is not None and process.poll() is None
    registry.stop()
    assert process.poll() is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{registry.url}/v2/", timeout=1)
