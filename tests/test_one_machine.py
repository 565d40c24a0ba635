"""The agent and the simulator run one download machine and one tracker, not copies of them.

The scheduling, leases, digest reports, announcer and stall fallback live in
p2pdist/core/download.py; the announce logic in tracker/service.py. The agent's swarm and the
simulator's agent drive the machine and hold none of that logic themselves; the simulator answers
announces with the tracker's own function.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import p2pdist.agent.swarm
import p2pdist.core.download as core_download
import tracker.service
import tracker.state
from p2pdist.config import Limits
from p2pdist.core.handout import HANDOUTS
from simulations import agent as sim_agent
from simulations import control as sim_control
from simulations import machine as sim_machine
from simulations import native, profiles
from simulations.cluster import Cluster
from simulations.scenario import Scenario, scenario_from_dict
from tracker.config import TrackerConfig

ROOT = Path(__file__).resolve().parent.parent
DRIVERS = {"agent": ROOT / "p2pdist" / "agent" / "swarm.py", "simulator": ROOT / "simulations" / "agent.py"}

# What only the machine may do: pick pieces and peers, book leases and origin runs, time announces,
# notice stalls. A driver that names any of these carries scheduling of its own.
MACHINE_ONLY = re.compile(
    r"^_?(?:schedule|assign|select|choose_peer|reader_cursor|missing_runs|inflight_budget|take_leases|"
    r"apply_leases|lease_everything|report_had|check_stall|kick|wait_for_kick|announce_timeout|announcer|"
    r"block_all|unblock|block|refresh|release|go_direct|want_leases)(?:_\w+)?$"
    r"|^(?:LeaseBook|RarestFirst|ANNOUNCE_SPACING|BUSY_BACKOFF|LOOP_TIMEOUT|SPARE_LEASES|DIRECT_RUN_PIECES|"
    r"MAX_LIST|ORIGIN_RETRIES|BAN_AFTER_BAD_PIECES)$"
)


def _defined_and_imported(path: Path) -> set[str]:
    """Names a module defines (functions, methods, classes, assigned names) or imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
            if node.module and node.module.split(".")[-1] in ("selection", "leases"):
                names.add(node.module)  # the policies are the machine's to call
    return names


def test_neither_driver_carries_scheduling_or_lease_logic():
    for who, path in DRIVERS.items():
        names = _defined_and_imported(path)
        assert "Download" in names, f"the {who} does not drive the core's Download machine"
        carried = sorted(n for n in names if MACHINE_ONLY.match(n) or n.endswith((".selection", ".leases")))
        assert not carried, f"the {who} ({path.name}) carries machine logic of its own: {carried}"


def test_the_check_catches_a_driver_with_a_scheduler_of_its_own(tmp_path):
    # The test above must be able to fail: a driver with its own pass is caught.
    rogue = tmp_path / "rogue.py"
    rogue.write_text("from p2pdist.core.download import Download\n"
                     "from p2pdist.core.selection import assign\n"
                     "class Swarm:\n    def schedule_peers(self):\n        pass\n")
    names = _defined_and_imported(rogue)
    assert {"assign", "schedule_peers"} <= {n for n in names if MACHINE_ONLY.match(n)}


def test_the_simulator_runs_the_agents_machine_source():
    assert native.source_path("machine") == Path(core_download.__file__).resolve()
    sc = scenario_from_dict({"nodes": 2, "image": {"layers": ["16MiB"]}})
    cluster = Cluster(sc, profiles.p2pdist_profile(sc))
    swarm = sim_agent.Swarm(cluster, cluster.nodes[0], cluster.blobs[0])
    assert type(swarm.dl) is sim_machine.Download
    assert p2pdist.agent.swarm.Download is core_download.Download
    # The same constants, because the same module.
    for name in ("ANNOUNCE_SPACING", "BUSY_BACKOFF", "LOOP_TIMEOUT", "SPARE_LEASES", "DIRECT_RUN_PIECES",
                 "BAN_AFTER_BAD_PIECES", "MAX_REPORT"):
        assert getattr(sim_machine, name) == getattr(core_download, name), name
    assert profiles.ANNOUNCE_SPACING is core_download.ANNOUNCE_SPACING
    assert profiles.DIRECT_RUN_PIECES is core_download.DIRECT_RUN_PIECES


def test_the_simulator_has_no_tracker_of_its_own():
    assert not (ROOT / "simulations" / "tracker.py").exists()
    assert sim_control.handle_announce is tracker.service.handle_announce
    sc = scenario_from_dict({"nodes": 12, "image": {"layers": ["16MiB"]}, "network": {"upload": "1Gbit"}})
    cluster = Cluster(sc, profiles.p2pdist_profile(sc))
    out = cluster.run()
    assert all(d > 0 for d in out.done)
    state = cluster.tracker_state
    assert isinstance(state, tracker.state.MemoryState) and state.blob_count() == 1
    record = state.get(sim_control.blob_digest(0))
    # Every piece's digest went through the tracker's log, once, from lease holders or seeders.
    assert sorted(i for i, _ in record.log) == list(range(cluster.blobs[0].count))
    assert out.announces > 12 and out.leases_granted > 0


def test_the_p2pdist_profile_is_the_shipped_configuration():
    profile = profiles.p2pdist_profile(Scenario())
    limits, config = Limits(), TrackerConfig()
    assert profile.tracker == config
    assert (profile.peer_concurrency, profile.inflight_bytes, profile.neighbours, profile.upload_slots,
            profile.origin_concurrency, profile.piece_timeout, profile.stall_timeout) == (
        limits.peer_concurrency, limits.inflight_bytes, limits.neighbours, limits.upload_slots,
        limits.origin_concurrency, limits.piece_timeout, limits.stall_timeout)
    assert type(profile.handout) is HANDOUTS[config.handout_policy]
