"""What a manifest proves about its repository (p2pdist/mirror/membership.py)."""

from __future__ import annotations

import json

from p2pdist.mirror.membership import references


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
    assert references(json.dumps(manifest).encode()) == {d("c"), d("1")}


def test_an_index_confirms_its_child_manifests_and_schema1_its_fs_layers() -> None:
    index = {"schemaVersion": 2, "manifests": [{"digest": d("a"), "size": 1}, {"digest": d("e"), "size": 1}],
             "subject": {"digest": d("5"), "size": 1}}
    assert references(json.dumps(index).encode()) == {d("a"), d("e")}
    schema1 = {"schemaVersion": 1, "fsLayers": [{"blobSum": d("3")}, {"blobSum": 7}]}
    assert references(json.dumps(schema1).encode()) == {d("3")}
    assert references(b"not json") == set() and references(b"[1]") == set()
