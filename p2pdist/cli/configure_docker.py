"""Docker: the mirror first in daemon.json's "registry-mirrors", every other key left as it was.

dockerd refuses to start on a daemon.json it cannot parse, so an existing file that is not a JSON
object is never overwritten: the user fixes it first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from p2pdist.cli.configure_common import DOCKER_HUB, ConfigureError, FileChange, Mirror, Registry, read_text

DEFAULT_DAEMON_JSON = Path("/etc/docker/daemon.json")
KEY = "registry-mirrors"


def plan(path: Path, mirror: Mirror) -> FileChange:
    old = read_text(path)
    config = _parse(path, old)
    mirrors = config.get(KEY, [])
    if not isinstance(mirrors, list) or not all(isinstance(m, str) for m in mirrors):
        raise ConfigureError(f"{path}: \"{KEY}\" must be a list of URLs, found {json.dumps(mirrors)}. Fix it, then "
                             "run again (nothing was changed)")
    if old is not None and mirrors and mirror.matches_url(mirrors[0]):
        return FileChange(path, old, old)  # already first: leave the file byte for byte
    # Docker tries mirrors in order, so ours goes first; the others stay as later fallbacks.
    config[KEY] = [mirror.url, *(m for m in mirrors if not mirror.matches_url(m))]
    return FileChange(path, old, json.dumps(config, indent=2) + "\n")


def unplan(path: Path, mirror: Mirror) -> list[FileChange]:
    """Take the mirror out of "registry-mirrors" (the key goes when it empties); nothing else moves."""
    old = read_text(path)
    if old is None:
        return []
    config = _parse(path, old)
    mirrors = config.get(KEY, [])
    if not isinstance(mirrors, list) or not any(isinstance(m, str) and mirror.matches_url(m) for m in mirrors):
        return [FileChange(path, old, old)]
    kept = [m for m in mirrors if not (isinstance(m, str) and mirror.matches_url(m))]
    if kept:
        config[KEY] = kept
    else:
        del config[KEY]
    return [FileChange(path, old, json.dumps(config, indent=2) + "\n")]


def _parse(path: Path, text: str | None) -> dict[str, Any]:
    if text is None or not text.strip():
        return {}  # dockerd also treats an empty daemon.json as no settings
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigureError(f"{path} is not valid JSON ({e}); dockerd would not start with it either. Fix or "
                             "move it away, then run again (nothing was changed)") from None
    if not isinstance(config, dict):
        raise ConfigureError(f"{path} must hold a JSON object ({{...}}), found {type(config).__name__}. Fix or "
                             "move it away, then run again (nothing was changed)")
    return config


def notes(registries: list[Registry], mirror: Mirror) -> list[str]:
    out = []
    others = [r.host for r in registries if r.host != DOCKER_HUB]
    if others:
        out.append(f"warning: Docker uses registry-mirrors for docker.io images only; pulls from {', '.join(others)} "
                   "go straight to the registry. Configure containerd or podman for those registries.")
    else:
        out.append("note: Docker uses registry-mirrors for docker.io images only; other registries are pulled "
                   "directly.")
    out.append("apply: restart dockerd (systemctl restart docker); a running dockerd also reloads registry-mirrors "
               "on SIGHUP (kill -HUP $(pidof dockerd)).")
    out.append(f"verify: docker info lists {mirror.url}/ under Registry Mirrors; then docker pull busybox shows in the "
               "agent's log and in p2pdist_bytes_received_total on its /metrics.")
    return out
