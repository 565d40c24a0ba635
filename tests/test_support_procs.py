"""The test support's process handling: a server that never gets ready does not outlive its test;
a port is handed out once."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.support.procs import Proc, free_port, wait_http


def test_a_process_that_never_answers_is_stopped_when_its_start_gives_up(tmp_path: Path):
    proc = Proc([sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "silent.log")
    proc.start()
    assert proc.popen is not None
    with pytest.raises(TimeoutError):
        proc.until_ready(lambda: wait_http("http://127.0.0.1:9/healthz", proc.popen, deadline=0.5))
    assert proc.popen.poll() is not None  # stopped, not left running for the rest of the session


def test_a_port_is_handed_out_once_per_process():
    # The kernel hands a just-closed probe port out again often (about 18 repeats in 1,000 probes
    # over a 28,000-port range); a daemon given one port twice (peer and API listener) exits at bind.
    ports = [free_port() for _ in range(1000)]
    assert len(set(ports)) == len(ports)
