"""Image archives for air-gapped nodes: ``docker save`` tars and OCI image layout tars, read for
``p2pdist import``.

What each holds, and under which digest its blobs go into the store:

- **OCI image layout** (``skopeo copy ... oci-archive:``, ``docker save`` from Docker 25 on:
  ``oci-layout``, ``index.json``, ``blobs/<alg>/<hex>``): every blob under the digest its path
  names, checked against it. Manifests and indexes are found from ``index.json`` and go to the
  mirror's manifest cache. Whether a layer is the registry's blob depends on who wrote the archive:
  skopeo keeps the registry's compressed blobs; Docker's classic image store exports uncompressed
  layers (media type ``...layer.v1.tar``), whose digests are their diff_ids, which a registry pull
  of the compressed layer never asks for (``Plan.notes`` says so).
- **Legacy docker save** (``manifest.json`` with ``Config`` and ``Layers: [<id>/layer.tar]``,
  also ``skopeo copy ... docker-archive:``): the config under its sha256, and each layer tar,
  uncompressed, under its sha256, which must equal the config's ``rootfs.diff_ids`` entry. No
  registry manifest is in such an archive, and the layers are not the registry's compressed blobs.

Nothing is extracted to disk and no member name becomes a path: names are only looked up in the
archive. Blobs are read in chunks (``CHUNK``); only manifests, indexes and configs, each at most
``MAX_DOCUMENT`` bytes, are read whole to be parsed.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from p2pdist.core.digest import Digest, DigestError
from p2pdist.core.image import INDEX_TYPES

from .common import StoreError

CHUNK = 1 << 20
MAX_DOCUMENT = 4 << 20  # a manifest, index or config read whole (the distribution spec's manifest limit)
_MAX_LINKS = 8
_BLOB = re.compile(r"blobs/(sha256|sha512)/([a-f0-9]+)")
_HEX_NAME = re.compile(r"(?:.*/)?([a-f0-9]{64})(?:\.json|\.tar)?")

UNCOMPRESSED_LAYERS = {
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
}
REF_NAMES = ("io.containerd.image.name", "org.opencontainers.image.ref.name")


class ArchiveError(StoreError):
    """The archive is not one we can import, or a member is damaged: the message names it."""


@dataclass(frozen=True)
class Item:
    digest: Digest
    size: int
    member: str  # the archive member holding it (errors name it)
    kind: str  # "layer", "config", "manifest", "index" or "blob" (in the layout, referenced by nothing read)
    media_type: str = ""

    @property
    def is_manifest(self) -> bool:
        return self.kind in ("manifest", "index")


@dataclass
class Plan:
    format: str  # "oci-layout" or "docker-save"
    items: list[Item] = field(default_factory=list)
    images: list[str] = field(default_factory=list)  # names and tags the archive gives its images
    notes: list[str] = field(default_factory=list)

    @property
    def blobs(self) -> list[Item]:
        return [i for i in self.items if not i.is_manifest]

    @property
    def manifests(self) -> list[Item]:
        return [i for i in self.items if i.is_manifest]


class Archive:
    """One archive file, opened for random access (plain, gzip, bzip2 or xz tar)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed by close()
            members = self._tar.getmembers()
        except (tarfile.TarError, EOFError) as e:
            raise ArchiveError(f"{path} is not a readable tar archive ({e})") from None
        except OSError as e:
            raise ArchiveError(f"cannot read {path}: {e.strerror or e}") from None
        self._members = {_norm(m.name): m for m in members if m.isfile() or m.issym() or m.islnk()}

    def close(self) -> None:
        self._tar.close()

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- members ----------------------------------------------------------------------------------

    def _resolve(self, name: str) -> tarfile.TarInfo:
        """The regular file a member name leads to, following links inside the archive only."""
        seen = _norm(name)
        for _ in range(_MAX_LINKS):
            info = self._members.get(seen)
            if info is None:
                raise ArchiveError(f"{self.path}: member {name!r} is missing")
            if info.isfile():
                return info
            target = info.linkname if info.islnk() else posixpath.join(posixpath.dirname(seen), info.linkname)
            seen = _norm(target)
        raise ArchiveError(f"{self.path}: member {name!r} is a chain of links")

    def has(self, name: str) -> bool:
        return _norm(name) in self._members

    def size(self, name: str) -> int:
        return self._resolve(name).size

    def offset(self, name: str) -> int:
        """Where the member's data starts: reading members in this order never seeks back, which in a
        compressed tar would decompress everything before it again."""
        return self._resolve(name).offset_data

    def chunks(self, name: str) -> Iterator[bytes]:
        info = self._resolve(name)
        try:
            f: IO[bytes] | None = self._tar.extractfile(info)
            assert f is not None
            with f:
                while chunk := f.read(CHUNK):
                    yield chunk
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ArchiveError(f"{self.path}: member {name!r} cannot be read ({e})") from None

    def document(self, name: str) -> bytes:
        """A small member read whole: a manifest, an index, a config."""
        if self.size(name) > MAX_DOCUMENT:
            raise ArchiveError(f"{self.path}: member {name!r} is over {MAX_DOCUMENT} bytes: not an image document")
        return b"".join(self.chunks(name))

    def json(self, name: str, body: bytes | None = None) -> Any:
        try:
            return json.loads(self.document(name) if body is None else body)
        except (ValueError, RecursionError):
            raise ArchiveError(f"{self.path}: member {name!r} is not valid JSON") from None

    def verify(self, item: Item, progress: Callable[[int], None] = lambda n: None) -> None:
        """Hash the member as it streams by; ArchiveError naming it unless it matches its digest."""
        hasher, size = item.digest.hasher(), 0
        for chunk in self.chunks(item.member):
            hasher.update(chunk)
            size += len(chunk)
            progress(len(chunk))
        actual = f"{item.digest.algorithm}:{hasher.hexdigest()}"
        if actual != str(item.digest) or size != item.size:
            raise ArchiveError(f"{self.path}: member {item.member!r} is damaged: it hashes to {actual}, "
                               f"not {item.digest}; nothing was imported")

    # -- what is in it ----------------------------------------------------------------------------

    def plan(self) -> Plan:
        if self.has("index.json") and self.has("oci-layout"):
            plan = self._plan_layout()
        elif self.has("manifest.json"):
            plan = self._plan_docker()
        else:
            raise ArchiveError(f"{self.path} is neither a docker save archive (manifest.json) nor an OCI image "
                               "layout (oci-layout, index.json)")
        if self.has("manifest.json") and plan.format == "oci-layout":  # Docker 25+: both
            plan.images += [t for t in _repo_tags(self.json("manifest.json")) if t not in plan.images]
        return plan

    def _plan_layout(self) -> Plan:
        plan = Plan("oci-layout")
        found: dict[Digest, Item] = {}
        for name in self._members:
            m = _BLOB.fullmatch(name)
            if m is None:
                continue
            try:
                digest = Digest.parse(f"{m.group(1)}:{m.group(2)}")
            except DigestError:
                raise ArchiveError(f"{self.path}: member {name!r} is not named by a valid digest") from None
            found[digest] = Item(digest, self._resolve(name).size, name, "blob")
        index = self.json("index.json")
        kinds: dict[Digest, tuple[str, str]] = {}
        uncompressed = False
        todo = _descriptors(index, "manifests")
        while todo:
            desc = todo.pop()
            digest, media_type = _descriptor(desc)
            if digest is None or digest in kinds:
                continue
            if isinstance(desc.get("annotations"), dict):
                for key in REF_NAMES:
                    name = desc["annotations"].get(key)
                    if isinstance(name, str) and name not in plan.images:
                        plan.images.append(name)
            if digest not in found:
                continue  # e.g. an index naming platforms the archive does not carry
            item = found[digest]
            body = self.document(item.member)
            if Digest.of(body, digest.algorithm) != digest:
                raise ArchiveError(f"{self.path}: member {item.member!r} is damaged: it does not hash to {digest}; "
                                   "nothing was imported")
            doc = self.json(item.member, body)
            if not isinstance(doc, dict):
                raise ArchiveError(f"{self.path}: member {item.member!r} is not an image manifest or index")
            media_type = media_type or str(doc.get("mediaType", ""))
            is_index = media_type in INDEX_TYPES or "manifests" in doc
            kinds[digest] = ("index" if is_index else "manifest", media_type)
            if is_index:
                todo += _descriptors(doc, "manifests")
                continue
            config, config_type = _descriptor(doc.get("config"))
            if config is not None:
                kinds.setdefault(config, ("config", config_type))
            for layer in _descriptors(doc, "layers"):
                layer_digest, layer_type = _descriptor(layer)
                if layer_digest is None:
                    continue
                kinds.setdefault(layer_digest, ("layer", layer_type))
                uncompressed |= layer_type in UNCOMPRESSED_LAYERS
                if layer_digest not in found:
                    plan.notes.append(f"layer {layer_digest} of manifest {digest} is not in the archive")
        for digest, item in sorted(found.items(), key=lambda kv: self.offset(kv[1].member)):
            kind, media_type = kinds.get(digest, ("blob", ""))
            plan.items.append(Item(digest, item.size, item.member, kind, media_type))
        if uncompressed:
            plan.notes.append("the layers are uncompressed (as Docker's classic image store saves them): they are "
                              "imported under their own digests (the image's diff_ids), which a registry pull of "
                              "the compressed layers does not ask for")
        return plan

    def _plan_docker(self) -> Plan:
        plan = Plan("docker-save")
        entries = self.json("manifest.json")
        if not isinstance(entries, list) or not entries:
            raise ArchiveError(f"{self.path}: member 'manifest.json' lists no image")
        items: dict[Digest, Item] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
                raise ArchiveError(f"{self.path}: member 'manifest.json' has an entry without Config")
            name = entry["Config"]
            body = self.document(name)
            digest = Digest.of(body, "sha256")
            named = _HEX_NAME.fullmatch(_norm(name))
            if named and named.group(1) != digest.encoded:
                raise ArchiveError(f"{self.path}: member {name!r} is damaged: it hashes to {digest}; "
                                   "nothing was imported")
            items.setdefault(digest, Item(digest, len(body), name, "config"))
            config = self.json(name, body)
            rootfs = config.get("rootfs") if isinstance(config, dict) else None
            diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
            layers = entry.get("Layers")
            if not isinstance(layers, list) or not isinstance(diff_ids, list) or len(layers) != len(diff_ids):
                raise ArchiveError(f"{self.path}: the Layers of {name!r} do not match its rootfs.diff_ids")
            for layer, diff_id in zip(layers, diff_ids, strict=True):
                try:
                    layer_digest = Digest.parse(diff_id)
                except (DigestError, TypeError):
                    raise ArchiveError(f"{self.path}: {name!r} lists a malformed diff_id {diff_id!r}") from None
                if not isinstance(layer, str):
                    raise ArchiveError(f"{self.path}: member 'manifest.json' names a layer that is not a path")
                items.setdefault(layer_digest, Item(layer_digest, self.size(layer), layer, "layer"))
            plan.images += [t for t in _repo_tags([entry]) if t not in plan.images]
        plan.items = sorted(items.values(), key=lambda i: self.offset(i.member))  # archive order
        plan.notes.append("a docker save archive (legacy layout) holds no registry manifest and uncompressed layers: "
                          "the config and layers are imported under their own digests (the layers' are the image's "
                          "diff_ids), which a registry pull of the compressed layers does not ask for")
        return plan


def _norm(name: str) -> str:
    return posixpath.normpath(name).lstrip("/").removeprefix("./")


def _descriptors(doc: Any, key: str) -> list[dict]:
    items = doc.get(key) if isinstance(doc, dict) else None
    return [d for d in items if isinstance(d, dict)] if isinstance(items, list) else []


def _descriptor(desc: Any) -> tuple[Digest | None, str]:
    if not isinstance(desc, dict):
        return None, ""
    media_type = desc.get("mediaType") if isinstance(desc.get("mediaType"), str) else ""
    try:
        return Digest.parse(desc.get("digest")), media_type
    except DigestError:
        return None, media_type


def _repo_tags(entries: Any) -> list[str]:
    tags: list[str] = []
    for entry in entries if isinstance(entries, list) else ():
        if isinstance(entry, dict) and isinstance(entry.get("RepoTags"), list):
            tags += [t for t in entry["RepoTags"] if isinstance(t, str)]
    return tags
