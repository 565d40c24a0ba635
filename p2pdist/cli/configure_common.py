"""Shared pieces of `p2pdist configure`: the mirror and registry arguments, and safe file updates.

Every runtime module turns the arguments into a list of `FileChange`s without touching the disk;
only `apply` writes. That split is what makes --dry-run exact and lets a bad existing file stop
the whole run before anything has been changed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from p2pdist.core.names import InvalidName, check_registry
from p2pdist.store.durable import fsync_dir as _fsync_dir

from ..errors import P2pdistError

DOCKER_HUB = "docker.io"
# Image references name Docker Hub "docker.io"; "index.docker.io" is the legacy spelling that
# Docker and containerd normalise to it, so a mirror entry must use the normalised name.
_HUB_ALIASES = {"index.docker.io": DOCKER_HUB}
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]"}


class ConfigureError(P2pdistError):
    """A problem the user must fix; the message says what and how. Nothing has been written."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class UsageError(ConfigureError):
    """A bad command-line value (exit code 2, like argparse's own errors)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, exit_code=2)


@dataclass(frozen=True)
class Mirror:
    """The local p2pdist mirror as runtimes must dial it: always plain http."""

    hostport: str  # e.g. 127.0.0.1:65001

    @property
    def url(self) -> str:
        return f"http://{self.hostport}"

    def matches_url(self, value: str) -> bool:
        # dockerd stores mirrors with a trailing slash ("http://127.0.0.1:65001/"): same mirror.
        return value.strip().rstrip("/") == self.url


@dataclass(frozen=True)
class Registry:
    """An upstream registry whose pulls should go through the mirror."""

    host: str  # as it appears in image references: docker.io, quay.io, 127.0.0.1:5000
    plain_http: bool = False  # the registry itself speaks http (given as http://HOST)

    @property
    def server_url(self) -> str:
        """Where the runtime goes when the mirror cannot serve a request."""
        if self.host == DOCKER_HUB:
            return "https://registry-1.docker.io"  # docker.io has no registry API of its own
        return f"{'http' if self.plain_http else 'https'}://{self.host}"

    @property
    def upstream_flag(self) -> str:
        """How the agent must be told to allow this registry (p2pdist daemon --upstream)."""
        return f"http://{self.host}" if self.plain_http else self.host


def parse_mirror(value: str) -> Mirror:
    """'127.0.0.1:65001' or 'http://127.0.0.1:65001' -> Mirror; anything else is a UsageError."""
    text = value.strip().rstrip("/")
    if text.startswith("https://"):
        raise UsageError(f"--mirror {value!r}: the p2pdist mirror speaks plain http; give HOST:PORT, "
                         "e.g. --mirror 127.0.0.1:65001")
    text = text.removeprefix("http://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--mirror {value!r}: expected HOST:PORT of the agent's mirror, e.g. 127.0.0.1:65001")
    if host in _WILDCARD_HOSTS:
        raise UsageError(f"--mirror {value!r}: {host} is a listen address, not one a runtime can dial; "
                         f"give the address clients connect to, e.g. --mirror 127.0.0.1:{port}")
    try:
        check_registry(text)
    except InvalidName as e:
        raise UsageError(f"--mirror {value!r}: {e}") from None
    return Mirror(text)


def parse_registry(value: str) -> Registry:
    """'quay.io', 'http://127.0.0.1:5000' -> Registry; a repository path or bad host is a UsageError."""
    text = value.strip().rstrip("/")
    plain_http = text.startswith("http://")
    text = text.removeprefix("http://").removeprefix("https://")
    if "/" in text:
        host = text.split("/", 1)[0]
        raise UsageError(f"--registry {value!r}: give the registry host only (e.g. --registry {host}); "
                         "mirrors are configured per registry, not per repository")
    try:
        check_registry(text)
    except InvalidName as e:
        raise UsageError(f"--registry {value!r}: {e}, e.g. docker.io, quay.io or 127.0.0.1:5000") from None
    host = _HUB_ALIASES.get(text.lower(), text)
    if host == DOCKER_HUB and plain_http:
        raise UsageError(f"--registry {value!r}: Docker Hub is https only; use --registry docker.io")
    return Registry(host, plain_http)


def parse_registries(values: list[str] | None) -> list[Registry]:
    """The --registry values, docker.io when none, without duplicates, in the order given."""
    registries: dict[str, Registry] = {}
    for value in values or [DOCKER_HUB]:
        registry = parse_registry(value)
        if registry.host in registries and registries[registry.host] != registry:
            raise UsageError(f"--registry {registry.host} is given both with and without http://; pick one")
        registries.setdefault(registry.host, registry)
    return list(registries.values())


@dataclass(frozen=True)
class FileChange:
    """One config file's content before (None: absent) and after this run."""

    path: Path
    old: str | None
    new: str

    @property
    def changed(self) -> bool:
        return self.old != self.new

    @property
    def status(self) -> str:
        if self.old is None:
            return "created"
        return "updated" if self.changed else "unchanged"


