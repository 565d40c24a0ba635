"""podman, CRI-O, buildah, skopeo (containers/image): [[registry]] entries with the mirror first.

containers/image tries mirrors in order and falls back to the registry itself only before the
manifest was fetched. The mirror is plain http, hence `insecure = true` on its entry. Its location
names the registry as a path prefix (`127.0.0.1:65001/quay.io`): containers/image sends no `ns`, so
this is how one mirror tells the registries apart (p2pdist/mirror/routes.py).
"""

from __future__ import annotations

import tomllib
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Table

from p2pdist.cli.configure_common import (
    DOCKER_HUB,
    ConfigureError,
    FileChange,
    Mirror,
    Registry,
    checked_toml,
    read_text,
)
from p2pdist.core.names import path_prefix

DEFAULT_REGISTRIES_CONF = Path("/etc/containers/registries.conf")
_HEADER = ("Mirror entries written by `p2pdist configure podman`: pulls try the local p2pdist mirror",
           "first. See containers-registries.conf(5).")
_NOTHING_CHANGED = "Fix or move it away, then run again (nothing was changed)"


def plan(path: Path, registries: list[Registry], mirror: Mirror, digest_only: bool = False) -> FileChange:
    old = read_text(path)
    doc = _parse(path, old) if old is not None else _fresh_document()
    entries = doc.get("registry")
    if entries is None:
        entries = tomlkit.aot()
    elif not isinstance(entries, AoT):
        raise ConfigureError(f"{path}: `registry` must be [[registry]] tables. {_NOTHING_CHANGED}")
    changed = False
    for registry in registries:
        changed |= _merge_registry(path, entries, registry, mirror, digest_only)
    if "registry" not in doc and entries:
        doc["registry"] = entries
    return FileChange(path, old, checked_toml(path, tomlkit.dumps(doc)) if changed or old is None else old)


def _parse(path: Path, text: str) -> tomlkit.TOMLDocument:
    try:
        tomllib.loads(text)  # the strict parser decides validity; tomlkit is only for editing
        doc = tomlkit.parse(text)
    except (tomllib.TOMLDecodeError, TOMLKitError) as e:
        raise ConfigureError(f"{path} is not valid TOML ({e}); podman cannot use it either. "
                             f"{_NOTHING_CHANGED}") from None
    if "registries" in doc:
        # containers/image rejects a file that mixes the v1 tables with [[registry]].
        raise ConfigureError(f"{path} uses the old v1 format ([registries.search] etc.), which cannot be mixed "
                             "with [[registry]] entries. Convert it to the v2 format (unqualified-search-registries "
                             "and [[registry]], see containers-registries.conf(5)), then run again "
                             "(nothing was changed)")
    return doc


def _fresh_document() -> tomlkit.TOMLDocument:
    doc = tomlkit.document()
    for line in _HEADER:
        doc.add(tomlkit.comment(line))
    return doc


def _find(entries: list[Any], host: str) -> MutableMapping[str, Any] | None:
    """The [[registry]] for exactly this host: prefix defaults to location when absent."""
    for entry in entries:
        if isinstance(entry, MutableMapping) and entry.get("prefix", entry.get("location")) == host:
            return entry
    return None


def _merge_registry(path: Path, entries: AoT, registry: Registry, mirror: Mirror, digest_only: bool) -> bool:
    """Ensure registry's entry lists the mirror first; True if anything changed."""
    entry = _find(entries, registry.host)
    if entry is None:
        new = _new_entry(registry, mirror, digest_only)
        if len(entries) and not entries.as_string().endswith("\n\n"):
            new.trivia.indent = "\n"  # a blank line before the new [[registry]], as people write them
        entries.append(new)
        return True
    changed = False
    if registry.plain_http and entry.get("insecure") is not True:
        entry["insecure"] = True
        changed = True
    if digest_only and entry.get("mirror-by-digest-only") is not True:
        entry["mirror-by-digest-only"] = True
        changed = True
    mirrors = entry.get("mirror", [])
    if not isinstance(mirrors, list) or not all(isinstance(m, MutableMapping) for m in mirrors):
        raise ConfigureError(f"{path}: the mirror list of [[registry]] {registry.host} must be [[registry.mirror]] "
                             f"tables. {_NOTHING_CHANGED}")
    ours = [i for i, m in enumerate(mirrors) if _is_mirror(m, mirror)]
    location = mirror_location(mirror, registry)
    if ours == [0] and mirrors[0].get("insecure") is True and mirrors[0].get("location") == location:
        return changed
    first = _as_table(mirrors[ours[0]]) if ours else tomlkit.table()
    first["location"] = location
    first["insecure"] = True
    reordered = tomlkit.aot()
    reordered.append(first)
    for i, m in enumerate(mirrors):
        if i not in ours:
            reordered.append(_as_table(m))
    entry["mirror"] = reordered
    return True


