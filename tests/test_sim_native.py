"""The simulator's compiled core: built by setup, used when fresh, and the same numbers as the .py.

The compiled modules are the .py modules compiled with C types (simulations/native.py), so every
run must come out identical, event for event: the comparisons below run each case in two fresh
interpreters, one with ``P2PDIST_SIM_CORE=python``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from simulations import native

ROOT = Path(__file__).resolve().parents[1]

# Every profile and every mechanism that has its own code path: churn (cancelled transfers, rejoin),
# stragglers and seeds, racks and zones, several layers, rolling batches, the cache baseline.
CASES = [
    ("simulations/scenarios/flash-100.toml", {"nodes": 60},
     ["p2pdist", "origin-only", "pull-through-cache", "kraken", "dragonfly"]),
    ("simulations/scenarios/poisson-churn.toml", {"nodes": 80}, ["p2pdist", "kraken"]),
    ("simulations/scenarios/racks.toml", {"nodes": 64}, ["p2pdist"]),
    ("simulations/scenarios/rolling.toml", {"nodes": 60}, ["p2pdist"]),
    # And one at the scale results are quoted at: the cases above keep the event heap and the queues
    # small, where an ordering mistake in the compiled core's own data structures may not show.
    ("simulations/scenarios/flash-1000.toml", {}, ["p2pdist"]),
]

# Runs CASES in this interpreter and prints every outcome but its wall time as JSON.
PROBE = """
import dataclasses, json, sys
from simulations import native
from simulations.run import run_one
from simulations.scenario import load_scenario
out = {"core": native.CORE, "runs": []}
for path, changes, runs in json.loads(sys.argv[1]):
    sc = load_scenario(path)
    if "nodes" in changes:
        sc = sc.with_nodes(changes["nodes"])
    for run in runs:
        o = run_one(sc, run)
        skip = ("profile", "wall_seconds")
        fields = {f.name: getattr(o, f.name) for f in dataclasses.fields(o) if f.name not in skip}
        out["runs"].append({"case": path, "run": run, **fields})
