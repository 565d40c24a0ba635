"""The simulator's compiled core: the same Python modules, compiled by Cython with C types.

``python -m simulations build`` (scripts/setup.sh runs it) compiles the modules in ``MODULES``
in place, with the C types their ``.pxd`` files declare for attributes and hot locals, and records
a digest of every source it compiled. The compiled modules are the same code: a run gives the same
numbers with or without them (tests/test_sim_native.py compares both, event for event), only faster.

At import (``simulations/__init__.py`` calls ``choose_core``), the compiled modules are used only if
they were built from the sources as they are now. If a source changed since, or ``P2PDIST_SIM_CORE``
is ``python``, an import hook loads every module of ``MODULES`` from its ``.py`` instead: a stale
extension never runs old code, and compiled and pure modules never mix (their classes would not
match).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import shutil
import sys
import sysconfig
from pathlib import Path

PACKAGE = "simulations"
HERE = Path(__file__).resolve().parent
# Order does not matter to Cython; it is the order of the digests in the manifest.
MODULES = ("engine", "agent", "dataplane", "control", "cluster", "machine", "selection", "leases")
# Modules whose source lives in the agent's package: the simulator runs the agent's own code (the
# download machine and the policies it calls), compiled here under names of its own (with a .pxd
# beside this file where there is one), never a copy of it.
AGENT_CORE = HERE.parent / "p2pdist" / "core"
BORROWED = {"machine": AGENT_CORE / "download.py", "selection": AGENT_CORE / "selection.py",
            "leases": AGENT_CORE / "leases.py"}
# Compiled-only helpers, from a .pyx (C code with no Python version): used only with the compiled core.
EXTRAS = ("_hugepages",)
MANIFEST = HERE / "_native.json"
ENV = "P2PDIST_SIM_CORE"  # "python": ignore the compiled modules even if they are fresh

# What choose_core decided: "compiled", or "python (<why>)".
CORE = "python (not chosen yet)"

HUGEPAGES_ENV = "P2PDIST_SIM_HUGEPAGES"  # "0": the simulator's memory on the usual pages
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_pages_allowed() -> bool:
    """Whether the simulator asks for transparent huge pages (run.huge_pages, agent.huge_array): not
    switched off with ``P2PDIST_SIM_HUGEPAGES=0``, and a kernel that gives them to memory that asks
    (transparent_hugepage "always" or "madvise")."""
    if os.environ.get(HUGEPAGES_ENV, "1") == "0":
        return False
    try:
        setting = THP_SETTING.read_text()
    except OSError:
        return False  # not Linux, or no transparent huge pages in this kernel
    return bool(setting) and "[never]" not in setting


def _suffix() -> str:
    return sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def source_path(name: str) -> Path:
    """The .py a module of MODULES is compiled from."""
    return BORROWED.get(name, HERE / f"{name}.py")


def source_digests() -> dict[str, str]:
    """A digest of each module's .py and .pxd (an extra's .pyx) as they are on disk now."""
    out = {}
    for name in EXTRAS:
        out[name] = hashlib.sha256(b".pyx\0" + (HERE / f"{name}.pyx").read_bytes()).hexdigest()
    for name in MODULES:
        h = hashlib.sha256()
        for ext in (".py", ".pxd"):
            path = source_path(name) if ext == ".py" else HERE / f"{name}{ext}"
            h.update(ext.encode() + b"\0")
            if path.exists():
                h.update(path.read_bytes())
        out[name] = h.hexdigest()
    return out


def _stale_reason() -> str | None:
    """Why the compiled modules must not be used, or None if they are built from today's sources."""
    if not all((HERE / f"{name}{_suffix()}").exists() for name in MODULES + EXTRAS):
        return "not built: run `python -m simulations build` (scripts/setup.sh does)"
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return f"no build manifest {MANIFEST.name}: rebuild with `python -m simulations build`"
    if manifest.get("python") != sys.implementation.cache_tag:
        return f"built for {manifest.get('python')}, running {sys.implementation.cache_tag}: rebuild"
    changed = [name for name, digest in source_digests().items() if manifest.get("sources", {}).get(name) != digest]
    if changed:
        return f"{', '.join(changed)} changed since the build: rebuild with `python -m simulations build`"
    return None


