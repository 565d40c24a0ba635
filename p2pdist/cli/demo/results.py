"""What a demo run measured, per blob, per node and in total; and its JSON form."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from p2pdist.cli.demo.image import Image


@dataclass
class BlobFetch:
    """One blob on one node, as the node's API reported it and the demo checked it."""

    digest: str
    size: int  # from the image manifest
    have: int = 0  # progress so far
    done: bool = False
    seconds: float | None = None  # from the flash crowd's start until this node had the blob
    from_peers: int = 0
    from_origin: int = 0
    cached: bool = False  # the node had it already (a reused --workdir)
    path: str | None = None
    verified: bool = False  # the demo hashed the file and it matched the digest
    error: str | None = None

    @property
    def from_cache(self) -> int:
        """Bytes that came neither from peers nor the origin: already on disk before this run."""
        return max(0, self.size - self.from_peers - self.from_origin) if self.done else 0

    @property
    def ok(self) -> bool:
        return self.done and self.verified and self.error is None

    def as_dict(self) -> dict[str, Any]:
        return {"digest": self.digest, "size": self.size, "ok": self.ok, "seconds": self.seconds,
                "from_peers": self.from_peers, "from_origin": self.from_origin, "from_cache": self.from_cache,
                "path": self.path, "verified": self.verified, "error": self.error}


@dataclass
class NodeRun:
    """Every blob of the image on one node."""

    node: str
    api: str
    blobs: list[BlobFetch]

    @property
    def size(self) -> int:
        return sum(b.size for b in self.blobs)

    @property
    def have(self) -> int:
        return sum(b.size if b.done else min(b.have, b.size) for b in self.blobs)

    @property
    def from_peers(self) -> int:
        return sum(b.from_peers for b in self.blobs)

    @property
    def from_origin(self) -> int:
        return sum(b.from_origin for b in self.blobs)

    @property
    def from_cache(self) -> int:
        return sum(b.from_cache for b in self.blobs)

    @property
    def ok(self) -> bool:
        return all(b.ok for b in self.blobs)

    @property
    def seconds(self) -> float | None:
        """Until the node had the whole image; None if it never did."""
        if not all(b.done for b in self.blobs):
            return None
        return max((b.seconds or 0.0) for b in self.blobs)

    @property
    def errors(self) -> list[str]:
        return [f"{self.node}: {b.digest[:19]}: {b.error}" for b in self.blobs if b.error]

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node, "ok": self.ok, "seconds": self.seconds, "size": self.size,
                "from_peers": self.from_peers, "from_origin": self.from_origin, "from_cache": self.from_cache,
                "blobs": [b.as_dict() for b in self.blobs]}


@dataclass
class DemoResult:
    origin_kind: str  # "registry" or "embedded"
    reference: str  # REGISTRY/REPO:TAG of the image at the origin
    image: Image
    nodes: list[NodeRun]
    origin_egress: dict[str, int] = field(default_factory=dict)  # per digest, counted at the origin
    workdir: str | None = None  # kept for reading logs; None when removed
    exited: list[str] = field(default_factory=list)  # tracker/agents that died during the run
    audits: int = 0  # pieces fetched twice so the fresh tracker could check new nodes' digests

    @property
    def image_size(self) -> int:
        return self.image.size

    @property
    def egress(self) -> int:
        """Origin egress for the image's blobs (the manifest aside: the nodes never asked for it)."""
        return sum(self.origin_egress.get(b.digest, 0) for b in self.image.blobs)

    @property
    def egress_ratio(self) -> float:
        return self.egress / self.image_size if self.image_size else 0.0

    @property
    def all_done_seconds(self) -> float | None:
        times = [n.seconds for n in self.nodes]
        return None if any(t is None for t in times) else max(t for t in times if t is not None)

    @property
    def errors(self) -> list[str]:
        return [*self.exited, *(e for n in self.nodes for e in n.errors)]

    @property
    def ok(self) -> bool:
        return bool(self.nodes) and all(n.ok for n in self.nodes) and not self.exited

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "origin": {"kind": self.origin_kind, "egress": self.egress, "egress_per_blob": self.origin_egress},
            "image": {"reference": self.reference, "manifest": self.image.manifest.digest, "size": self.image_size,
                      "blobs": [{"digest": b.digest, "size": b.size, "media_type": b.media_type}
                                for b in self.image.blobs]},
            "nodes": [n.as_dict() for n in self.nodes],
            "summary": {"nodes": len(self.nodes), "image_size": self.image_size, "origin_egress": self.egress,
                        "egress_ratio": round(self.egress_ratio, 4), "all_done_seconds": self.all_done_seconds,
                        "audits": self.audits,
                        "from_peers": sum(n.from_peers for n in self.nodes),
                        "from_origin": sum(n.from_origin for n in self.nodes)},
            "errors": self.errors,
            "workdir": self.workdir,
        }