def unplan(path: Path, mirror: Mirror) -> list[FileChange]:
    """Take the mirror out of every [[registry]]'s mirror list (the list goes when it empties); the
    entries themselves and every other setting stay."""
    old = read_text(path)
    if old is None:
        return []
    doc = _parse(path, old)
    changed = False
    for entry in doc.get("registry", []):
        if not isinstance(entry, MutableMapping):
            continue
        mirrors = entry.get("mirror", [])
        if not isinstance(mirrors, list):
            continue
        kept = [m for m in mirrors if not (isinstance(m, MutableMapping) and _is_mirror(m, mirror))]
        if len(kept) == len(mirrors):
            continue
        changed = True
        if kept:
            table = tomlkit.aot()
            for m in kept:
                table.append(_as_table(m))
            entry["mirror"] = table
        else:
            del entry["mirror"]
    return [FileChange(path, old, checked_toml(path, tomlkit.dumps(doc)) if changed else old)]


def _as_table(entry: MutableMapping[str, Any]) -> Table:
    """A [[registry.mirror]] table; `mirror = [{...}]` inline tables cannot go into an array of tables."""
    if isinstance(entry, Table):
        return entry
    table = tomlkit.table()
    for key, value in entry.items():
        # Plain values: inline items carry inline formatting (no line ends) that would glue lines together.
        table[key] = value.unwrap() if hasattr(value, "unwrap") else value
    return table


def _new_entry(registry: Registry, mirror: Mirror, digest_only: bool) -> Table:
    entry = tomlkit.table()
    entry["prefix"] = registry.host
    entry["location"] = registry.host
    if registry.plain_http:
        entry["insecure"] = True
    if digest_only:
        entry["mirror-by-digest-only"] = True
    ours = tomlkit.table()
    ours["location"] = mirror_location(mirror, registry)
    ours["insecure"] = True  # plain http: the agent has no TLS on loopback
    mirrors = tomlkit.aot()
    mirrors.append(ours)
    entry["mirror"] = mirrors
    return entry


def mirror_location(mirror: Mirror, registry: Registry) -> str:
    """The mirror with the registry as a path prefix: the mirror routes by it (no `ns` from containers/image)."""
    return f"{mirror.hostport}/{path_prefix(registry.host)}"


def _is_mirror(entry: MutableMapping[str, Any], mirror: Mirror) -> bool:
    """Our mirror, with or without a path (entries written before paths named the registry had none)."""
    location = str(entry.get("location", "")).removeprefix("http://").rstrip("/")
    return location == mirror.hostport or location.startswith(mirror.hostport + "/")


def notes(new_text: str, registries: list[Registry], mirror: Mirror, digest_only: bool) -> list[str]:
    out = _shadowing_notes(new_text, registries, mirror)
    if digest_only:
        out.append("note: with mirror-by-digest-only, pulls by tag skip the mirror; pull by digest "
                   "(IMAGE@sha256:...) to go through it. It applies to every mirror of these registries.")
    out.append("apply: podman, skopeo and buildah read registries.conf at each command; restart CRI-O "
               "(systemctl restart crio), it does not reload it. Rootless podman reads "
               "~/.config/containers/registries.conf instead when that file exists.")
    out.append(f"private images: podman, skopeo and CRI-O send --creds and pull secrets to the registry only, "
               f"never to a mirror. Log in to the mirror instead (podman login {mirror.hostport}), or give the "
               "agent a robot account ([[upstream]] username/password) for clients that send none.")
    ref = "docker.io/library/busybox" if registries[0].host == DOCKER_HUB else f"{registries[0].host}/REPO:TAG"
    out.append(f"verify: podman pull {ref} shows in the agent's log and in p2pdist_bytes_received_total on its "
               "/metrics.")
    return out


def _shadowing_notes(text: str, registries: list[Registry], mirror: Mirror) -> list[str]:
    """Entries with a longer prefix win in containers/image: say which would bypass the mirror."""
    entries = tomllib.loads(text).get("registry", [])
    out = []
    for entry in entries:
        prefix = str(entry.get("prefix", entry.get("location", "")))
        mirrored = any(_is_mirror(m, mirror) for m in entry.get("mirror", []))
        for registry in registries:
            if prefix.startswith(registry.host + "/") and not mirrored:
                out.append(f"warning: [[registry]] prefix = \"{prefix}\" is more specific than {registry.host} and "
                           "has no p2pdist mirror: images under it bypass the mirror. Add to it [[registry.mirror]] "
                           f"location = \"{mirror.hostport}/{path_prefix(registry.host)}\" insecure = true, "
                           "or remove that entry.")
    return out
