"""Prometheus metrics of one tracker app, in a registry of its own (several apps can share a process)."""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from p2pdist import __version__

from .state import TrackerState


class TrackerMetrics:
    def __init__(self, state: TrackerState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        Info("p2pdist_tracker_build", "The tracker's version", registry=r).info({"version": __version__})
        self.announces = Counter("p2pdist_tracker_announces", "Announces received, by event", ["event"],
                                 registry=r)
        self._announce_children: dict[str, Any] = {}
        self.errors = Counter("p2pdist_tracker_errors", "Requests refused, by kind", ["kind"], registry=r)
        self.relayed = Counter("p2pdist_tracker_connections_relayed",
                               "Connections handed from the announce fast path to aiohttp (their first request of "
                               "another kind: orders, metrics, probes, preheat)", registry=r)
        self.dropped = Counter("p2pdist_tracker_announces_dropped",
                               "Announces dropped unanswered under load because their agent gave up: its connection "
                               "closed (gone) or it waited longer than agents wait (late)", ["reason"], registry=r)
        self.deferred = Counter("p2pdist_tracker_announces_deferred",
                                "Announces answered after the digest reports that came with them: under load, "
                                "reports go first (tracker/fastpath.py, ReportsFirst)", registry=r)
        self.leases_granted = Counter("p2pdist_tracker_leases_granted", "Origin leases granted", registry=r)
        self.leases_reassigned = Counter("p2pdist_tracker_leases_reassigned",
                                         "Leases granted over pieces an earlier lease had covered", registry=r)
        self.leases_expired = Counter("p2pdist_tracker_leases_expired",
                                      "Origin leases that expired without finishing", registry=r)
        self.lease_renewals = Counter(
            "p2pdist_tracker_lease_renewals",
            "Announces whose origin stream moved bytes, renewing the sender's leases before a digest", registry=r)
        self.digests_accepted = Counter("p2pdist_tracker_digests_accepted", "Piece digests accepted",
                                        registry=r)
        self.digests_rejected = Counter("p2pdist_tracker_digests_rejected", "Piece digests rejected, by reason",
                                        ["reason"], registry=r)
        self.corrupt_resets = Counter("p2pdist_tracker_corrupt_resets",
                                      "Blobs whose digests were forgotten after a corrupt report", registry=r)
        self.audits = Counter("p2pdist_tracker_audits",
                              "Audit fetches handed out (a reported piece fetched once more from the origin "
                              "by another node), and how they ended", ["result"], registry=r)
        self.bans = Counter("p2pdist_tracker_nodes_banned", "Nodes banned for digests the origin contradicts",
                            registry=r)
        self.digests_repeated = Counter("p2pdist_tracker_digests_repeated",
                                        "Piece digests reported that the log had already (resends, seeders)",
                                        registry=r)
        self.pieces_orphaned = Counter("p2pdist_tracker_pieces_orphaned",
                                       "Pieces leased again because downloaders found no holder of them left",
                                       registry=r)
        self.digests_withheld = Counter("p2pdist_tracker_digests_withheld",
                                        "Piece digests held back until their unproven reporter is audited", registry=r)
        # Read at scrape time so the gauges never drift from the state.
        Gauge("p2pdist_tracker_peers", "Peers tracked over all blobs", registry=r).set_function(
            lambda: state.peer_count())
        Gauge("p2pdist_tracker_blobs", "Blobs tracked", registry=r).set_function(lambda: state.blob_count())
        Gauge("p2pdist_tracker_leases_out", "Origin leases out now (each an origin stream; origin_streams caps "
              "them per blob)", registry=r).set_function(lambda: state.lease_count())

    def announced(self, event: str) -> None:
        """Count one announce (its child counter looked up once per event, not per announce)."""
        child = self._announce_children.get(event)
        if child is None:
            child = self._announce_children[event] = self.announces.labels(event)
        child.inc()

    def observe(self, event: str, fields: dict[str, Any]) -> None:
        """Count one service event (see tracker.service.Emit)."""
        if event == "lease_granted":
            self.leases_granted.inc()
            if fields.get("reassigned"):
                self.leases_reassigned.inc()
        elif event == "lease_expired":
            self.leases_expired.inc()
        elif event == "leases_renewed":
            self.lease_renewals.inc()
        elif event == "digests_accepted":
            self.digests_accepted.inc(fields["count"])
        elif event == "digests_repeated":
            self.digests_repeated.inc(fields["count"])
        elif event == "digests_rejected":
            self.digests_rejected.labels(fields["reason"]).inc(fields["count"])
        elif event == "corrupt_reset":
            self.corrupt_resets.inc()
        elif event == "audit_assigned":
            self.audits.labels("assigned").inc()
        elif event == "audit_passed":
            self.audits.labels("passed").inc()
        elif event == "audit_failed":
            self.audits.labels("failed").inc()
        elif event == "node_banned":
            self.bans.inc()
        elif event == "digests_withheld":
            self.digests_withheld.inc(fields["count"])
        elif event == "pieces_orphaned":
            self.pieces_orphaned.inc(fields["count"])

    def watch_pacer(self, pacer: Any) -> None:
        """Gauges read from the pacer at scrape time (tracker/pacer.py)."""
        Gauge("p2pdist_tracker_announce_rate", "Announces in the last whole second", registry=self.registry
              ).set_function(lambda: pacer.rate)
        Gauge("p2pdist_tracker_announce_spacing_seconds",
              "Least time between an agent's announces that replies ask for now (0: the agents' own)",
              registry=self.registry).set_function(lambda: pacer.spacing)

    def render(self) -> bytes:
        return generate_latest(self.registry)
