"""Shared fixtures: real CNCF distribution registries (see tests/support/registry.py).

Function-scoped: a registry starts in about 0.1 s, and a fresh one per test keeps its log, byte
accounting and token-issuer counts about that test alone. Workdirs live under pytest's tmp_path so
a failing test's registry log is kept for reading.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.cluster import Cluster
from tests.support.registry import Registry

ALICE = ("alice", "secret-pw")


def _run(tmp_path: Path, **options: object) -> Iterator[Registry]:
    with Registry(workdir=tmp_path / "registry", users=dict([ALICE]), **options) as registry:
        yield registry


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    """An anonymous registry: pull and push without credentials."""
    yield from _run(tmp_path)


@pytest.fixture
def registry_basic(tmp_path: Path) -> Iterator[Registry]:
    """A registry behind htpasswd basic auth; user "alice", password "secret-pw"."""
    yield from _run(tmp_path, auth="basic")


@pytest.fixture
def registry_token(tmp_path: Path) -> Iterator[Registry]:
    """A registry behind bearer-token auth; its token issuer (``.issuer``) knows alice/secret-pw."""
    yield from _run(tmp_path, auth="token")


@pytest.fixture
def cluster(tmp_path: Path, registry: Registry) -> Iterator[Cluster]:
    """A tracker (once started) and agents on loopback, pulling from ``registry``; stopped by PID."""
    c = Cluster(tmp_path, registry)
    yield c
    c.stop()
