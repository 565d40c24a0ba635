"""Prometheus metrics of one agent process."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, PlatformCollector, ProcessCollector

from p2pdist import __version__

if TYPE_CHECKING:
    from p2pdist.store import Store


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # The process (CPU, memory, descriptors) and the build, as every Prometheus exporter has them.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("p2pdist_build", "The agent's version", registry=r).info({"version": __version__})
        self.bytes_in = Counter("p2pdist_bytes_received_total", "Verified blob bytes received", ["source"], registry=r)
        self.bytes_out = Counter("p2pdist_bytes_uploaded_total", "Piece bytes uploaded to peers", registry=r)
        self.digests_learned = Counter(
            "p2pdist_piece_digests_learned_total",
            "Piece digests learned, from the tracker's replies or from neighbours with the tracker's proof",
            ["source"], registry=r)
        self.pieces_bad = Counter("p2pdist_bad_pieces_total", "Pieces from peers that failed verification", registry=r)
        self.pieces_relayed = Counter(
            "p2pdist_pieces_relayed_total",
            "Pieces sent to a peer while they still arrived here, block by block as each checked out", registry=r)
        self.offers_withdrawn = Counter(
            "p2pdist_offers_withdrawn_total",
            "Pieces offered to the neighbours at their first block whose transfer here then failed "
            "(their askers were cut off)", registry=r)
        self.block_lists_hashed = Counter(
            "p2pdist_block_lists_hashed_total",
            "Pieces read back and hashed to send their block digests with them (not kept from their verification)",
            registry=r)
        self.pieces_disputed = Counter(
            "p2pdist_pieces_disputed_total",
            "Origin pieces whose bytes contradicted the digest the tracker gave (the origin's was kept)", registry=r)
        self.peer_errors = Counter("p2pdist_peer_errors_total", "Failed piece requests to peers", ["kind"], registry=r)
        self.peers_banned = Counter("p2pdist_peers_banned_total", "Peers stopped being used for bad data", registry=r)
        self.uploads_busy = Counter("p2pdist_uploads_refused_total", "Piece requests refused as busy", registry=r)
        self.fetches = Counter("p2pdist_blob_fetches_total", "Blob downloads finished", ["result"], registry=r)
        self.fetch_seconds = Histogram(
            "p2pdist_blob_fetch_seconds", "Time to fetch a blob", registry=r,
            buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900),
        )
        # Not p2pdist_tracker_errors_total: that is the tracker's own count of requests it refused.
        self.tracker_errors = Counter("p2pdist_announce_failures_total",
                                      "Announces that got no usable answer from the tracker", registry=r)
        self.origin_fallbacks = Counter(
            "p2pdist_origin_fallbacks_total", "Downloads that fell back to the origin", ["reason"], registry=r
        )
        self.mirror_responses = Counter(
            "p2pdist_mirror_responses_total", "Mirror answers by endpoint (base, token, manifest, blob) and status",
            ["endpoint", "status"], registry=r,
        )
        self.mirror_upstream_checks = Counter(
            "p2pdist_mirror_upstream_checks_total",
            "Blob reads the upstream was asked to confirm for a client and repository (HEAD with its credentials)",
            ["result"], registry=r,
        )
        self.mirror_blobs = Counter(
            "p2pdist_mirror_blob_requests_total",
            "Blob GETs the mirror answered, by cache: hit (in the store), miss (downloaded through the swarm "
            "as it was sent), passthrough (from the origin, not kept: no room)", ["cache"], registry=r,
        )
        self.mirror_bytes = Counter(
            "p2pdist_mirror_bytes_served_total",
            "Blob bytes the mirror sent to clients, by where they came from: cache (the store), swarm (a "
            "download in progress: peers and origin, see p2pdist_bytes_received_total), origin (passthrough)",
            ["source"], registry=r,
        )
        self.swarms = Gauge("p2pdist_active_swarms", "Blobs downloading now", registry=r)
        self.neighbours = Gauge("p2pdist_neighbours", "Connected peers", registry=r)
        self.uploads = Gauge("p2pdist_uploads_active", "Piece uploads being served now (limits.upload_slots caps them)",
                             registry=r)
        self.upload_line = Gauge("p2pdist_upload_line", "Piece requests waiting for a busy upload slot "
                                 "(limits.upload_line caps them)", registry=r)
        self.store_bytes = Gauge("p2pdist_store_bytes", "Bytes of complete blobs in the store", registry=r)
        self.store_blobs = Gauge("p2pdist_store_blobs", "Complete blobs in the store", registry=r)
        self.store_capacity = Gauge("p2pdist_store_capacity_bytes",
                                    "Bytes of complete blobs the store keeps (capacity); 0 = unlimited", registry=r)

    def watch_store(self, store: Store) -> None:
        """Read the store's use at each scrape: downloads, imports, `p2pdist cache rm|gc` and
        evictions all change it, and none has to remember to tell the gauges."""
        self.store_bytes.set_function(store.usage)
        self.store_blobs.set_function(lambda: len(store.blobs()))
        self.store_capacity.set(store.capacity or 0)
