"""containerd: certs.d/<registry>/hosts.toml for each registry, and _default for every other one.

containerd tries the [host."..."] entries in file order and falls back to `server` per request
when the mirror fails (404, error, refused connection), so the mirror entry goes first and the
registry stays reachable when the agent is down.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.exceptions import TOMLKitError

from p2pdist.cli.configure_common import ConfigureError, FileChange, Mirror, Registry, checked_toml, read_text

DEFAULT_ROOT = Path("/etc/containerd/certs.d")
DEFAULT_CONFIG = Path("/etc/containerd/config.toml")
DEFAULT_HOST_DIR = "_default"  # containerd's fallback folder for registries without their own
CAPABILITIES = ["pull", "resolve"]  # never "push": the mirror refuses pushes
_HEADER = ("Written by `p2pdist configure containerd`: pulls try the local p2pdist mirror first",
           "and go to `server` when the mirror cannot serve a request.")
# Where config_path lives in /etc/containerd/config.toml, by the file's `version`.
_CRI_SECTION = {1: ("cri",), 2: ("io.containerd.grpc.v1.cri",), 3: ("io.containerd.cri.v1.images",)}


def plan(root: Path, registries: list[Registry], mirror: Mirror, default_host: bool = True) -> list[FileChange]:
    """The hosts.toml files to write: one per registry, then _default (no server: containerd picks it)."""
    targets: list[tuple[str, Registry | None]] = [(r.host, r) for r in registries]
    if default_host:
        targets.append((DEFAULT_HOST_DIR, None))
    return [_plan_file(root / name / "hosts.toml", registry, mirror) for name, registry in targets]


def _plan_file(path: Path, registry: Registry | None, mirror: Mirror) -> FileChange:
    old = read_text(path)
    doc = _parse(path, old) if old is not None else _fresh_document()
    changed = _merge(path, doc, registry, mirror)
    # Unchanged documents keep their exact text: tomlkit round-trips, but we don't even rely on it.
    return FileChange(path, old, checked_toml(path, tomlkit.dumps(doc)) if changed or old is None else old)


def _parse(path: Path, text: str) -> tomlkit.TOMLDocument:
    try:
        tomllib.loads(text)  # the strict parser decides validity; tomlkit is only for editing
        return tomlkit.parse(text)
    except (tomllib.TOMLDecodeError, TOMLKitError) as e:
        raise ConfigureError(f"{path} is not valid TOML ({e}); containerd cannot use it either. Fix or move "
                             "it away, then run again (nothing was changed)") from None


def _fresh_document() -> tomlkit.TOMLDocument:
    doc = tomlkit.document()
    for line in _HEADER:
        doc.add(tomlkit.comment(line))
    return doc


def _merge(path: Path, doc: tomlkit.TOMLDocument, registry: Registry | None, mirror: Mirror) -> bool:
    """Make the mirror the first host (keeping every other host and setting); True if doc changed."""
    changed = False
    if registry is not None and "server" not in doc:
        doc["server"] = registry.server_url  # an existing server is the user's choice: keep it
        changed = True
    hosts = doc.get("host")
    if hosts is None:
        hosts = tomlkit.table(is_super_table=True)
    elif not isinstance(hosts, MutableMapping):
        raise ConfigureError(f"{path}: `host` is not a table; expected [host.\"URL\"] sections. Fix or move it "
                             "away, then run again (nothing was changed)")
    keys = list(hosts.keys())
    ours = [k for k in keys if mirror.matches_url(k)]
    if keys and ours == [keys[0]] and _capabilities(hosts[keys[0]]) == CAPABILITIES:
        return changed
    entry = hosts[ours[0]] if ours else tomlkit.table()
    if not isinstance(entry, MutableMapping):
        raise ConfigureError(f"{path}: [host.\"{ours[0]}\"] is not a table. Fix or move it away, then run again "
                             "(nothing was changed)")
    entry["capabilities"] = CAPABILITIES  # the user's other settings for this host (timeouts...) stay
    reordered = tomlkit.table(is_super_table=True)
    reordered.add(mirror.url, entry)
    for key in keys:
        if key not in ours:
            reordered.add(key, hosts[key])
    doc["host"] = reordered
    return True


def unplan(root: Path, mirror: Mirror) -> list[FileChange]:
    """Take the mirror's [host."..."] out of every ROOT/*/hosts.toml that has it; the rest stays
    (containerd then goes to `server`, or to the registry itself, as before)."""
    changes = []
    for path in sorted(root.glob("*/hosts.toml")):
        old = read_text(path)
        if old is None:
            continue
        doc = _parse(path, old)
        hosts = doc.get("host")
        if not isinstance(hosts, MutableMapping):
            continue
        ours = [k for k in hosts if mirror.matches_url(k)]
        if not ours:
            continue
        for key in ours:
            del hosts[key]
        if not hosts:
            del doc["host"]
        changes.append(FileChange(path, old, checked_toml(path, tomlkit.dumps(doc))))
    return changes


def _capabilities(entry: Any) -> list[str] | None:
    if not isinstance(entry, MutableMapping):
        return None
    return [str(c) for c in entry.get("capabilities", [])]


def config_path_notes(config_file: Path, root: Path) -> list[str]:
    """Whether containerd's CRI plugin (Kubernetes) will read the files under root, and what to do if not."""
    try:
        text = config_file.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [f"hint: Kubernetes (containerd's CRI plugin) reads these files only when {config_file} sets "
                f"config_path = \"{root}\" under {_section_header(2)}; {config_file} does not exist, so "
                "create it with that setting and restart containerd."]
    except (OSError, UnicodeDecodeError) as e:
        return [f"hint: could not read {config_file} ({e}); containerd's CRI plugin needs config_path = "
                f"\"{root}\" under {_section_header(2)} there to use these files."]
    try:
        config = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        return [f"warning: {config_file} is not valid TOML ({e}); containerd will not start with it."]
    version = config.get("version", 1)  # a file without `version` is version 1
    version = version if version in _CRI_SECTION else 2
    registry = _registry_section(config, version)
    configured = str(registry.get("config_path", "") or "")
    notes = _config_path_status(config_file, root, configured, version)
    if configured and registry.get("mirrors"):
        notes.append(f"warning: {config_file} also sets the deprecated registry.mirrors; containerd's CRI plugin "
                     "refuses to start with both mirrors and config_path: remove the mirrors section.")
    return notes