print(json.dumps(out))
"""


def _probe(cwd: Path, core: str) -> dict:
    env = dict(os.environ, P2PDIST_SIM_CORE=core, PYTHONPATH=str(cwd))
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(CASES)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_the_compiled_core_is_built_and_in_use():
    # scripts/setup.sh builds it. Missing or stale, the simulator still runs, several times slower:
    # that must fail here rather than pass unnoticed.
    assert native.CORE == "compiled", native.CORE


def test_compiled_and_python_cores_give_the_same_runs():
    compiled = _probe(ROOT, "compiled")
    python = _probe(ROOT, "python")
    assert compiled["core"] == "compiled"
    assert python["core"].startswith("python (P2PDIST_SIM_CORE=python")
    assert len(compiled["runs"]) == sum(len(runs) for _, _, runs in CASES)
    for a, b in zip(compiled["runs"], python["runs"], strict=True):
        assert a["events"] > 100 and max(a["done"]) > 0, (a["case"], a["run"])
        assert a == b, f"{a['case']} {a['run']}: the compiled core differs from the .py"


def _copy_package(tmp_path: Path) -> Path:
    """A copy of the simulations package with its compiled modules, beside p2pdist and tracker."""
    for pkg in ("simulations", "p2pdist", "tracker"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__", "results"))
    return tmp_path


def test_a_source_edited_after_the_build_runs_as_python(tmp_path):
    root = _copy_package(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(root))
    env.pop("P2PDIST_SIM_CORE", None)
    status = [sys.executable, "-m", "simulations", "status"]
    fresh = subprocess.run(status, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert fresh.returncode == 0 and "fresh" in fresh.stdout, fresh.stdout + fresh.stderr
    # The agent's download machine is compiled into the simulator: editing it there is a change too.
    source = root / "p2pdist" / "core" / "download.py"
    source.write_text(source.read_text().replace("BUSY_BACKOFF = 0.5", "BUSY_BACKOFF = 0.25"))
    stale = subprocess.run(status, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert stale.returncode == 1 and "machine changed since the build" in stale.stdout
    # Every compiled module is bypassed, not only the edited one: their classes must match.
    probe = ("import sys; from simulations import native, engine, agent, cluster, machine; "
             "print(native.CORE); print(machine.BUSY_BACKOFF); print(machine.__file__); "
             "print(all(m.__file__.endswith('.py') for m in (engine, agent, cluster)))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[0].startswith("python (machine changed since the build")
    assert out[1:4] == ["0.25", str(source), "True"]


def test_an_unknown_core_setting_is_an_error(tmp_path):
    env = dict(os.environ, P2PDIST_SIM_CORE="fast", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", "import simulations"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode != 0 and "P2PDIST_SIM_CORE must be 'compiled' or 'python'" in proc.stderr


@pytest.mark.parametrize("core", ["compiled", "python"])
def test_the_report_says_which_core_ran(core, tmp_path):
    out = tmp_path / "r.json"
    env = dict(os.environ, P2PDIST_SIM_CORE=core)
    subprocess.run([sys.executable, "-m", "p2pdist", "simulate", "simulations/scenarios/flash-100.toml",
                    "--runs", "p2pdist", "--nodes", "10", "--json", str(out), "--quiet"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    assert json.loads(out.read_text())["core"].startswith(core)


def test_simulate_puts_its_objects_on_huge_pages_where_the_kernel_offers_them(tmp_path):
    """The compiled core's runs take CPython's arenas from a region advised for huge pages
    (simulations/_hugepages.pyx, run.huge_pages), unless told not to; the report says which."""
    expected = "default" if "[never]" in native.THP_SETTING.read_text() else "huge pages"
    for extra, want in (({}, expected), ({"P2PDIST_SIM_HUGEPAGES": "0"}, "default"),
                        ({"P2PDIST_SIM_CORE": "python"}, "default"), ({"PYTHONMALLOC": "malloc"}, "default")):
        out = tmp_path / "r.json"
        env = {k: v for k, v in os.environ.items()
               if k not in ("P2PDIST_SIM_HUGEPAGES", "P2PDIST_SIM_CORE", "PYTHONMALLOC")}
        subprocess.run([sys.executable, "-m", "p2pdist", "simulate", "simulations/scenarios/flash-100.toml",
                        "--runs", "p2pdist", "--nodes", "10", "--json", str(out), "--quiet"],
                       cwd=ROOT, env=env | extra, check=True, capture_output=True, timeout=300)
        assert json.loads(out.read_text())["memory"] == want, extra


HUGE_PAGE_ARENAS = """
import json
from simulations import _hugepages
assert _hugepages.region() == (0, 0) and _hugepages.arenas() == 0
assert _hugepages.install() and _hugepages.install()  # once; the second call changes nothing
start, size = _hugepages.region()
objects = [(i, [i]) for i in range(400_000)]  # small objects: pymalloc's, from its arenas
inside = sum(start <= id(o) < start + size for o in objects)
first = _hugepages.arenas()
del objects  # the emptied arenas go back to the region's spares, not to the kernel
again = [(i, [i]) for i in range(400_000)]
print(json.dumps({"inside": inside, "first": first, "again": _hugepages.arenas(), "start": start}))
"""


def test_pymalloc_takes_its_arenas_from_the_huge_page_region_and_reuses_freed_ones():
    proc = subprocess.run([sys.executable, "-c", HUGE_PAGE_ARENAS], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, P2PDIST_SIM_CORE="compiled"))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["start"] % (2 << 20) == 0  # on a huge-page boundary
    assert got["inside"] > 0.95 * 400_000 and got["first"] > 10  # (the rest: free room in older arenas)
    assert got["again"] <= got["first"] + 2  # the second batch reused the first one's arenas


# Wraps Holders.reachable (the .py classes) and checks every answer against its definition: the
# pieces of the machine's fetchable set whose bit is in the union of the free neighbours' bitfields.
REACHABLE_PROBE = """
import json
from simulations import agent, native
from simulations.run import run_one
from simulations.scenario import load_scenario
assert native.CORE.startswith("python"), native.CORE
board_read = agent.Holders.reachable
calls = {"passes": 0, "pieces": 0}
def checked(self, pieces):
    got = board_read(self, pieces)
    owner = self.owner
    want = sorted(i for i in pieces if owner.reach[i >> 6] >> (i & 63) & 1)
    assert got == want, (got, want, sorted(pieces))
    calls["passes"] += 1
    calls["pieces"] += len(got)
    return got
agent.Holders.reachable = checked
for path, nodes, run in (("simulations/scenarios/flash-100.toml", 60, "p2pdist"),
                         ("simulations/scenarios/flash-100.toml", 60, "dragonfly"),
                         ("simulations/scenarios/poisson-churn.toml", 60, "p2pdist")):
    run_one(load_scenario(path).with_nodes(nodes), run)
print(json.dumps(calls))
"""


def test_reachable_read_off_the_board_is_the_fetchable_pieces_a_free_neighbour_holds():
    """Swarm's Holders.reachable reads the machine's cells instead of iterating its fetchable set:
    at every pass of flash crowds and churn, it must give exactly that set's reachable pieces."""
    env = dict(os.environ, P2PDIST_SIM_CORE="python", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", REACHABLE_PROBE], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    calls = json.loads(proc.stdout)
    assert calls["passes"] > 1000 and calls["pieces"] > calls["passes"], calls
