"""The shipped systemd units are hardened (`systemd-analyze security`, exposure at most 3.0 of 10),
and the example agent config loads. scripts/setup.sh installs systemd-analyze: without it this fails."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from p2pdist.config import load

UNITS = Path(__file__).resolve().parents[1] / "deploy" / "systemd"


@pytest.mark.parametrize("unit", ["p2pdist.service", "p2pdist-tracker.service"])
def test_unit_exposure_is_at_most_3(unit: str) -> None:
    done = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(UNITS / unit)],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 3.0, done.stdout


def test_units_run_as_their_own_user_without_capabilities() -> None:
    for unit in ("p2pdist.service", "p2pdist-tracker.service"):
        text = (UNITS / unit).read_text()
        for line in ("DynamicUser=yes", "CapabilityBoundingSet=\n", "NoNewPrivileges=yes", "ProtectSystem=strict"):
            assert line in text, (unit, line)
    assert "StateDirectory=p2pdist" in (UNITS / "p2pdist.service").read_text()  # the store: its only writable place


def test_the_example_agent_config_loads() -> None:
    config = load(UNITS / "agent.toml", environ={"P2PDIST_NODE_CREDENTIAL": "/etc/p2pdist/node.credential"})
    assert config.capacity == 50 << 30 and config.zone == "eu-1a"
    assert [u.registry for u in config.upstreams] == ["docker.io", "registry.example.com"]