def _registry_section(config: dict[str, Any], version: int) -> dict[str, Any]:
    section: Any = config.get("plugins", {})
    for key in (*_CRI_SECTION[version], "registry"):
        section = section.get(key, {}) if isinstance(section, dict) else {}
    return section if isinstance(section, dict) else {}


def _config_path_status(config_file: Path, root: Path, configured: str, version: int) -> list[str]:
    if not configured:
        return [f"hint: Kubernetes (containerd's CRI plugin) reads these files only when config_path is set: "
                f"{config_file} does not set it; add config_path = \"{root}\" under {_section_header(version)} "
                "and restart containerd."]
    # config_path may list several folders, like $PATH.
    if any(_same_path(p, root) for p in configured.split(os.pathsep) if p):
        return [f"containerd: {config_file} sets config_path = \"{configured}\", so its CRI plugin uses these "
                "files from the next pull on (hosts.toml needs no restart)."]
    first = configured.split(os.pathsep)[0]
    return [f"warning: {config_file} sets config_path = \"{configured}\", not {root}: containerd's CRI plugin "
            f"will not read the files written here. Run again with --config-path {first}, or change config_path "
            "and restart containerd."]


def _section_header(version: int) -> str:
    return "[plugins." + ".".join(f'"{k}"' if "." in k else k for k in _CRI_SECTION[version]) + ".registry]"


def _same_path(a: str, b: Path) -> bool:
    return os.path.normpath(os.path.abspath(a)) == os.path.normpath(os.path.abspath(b))


def verify_note(root: Path, registries: list[Registry]) -> str:
    ref = "docker.io/library/busybox:latest" if registries[0].host == "docker.io" else f"{registries[0].host}/REPO:TAG"
    return (f"verify: ctr images pull --hosts-dir {root} {ref} (ctr ignores config_path), or crictl pull {ref}; "
            "the pull then shows in the agent's log and in p2pdist_bytes_received_total on its /metrics.")
