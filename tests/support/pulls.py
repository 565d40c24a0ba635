"""What a pull through the mirror must show: a tracker and agents in front of a registry, and checks
on the registry's own access log that the clients fetched nothing from it themselves."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.support.images import OciImage
from tests.support.procs import AgentProc, Tracker
from tests.support.registry import Registry, RequestRecord

AGENT_UA = "p2pdist/"  # the agents' origin requests (p2pdist.USER_AGENT); no client says that


class Cluster:
    """A tracker and agents (mirror on) in front of one registry; stops what it started."""

    def __init__(self, workdir: Path, registry: Registry, *, upstreams: list[str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.workdir, self.registry = workdir, registry
        self.upstreams = upstreams if upstreams is not None else [f"http://{registry.host}"]
        self.env = env or {}
        self.tracker = Tracker(workdir).start()
        self.agents: list[AgentProc] = []

    def agent(self, name: str, **env: str) -> AgentProc:
        agent = AgentProc(self.workdir, name, self.tracker.url, extra_env={**self.env, **env},
                          upstreams=self.upstreams, mirror=True)
        self.agents.append(agent)
        agent.start()
        wait_mirror(agent)
        return agent

    @contextlib.contextmanager
    def diagnosed(self) -> Iterator[None]:
        """A failure inside gets every agent's download state appended (a stuck swarm shows there)."""
        try:
            yield
        except AssertionError as e:
            states = []
            for agent in self.agents:
                try:
                    states.append(f"{agent.name}: {json.dumps(agent.status().get('downloads'))}")
                except OSError as err:
                    states.append(f"{agent.name}: status unavailable ({err})")
            raise AssertionError(f"{e}\n--- agents' downloads in progress ---\n" + "\n".join(states)) from None

    def close(self) -> None:
        for agent in self.agents:
            agent.stop()
        self.tracker.stop()


def wait_mirror(agent: AgentProc, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{agent.mirror}/v2/", timeout=2) as resp:
                assert resp.status == 200
                return
        except urllib.error.HTTPError as e:
            assert e.code == 401, f"mirror of {agent.name} answers GET /v2/ with {e.code}"  # its challenge: up
            return
        except OSError as e:
            if time.monotonic() > end:
                raise AssertionError(f"mirror of {agent.name} not answering GET /v2/: {e}; "
                                     f"log:\n{agent.output()[-3000:]}") from e
            time.sleep(0.05)


# --- what the registry saw -------------------------------------------------------------------------


def mark(registry: Registry) -> int:
    return len(registry.requests())


def since(registry: Registry, start: int) -> list[RequestRecord]:
    return registry.requests()[start:]


def describe(records: list[RequestRecord]) -> str:
    return "\n".join(f"  {r.method} {r.path}?{r.query} -> {r.status} {r.written}B ua={r.user_agent!r}"
                     for r in records)


def blob_gets(records: list[RequestRecord], digest: str) -> list[RequestRecord]:
    return [r for r in records if r.method == "GET" and r.path.endswith(f"/blobs/{digest}") and r.status in (200, 206)]


def assert_pulled_by_agents(records: list[RequestRecord], image: OciImage) -> None:
    """The client never reached the registry; the agents fetched every layer."""
    direct = [r for r in records if AGENT_UA not in r.user_agent]
    assert not direct, f"the client went to the registry directly:\n{describe(direct)}"
    for layer in image.layers:
        gets = blob_gets(records, layer.digest)
        assert gets, f"no agent GET of layer {layer.digest}:\n{describe(records)}"
        assert sum(r.written for r in gets) >= layer.size, f"layer {layer.digest} not fetched whole"


def assert_second_pull_from_peers(registry: Registry, records: list[RequestRecord], image: OciImage,
                                  egress_before: dict[str, int]) -> None:
    direct = [r for r in records if AGENT_UA not in r.user_agent]
    assert not direct, f"the second client went to the registry directly:\n{describe(direct)}"
    after = {d: registry.egress(d) for d in image.blob_digests}
    grown = {d: after[d] - egress_before[d] for d in image.blob_digests if after[d] != egress_before[d]}
    # A fresh tracker audits the first node once (README "Nodes that lie"): the second fetches one
    # piece the first reported from the origin as well (at most 4 MiB, the piece size here); nothing else.
    assert len(grown) <= 1 and sum(grown.values()) <= 4 << 20, (
        f"the second pull took blob bytes from the origin: {grown}\n{describe(records)}")
    gets = [r for r in records if "/blobs/" in r.path and r.method == "GET"]
    assert all(r.path.endswith(tuple(grown)) for r in gets), describe(records)


def egress(registry: Registry, image: OciImage) -> dict[str, int]:
    return {d: registry.egress(d) for d in image.blob_digests}


