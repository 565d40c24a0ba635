"""What a manifest proves about its repository (p2pdist/mirror/membership.py)."""

from __future__ import annotations

import json

from p2pdist.mirror.membership import ANONYMOUS, Membership, references


def d(c: str) -> str:
    return "sha256:" + c * 64


def test_a_manifest_confirms_only_what_the_registry_checked_is_in_its_repository() -> None:
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": d("c"), "size": 1},
        "layers": [
            {"digest": d("1"), "size": 1},
            # A foreign layer: the registry does not hold it, so it proves nothing.
            {"digest": d("f"), "size": 1, "urls": ["https://example.invalid/layer"]},
        ],
        # A registry must accept a subject it does not have: pushing this into one's own repository
        # must not make a private digest readable there.
        "subject": {"digest": d("5"), "size": 1},
        "blobs": [{"digest": d("b"), "size": 1}],
    }
    assert references(json.dumps(manifest).encode()) == {d("c"): 1, d("1"): 1}


def test_an_index_confirms_its_child_manifests_and_schema1_its_fs_layers() -> None:
    index = {"schemaVersion": 2, "manifests": [{"digest": d("a"), "size": 10}, {"digest": d("e"), "size": -1}],
             "subject": {"digest": d("5"), "size": 1}}
    # Sizes as declared; a size that cannot be one is no size.
    assert references(json.dumps(index).encode()) == {d("a"): 10, d("e"): None}
    schema1 = {"schemaVersion": 1, "fsLayers": [{"blobSum": d("3")}, {"blobSum": 7}]}
    assert references(json.dumps(schema1).encode()) == {d("3"): None}
    assert references(b"not json") == {} and references(b"[1]") == {}


def test_a_confirmed_size_is_kept_per_repository_and_credential() -> None:
    now = [0.0]
    book = Membership(ttl=10, public_ttl=100, clock=lambda: now[0])
    book.confirm("r", "team/app", "alice", {d("1"): 5})
    book.confirm("r", "team/app", "alice", [d("2")])  # a confirmation without a size
    book.confirm("r", "evil/app", "mallory", {d("1"): 999})  # another repository's claim
    assert book.size("r", "team/app", "alice", d("1")) == 5
    assert book.size("r", "team/app", "alice", d("2")) is None
    assert book.size("r", "team/app", "bob", d("1")) is None and not book.allowed("r", "team/app", "bob", d("1"))
    book.confirm("r", "team/app", "alice", [d("1")])  # renewed without a size: the size stays
    assert book.size("r", "team/app", "alice", d("1")) == 5
    book.confirm("r", "pub/x", ANONYMOUS, {d("3"): 7})
    assert book.size("r", "pub/x", "carol", d("3")) == 7  # a public repository's answer holds for all
    now[0] = 11
    assert book.size("r", "team/app", "alice", d("1")) is None  # expired with the confirmation
    assert book.size("r", "pub/x", "carol", d("3")) == 7
