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

from p2pdist.cli import simulate as simulate_cmd
from simulations import native
from simulations.run import memory_mode as run_memory_mode

ROOT = Path(__file__).resolve().parents[1]

# Every profile and every mechanism that has its own code path: churn (cancelled transfers, rejoin),
# stragglers and seeds, racks and zones, several layers, rolling batches, the cache baseline.
CASES = [
    ("simulations/scenarios/flash-100.toml", {"nodes": 60},
     ["p2pdist", "origin-only", "pull-through-cache", "kraken", "dragonfly"]),
    ("simulations/scenarios/poisson-churn.toml", {"nodes": 80}, ["p2pdist", "kraken"]),
    ("simulations/scenarios/racks.toml", {"nodes": 64}, ["p2pdist"]),
    ("simulations/scenarios/rolling.toml", {"nodes": 60}, ["p2pdist"]),
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


def test_simulate_runs_itself_on_huge_pages_where_the_kernel_offers_them(tmp_path):
    """`p2pdist simulate` starts itself again with CPython allocating through malloc and glibc's
    huge-page tunable (p2pdist/cli/simulate.py), unless told not to; the report says which ran."""
    setting = simulate_cmd.THP_SETTING.read_text()
    expected = "default" if "[never]" in setting else "huge pages"
    for switch, want in ((None, expected), ("0", "default")):
        out = tmp_path / f"r-{switch}.json"
        env = {k: v for k, v in os.environ.items() if k not in ("P2PDIST_SIM_HUGEPAGES", "PYTHONMALLOC")}
        if switch is not None:
            env["P2PDIST_SIM_HUGEPAGES"] = switch
        subprocess.run([sys.executable, "-m", "p2pdist", "simulate", "simulations/scenarios/flash-100.toml",
                        "--runs", "p2pdist", "--nodes", "10", "--json", str(out), "--quiet"],
                       cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
        assert json.loads(out.read_text())["memory"] == want, switch


def test_the_huge_page_environment_adds_to_the_callers_and_is_made_once():
    env = simulate_cmd.huge_pages_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/root"},
                                      "always [madvise] never\n")
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "HOME": "/root",
                   "PYTHONMALLOC": "malloc", "P2PDIST_SIM_HUGEPAGES": "1"}
    assert run_memory_mode(env) == "huge pages"
    assert simulate_cmd.huge_pages_env(env, "always [madvise] never\n") is None  # the started process
    assert simulate_cmd.huge_pages_env({"P2PDIST_SIM_HUGEPAGES": "0"}, "[always] madvise never\n") is None
    assert simulate_cmd.huge_pages_env({}, "always madvise [never]\n") is None
    assert simulate_cmd.huge_pages_env({}, "") is None
    assert run_memory_mode({"PYTHONMALLOC": "malloc"}) == "default"
