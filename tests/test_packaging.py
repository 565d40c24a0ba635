"""`pip install p2pdist` gives what a node needs; the simulator and its plotting are the `sim` extra.

The daemon, the CLI, the mirror and the tracker are imported in a fresh interpreter in which the
simulator and every module only the extra brings cannot be imported. If any of them imported one,
that import would fail here, as it would on a node installed without the extra.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIM_ONLY = ("simulations", "matplotlib", "numpy", "Cython", "cython", "setuptools")

BLOCKER = r"""
import importlib.abc, pkgutil, sys

BLOCKED = set(sys.argv[1].split(","))


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: not installed without [sim])", name=name)
        return None


sys.meta_path.insert(0, Blocker())
import p2pdist, tracker

names = []
for package in (p2pdist, tracker):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        __import__(info.name)
        names.append(info.name)
leaked = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)
assert not leaked, leaked

from p2pdist.cli import main as cli

code = cli.main(["simulate", "scenario.toml"])
print(f"IMPORTED {len(names)} simulate-exit {code}")
"""


def _dependency_names(specs: list[str]) -> set[str]:
    return {spec.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower()
            for spec in specs}


def test_the_simulator_needs_an_extra_and_a_node_does_not() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = _dependency_names(project["dependencies"])
    sim = _dependency_names(project["optional-dependencies"]["sim"])
    assert {"matplotlib", "cython", "setuptools"} <= sim
    assert not core & {"matplotlib", "numpy", "cython", "setuptools"}, core
    assert {"aiohttp", "msgpack", "blake3"} <= core


def test_no_node_module_imports_the_simulator(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER, ",".join(SIM_ONLY)], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    imported = int(result.stdout.split("IMPORTED ")[1].split()[0])
    assert imported > 40  # the walk really went through the packages
    # `p2pdist simulate` without the extra says what to install instead of a traceback.
    assert "simulate-exit 2" in result.stdout
    assert "pip install 'p2pdist[sim]'" in result.stderr and "Traceback" not in result.stderr