class _PureFinder(importlib.abc.MetaPathFinder):
    """Finds simulations.<module> for MODULES in its .py file, never in the extension beside it."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != PACKAGE or name not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source_path(name))


def choose_core() -> str:
    """Use the compiled modules if they are fresh and wanted, else make every import take the .py."""
    global CORE
    wanted = os.environ.get(ENV, "compiled").strip().lower()
    if wanted not in ("compiled", "python"):
        raise ValueError(f"{ENV} must be 'compiled' or 'python', got {wanted!r}")
    reason = f"{ENV}=python" if wanted == "python" else _stale_reason()
    if reason is None:
        CORE = "compiled"
        return CORE
    if not any(isinstance(f, _PureFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PureFinder())
    CORE = f"python ({reason})"
    return CORE


def build(quiet: bool = False) -> None:
    """Compile MODULES in place and record the digests of the sources compiled."""
    from Cython.Build import cythonize  # a dependency of the project; imported only to build
    from setuptools import Distribution
    from setuptools.command.build_ext import build_ext

    digests = source_digests()  # before compiling: a source edited meanwhile shows up as stale
    # A borrowed module is compiled from a copy placed as simulations/<name>.py in a build tree of
    # its own, with its .pxd: Cython takes the module's name and its declarations from there.
    borrowed = HERE.parent / "build" / "borrowed" / PACKAGE
    borrowed.mkdir(parents=True, exist_ok=True)
    (borrowed / "__init__.py").touch()
    sources = []
    for name in MODULES:
        if name in BORROWED:
            shutil.copyfile(BORROWED[name], borrowed / f"{name}.py")
            if (HERE / f"{name}.pxd").exists():
                shutil.copyfile(HERE / f"{name}.pxd", borrowed / f"{name}.pxd")
            sources.append(str(borrowed / f"{name}.py"))
        else:
            sources.append(str(HERE / f"{name}.py"))
    sources += [str(HERE / f"{name}.pyx") for name in EXTRAS]
    ext_modules = cythonize(
        sources, quiet=quiet, build_dir=str(HERE.parent / "build" / "cython"),
        # Types come from the .pxd files only: the .py annotations are for readers and mypy, and
        # Cython would read `int` as "exactly a Python int" and `float` as a C double.
        compiler_directives={"language_level": 3, "annotation_typing": False},
    )
    dist = Distribution({"name": "p2pdist-simulations-native", "ext_modules": ext_modules})
    cmd = build_ext(dist)
    cmd.build_temp = str(HERE.parent / "build" / "native-temp")
    cmd.build_lib = str(HERE.parent / "build" / "native-lib")
    cmd.ensure_finalized()
    cmd.run()
    for ext in ext_modules:
        # A rename, not a copy over the old file: a simulation running meanwhile keeps its mapping.
        os.replace(cmd.get_ext_fullpath(ext.name), HERE / f"{ext.name.rpartition('.')[2]}{_suffix()}")
    MANIFEST.write_text(json.dumps({"python": sys.implementation.cache_tag, "sources": digests}, indent=1) + "\n")


def clean() -> None:
    for name in MODULES + EXTRAS:
        (HERE / f"{name}{_suffix()}").unlink(missing_ok=True)
    MANIFEST.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m simulations",
        description="Build, remove or check the simulator's compiled core (Cython). The simulator runs "
        "without it, several times slower; results are the same either way.",
    )
    parser.add_argument("action", choices=("build", "clean", "status"))
    parser.add_argument("--quiet", action="store_true", help="less compiler output")
    args = parser.parse_args(argv)
    if args.action == "build":
        build(args.quiet)
        print(f"simulations: compiled core built ({', '.join(MODULES + EXTRAS)})")
    elif args.action == "clean":
        clean()
        print("simulations: compiled core removed; the .py modules run")
    else:
        reason = _stale_reason()
        print("compiled core: fresh" if reason is None else f"compiled core not used: {reason}")
        return 0 if reason is None else 1
    return 0
