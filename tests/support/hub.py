"""A Docker-Hub-like token registry for the mirror's tests: who may pull what, and the images in it."""

from __future__ import annotations

from pathlib import Path

from tests.support.images import OciImage
from tests.support.registry import Registry

ALICE = ("alice", "alice-pw")
USERS = {"alice": "alice-pw", "bob": "bob-pw"}
# alice may do anything; bob may pull other/*; anonymous may pull public/* only, as on Docker Hub.
RIGHTS = {"alice": [("*", ("pull", "push"))], "bob": ["other/*"], None: ["public/*"]}
PUBLIC, PRIVATE, OTHER = "public/app", "private/app", "other/app"


def start_hub(workdir: Path, images: tuple[OciImage, OciImage]) -> Registry:
    """The token registry with the public image under public/app and other/app, the private one under
    private/app (pushed as alice)."""
    registry = Registry(auth="token", users=USERS, rights=RIGHTS, workdir=workdir).start()
    public, private = images
    creds = ":".join(ALICE)
    public.push(registry.host, PUBLIC, creds=creds)
    public.push(registry.host, OTHER, creds=creds)
    private.push(registry.host, PRIVATE, creds=creds)
    return registry


def private_only(images: tuple[OciImage, OciImage]) -> list[str]:
    """The private image's blobs that the public one does not share."""
    public, private = images
    return sorted(set(private.blob_digests) - set(public.blob_digests))
