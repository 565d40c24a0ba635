"""The one authentication hook for the peer port (node identity, or the node secret).

The peer port never answers data or control requests without a credential, loopback included: in
a cluster, a request signed under a tracker ticket (``p2pdist.core.identity``), so every caller is a
known node and can be banned as one; on a node on its own, a secret this node generates once and
keeps in ``data_dir/node-secret`` (known to no other node, so only a local process that can read the
data dir gets in).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import secrets
import stat
from pathlib import Path

from aiohttp import web

from p2pdist.agent.identity import NodeIdentity
from p2pdist.agent.neighbours import PEER_NODE
from p2pdist.core.bearer import bearer_refusal
from p2pdist.core.identity import TICKET_SCHEME, AuthError
from p2pdist.store.durable import fsync_dir as _fsync_dir

from ..errors import P2pdistError

log = logging.getLogger("p2pdist.auth")

NODE_SECRET_FILE = "node-secret"
NODE_SECRET_BYTES = 32  # of entropy; token_urlsafe spells them as 43 characters
_SECRET_TEXT = re.compile(r"[A-Za-z0-9_-]{43,512}")  # what we write, or an operator's longer one
_MAX_SECRET_FILE = 1024


class NodeSecretError(P2pdistError):
    """The node secret file cannot be used; the message names the file and the fix."""


def node_secret(path: Path) -> str:
    """The node secret kept in ``path``: created once (0600, atomically), then read back.

    A secret that is unreadable, malformed or open to group/other is refused, never replaced:
    replacing it would hide a tampered or copied file.
    """
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    value = secrets.token_urlsafe(NODE_SECRET_BYTES)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, (value + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            # link, not rename: two agents starting on one data dir must not replace each other's secret.
            os.link(tmp, path)
        except FileExistsError:
            return _read_secret(path)
        _fsync_dir(path.parent)
    except OSError as e:
        raise NodeSecretError(f"cannot create the node secret {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return value


def _read_secret(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise NodeSecretError(f"node secret {path} is a symbolic link: it must be a regular file") from None
        raise NodeSecretError(f"cannot read the node secret {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NodeSecretError(f"node secret {path} is not a regular file")
        if st.st_mode & 0o077:
            raise NodeSecretError(
                f"node secret {path} is open to group/other (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"any local user could read pieces from this node's peer port with it. "
                f"Remove it to have a new one made at the next start, or run: chmod 600 {path}"
            )
        raw = os.read(fd, _MAX_SECRET_FILE + 1)
    except OSError as e:
        raise NodeSecretError(f"cannot read the node secret {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    text = raw.decode("ascii", "replace").removesuffix("\n")
    if len(raw) > _MAX_SECRET_FILE or not _SECRET_TEXT.fullmatch(text):
        # Never echo the content: it may be a real secret with a stray character.
        raise NodeSecretError(
            f"node secret {path} is malformed (expected one line of 43 to 512 URL-safe base64 "
            f"characters); remove it to have a new one made at the next start"
        )
    return text


def peer_auth(identity: NodeIdentity | None, node_secret: str = "", open_paths: tuple[str, ...] = ("/healthz",)):
    """aiohttp middleware for the peer port: every path but ``open_paths`` needs a credential.

    In a cluster (``identity``): a tracker-signed ticket and a request signed for this node
    (``P2P-Ticket``); the caller's node id is kept in ``request[PEER_NODE]``. On a node on its own:
    ``Authorization: Bearer <node secret>``. Refusals name what is missing, never a secret.
    """
    if identity is None and not node_secret:
        # Fail closed: no credential must never mean "no authentication".
        raise ValueError("the peer port needs a credential: a node identity or the node secret")

    def why_not(request: web.Request) -> str | None:
        header = request.headers.get("Authorization")
        if identity is None:
            why = bearer_refusal(header, node_secret, "node secret")
            return None if why is None else (
                f"{why} (this node has no identity in a cluster: give it a node credential or the cluster "
                f"secret to let peers in)")
        try:
            request[PEER_NODE] = identity.check_peer(header, request.method, request.rel_url.raw_path,
                                                     request.headers.get("Range", ""))
        except AuthError as e:
            return str(e)
        return None

    @web.middleware
    async def middleware(request: web.Request, handler):
        if request.path not in open_paths:
            why = why_not(request)
            if why is not None:
                log.info("peer request refused", extra={"remote": request.remote, "path": request.path, "why": why})
                scheme = "Bearer" if identity is None else TICKET_SCHEME
                raise web.HTTPUnauthorized(text=f"cluster authentication required: {why}",
                                           headers={"WWW-Authenticate": f'{scheme} realm="p2pdist-cluster"'})
        return await handler(request)

    return middleware