def checked_toml(path: Path, text: str) -> str:
    """text, after making sure the strict parser reads it: an editing slip must never reach a runtime."""
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigureError(f"internal error: the merged {path} would not be valid TOML ({e}); nothing was "
                             "changed. Please report this with a copy of the file.") from None
    return text


def read_text(path: Path) -> str | None:
    """The file's text, or None if it does not exist."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ConfigureError(f"{path} is a directory, expected a file") from None
    except UnicodeDecodeError:
        raise ConfigureError(f"{path} is not UTF-8 text; fix or move it away, then run again "
                             "(nothing was changed)") from None
    except PermissionError:
        raise ConfigureError(f"cannot read {path}: permission denied (run as root, or use --dry-run "
                             "with a path you can read)") from None
    except OSError as e:  # a file where a folder should be, an unreadable disk...
        raise ConfigureError(f"cannot read {path}: {e.strerror or e}; point the path option at a usable "
                             "place (nothing was changed)") from None


def apply(change: FileChange) -> Path | None:
    """Write one change: backup of the old file first, then an atomic replace. Returns the backup."""
    if not change.changed:
        return None  # idempotence: no write, no second backup
    # Write through a symlink (e.g. daemon.json managed elsewhere) instead of replacing the link.
    target = change.path.resolve() if change.path.is_symlink() else change.path
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        backup = _backup(target) if change.old is not None else None
        atomic_write(target, change.new)
    except PermissionError as e:
        raise ConfigureError(f"cannot write {e.filename or target}: permission denied (run as root, or "
                             "point the path option at a writable file; --dry-run shows the result)") from None
    except OSError as e:  # a folder that cannot be made (/proc, a file in the way), a read-only disk...
        raise ConfigureError(f"cannot write {e.filename or target}: {e.strerror or e} (point the path option at "
                             "a writable place; --dry-run shows the result)") from None
    return backup


def _backup(path: Path) -> Path:
    """Copy the current file aside; never overwrite an earlier backup (it may be the pristine original)."""
    backup = path.with_name(path.name + ".bak")
    if backup.exists():
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        backup = path.with_name(f"{path.name}.bak.{stamp}")
        n = 1
        while backup.exists():
            backup = path.with_name(f"{path.name}.bak.{stamp}.{n}")
            n += 1
    shutil.copy2(path, backup)
    return backup


def atomic_write(path: Path, text: str) -> None:
    """Replace path with text so a reader (or a crash) sees either the old or the new file, never half."""
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            # mkstemp makes 0600 files; runtimes read these configs as other users too.
            os.fchmod(f.fileno(), st.st_mode & 0o7777 if st else 0o644)
            if st is not None:
                _keep_owner(f.fileno(), st)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _keep_owner(fd: int, st: os.stat_result) -> None:
    with contextlib.suppress(PermissionError):  # not root: the file is ours anyway
        os.fchown(fd, st.st_uid, st.st_gid)
