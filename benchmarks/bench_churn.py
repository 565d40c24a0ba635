"""Churn benchmark on loopback against a real docker-registry: pulls while nodes die.

Waves of pulls over a pool of agents that outlive the waves, the way nodes of a cluster do: each
wave picks ``--pull`` agents (an agent killed in an earlier wave is started again on its data dir),
has them pull one of ``--blobs`` blobs at once, and shortly after the start kills ``--victims`` of
them, at random with SIGKILL (no goodbye to the tracker) or SIGTERM. It reports, per wave, the time
until every survivor had the blob, its bytes checked against the digest, and the origin egress of
each blob so far (in blob sizes: one pull of a blob per cluster is 1.00, plus what the victims
fetched and took with them). It fails if a survivor's pull fails or returns other bytes.

Run: .venv/bin/python -m benchmarks.bench_churn [--nodes 10] [--pull 6] [--victims 2] [--waves 4]
     [--size 128MiB] [--blobs 3] [--seeds 1-3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from p2pdist.config import parse_size
from tests.support.images import file_sha256
from tests.support.procs import AgentProc, Tracker
from tests.support.registry import Registry

TOKEN = "bench-churn"
STOP_WAIT = 10.0  # seconds a SIGTERMed agent may take to exit before it is killed


def parse_seeds(text: str) -> list[int]:
    first, _, last = text.partition("-")
    return list(range(int(first), int(last or first) + 1))


class Pool:
    """Agents by name; one killed is started again on its own data dir when a wave picks it."""

    def __init__(self, work: Path, tracker: Tracker, upstream: str) -> None:
        self.work, self.tracker, self.upstream = work, tracker, upstream
        self.agents: dict[str, AgentProc] = {}

    def live(self, name: str) -> AgentProc:
        agent = self.agents.get(name)
        if agent is None or agent.popen is None or agent.popen.poll() is not None:
            agent = AgentProc(self.work, name, self.tracker.url, TOKEN, upstreams=[self.upstream],
                              data_dir=self.work / name).start()
            self.agents[name] = agent
        return agent

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()


def wave(pool: Pool, rng: random.Random, args: argparse.Namespace, refs: list[tuple[str, str]]) -> dict:
    blob = rng.randrange(len(refs))
    ref, digest = refs[blob]
    agents = [pool.live(f"n{i}") for i in sorted(rng.sample(range(args.nodes), args.pull))]
    victims = {a.name: rng.choice(["SIGKILL", "SIGTERM"]) for a in rng.sample(agents, args.victims)}
    results: dict[str, dict] = {}
    finished: dict[str, float] = {}
    start = time.perf_counter()

    def pull(agent: AgentProc) -> None:
        try:
            results[agent.name] = agent.fetch(ref, timeout=120)
        except Exception as e:  # a victim's pull ends with its process
            results[agent.name] = {"error": repr(e)}
        finished[agent.name] = time.perf_counter() - start

    stop_seconds: dict[str, float] = {}
    with ThreadPoolExecutor(len(agents)) as threads:
        jobs = [threads.submit(pull, a) for a in agents]
        time.sleep(rng.uniform(args.kill_after[0], args.kill_after[1]))
        for agent in agents:
            how = victims.get(agent.name)
            if how == "SIGKILL":
                agent.kill9()
            elif how == "SIGTERM":
                t = time.perf_counter()
                agent.stop(timeout=STOP_WAIT)
                stop_seconds[agent.name] = round(time.perf_counter() - t, 2)
        for job in jobs:
            job.result()
    survivors = [a.name for a in agents if a.name not in victims]
    failed = [n for n in survivors if not results[n].get("done")]
    wrong = [n for n in survivors if n not in failed and "sha256:" + file_sha256(Path(results[n]["path"])) != digest]
    return {"blob": blob, "victims": victims, "sigterm_exit_s": stop_seconds,
            "time_to_all_s": round(max(finished[n] for n in survivors), 2),
            "failed": failed, "wrong_bytes": wrong}


def run(seed: int, args: argparse.Namespace) -> dict:
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="bench-churn-"))
    try:
        with Registry(workdir=work / "registry") as registry:
            digests = [registry.push_blob(f"bench/churn{i}", os.urandom(args.size)) for i in range(args.blobs)]
            refs = [(f"{registry.host}/bench/churn{i}@{d}", d) for i, d in enumerate(digests)]
            tracker = Tracker(work, TOKEN).start()
            pool = Pool(work, tracker, f"http://{registry.host}")
            waves = []
            try:
                for w in range(args.waves):
                    result = wave(pool, rng, args, refs)
                    result["egress_so_far"] = [round(registry.egress(d) / args.size, 2) for d in digests]
                    waves.append(result)
                    print(json.dumps({"seed": seed, "wave": w, **result}), flush=True)
            finally:
                pool.stop()
                tracker.stop()
        return {"seed": seed, "waves": waves}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nodes", type=int, default=10, help="agents in the pool (default 10)")
    p.add_argument("--pull", type=int, default=6, help="agents pulling in each wave (default 6)")
    p.add_argument("--victims", type=int, default=2, help="of them, killed mid-pull (default 2)")
    p.add_argument("--waves", type=int, default=4, help="waves per seed (default 4)")
    p.add_argument("--size", type=parse_size, default=parse_size("128MiB"), help="blob size (default 128MiB)")
    p.add_argument("--blobs", type=int, default=3, help="distinct blobs the waves pull (default 3)")
    p.add_argument("--kill-after", type=float, nargs=2, default=(0.05, 0.6), metavar=("MIN", "MAX"),
                   help="seconds after a wave's start the victims die, uniform in [MIN, MAX]")
    p.add_argument("--seeds", default="1-3", help="seeds to run, e.g. 1-3 (default)")
    args = p.parse_args()
    if not 0 <= args.victims < args.pull <= args.nodes:
        p.error("need 0 <= --victims < --pull <= --nodes")
    runs = [run(seed, args) for seed in parse_seeds(args.seeds)]
    times = [w["time_to_all_s"] for r in runs for w in r["waves"]]
    problems = [(r["seed"], i, w) for r in runs for i, w in enumerate(r["waves"]) if w["failed"] or w["wrong_bytes"]]
    summary = {"waves": len(times), "time_to_all_median_s": statistics.median(times),
               "time_to_all_max_s": max(times),
               "egress_per_blob": [r["waves"][-1]["egress_so_far"] for r in runs], "problems": problems}
    print(json.dumps(summary))
    if problems:
        raise SystemExit(f"{len(problems)} waves had failed pulls or wrong bytes: {problems}")


if __name__ == "__main__":
    main()
