"""Scenarios: a cluster, an image, how nodes arrive and fail, read from TOML into frozen dataclasses.

Every setting has a default, so a scenario names only what it is about. See scenarios/*.toml and
README "Scenario format" for the full list.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .units import ScenarioError, parse_duration, parse_rate, parse_size

ARRIVALS = ("flash", "batches", "poisson")
RUNS = ("p2pdist", "origin-only", "pull-through-cache", "kraken", "dragonfly")
FIFO, REPORTS_FIRST = "fifo", "reports-first"
TRACKER_QUEUES = (FIFO, REPORTS_FIRST)  # Scenario.tracker_queue


@dataclass(frozen=True)
class Distribution:
    """A bandwidth distribution: fixed, uniform(low, high), choice(values, weights) or lognormal."""

    kind: str = "fixed"
    value: float = 125e6
    low: float = 0.0
    high: float = 0.0
    values: tuple[float, ...] = ()
    weights: tuple[float, ...] = ()
    sigma: float = 0.0

    def sample(self, rng: random.Random) -> float:
        if self.kind == "fixed":
            return self.value
        if self.kind == "uniform":
            return rng.uniform(self.low, self.high)
        if self.kind == "choice":
            return rng.choices(self.values, weights=self.weights or None)[0]
        return self.value * math.exp(rng.gauss(0.0, self.sigma))  # lognormal around the median


@dataclass(frozen=True)
class Topology:
    """Racks grouped into zones; traffic between racks crosses the racks' (oversubscribed) uplinks."""

    zones: int = 1
    racks_per_zone: int = 1
    rack_uplink: float = math.inf  # bytes/s each way between a rack and its zone
    zone_uplink: float = math.inf  # bytes/s each way between a zone and the core

    @property
    def racks(self) -> int:
        return self.zones * self.racks_per_zone


@dataclass(frozen=True)
class Image:
    layers: tuple[int, ...] = (1 << 30,)
    piece_size: int = 0  # 0 = the tracker's rule (p2pdist.core.layout.piece_size_for)
    pull_concurrency: int = 3  # layers a node pulls at once (docker and containerd default to 3)

    @property
    def size(self) -> int:
        return sum(self.layers)


@dataclass(frozen=True)
class Network:
    upload: Distribution = field(default_factory=lambda: Distribution(value=125e6))
    download: Distribution = field(default_factory=lambda: Distribution(value=125e6))
    origin_upload: float = 125e6
    rtt: float = 0.0002  # between nodes and to the tracker (seconds)
    origin_rtt: float = 0.01  # to the origin registry: one round trip before each Range request
    topology: Topology | None = None


@dataclass(frozen=True)
class Arrival:
    pattern: str = "flash"
    spread: float = 0.0  # flash: nodes start uniformly within this many seconds
    batch_size: int = 100  # batches: nodes per batch
    interval: float = 30.0  # batches: seconds between batches
    rate: float = 10.0  # poisson: nodes per second


@dataclass(frozen=True)
class Churn:
    fraction: float = 0.0  # share of nodes that leave while downloading
    start: float = 0.0  # they leave uniformly between start and end seconds after their arrival
    end: float = 10.0
    rejoin_after: float = -1.0  # seconds until a departed node restarts with its verified pieces; < 0 = never


@dataclass(frozen=True)
class Stragglers:
    fraction: float = 0.0  # share of nodes whose links are slower
    factor: float = 0.1  # their upload and download are multiplied by this


@dataclass(frozen=True)
class Scenario:
    name: str = "scenario"
    description: str = ""
    seed: int = 1
    nodes: int = 100
    image: Image = field(default_factory=Image)
    network: Network = field(default_factory=Network)
    arrival: Arrival = field(default_factory=Arrival)
    churn: Churn = field(default_factory=Churn)
    stragglers: Stragglers = field(default_factory=Stragglers)
    seeds: int = 0  # nodes that hold the whole image from the start
    runs: tuple[str, ...] = RUNS
    # Overrides of the shipped agent Limits and TrackerConfig, and the policies, for the p2pdist run.
    selector: str = "rarest-first"
    handout: str = ""  # "" = the tracker's configured default
    streaming: bool = True  # a client reads each blob through the mirror while it downloads
    digest_proofs: bool = True  # digests travel with HAVEs, with the tracker's proof (false: what-if)
    limits: tuple[tuple[str, Any], ...] = ()
    tracker: tuple[tuple[str, Any], ...] = ()
    tracker_service_time: float = 0.0  # tracker CPU seconds per announce (0 = infinitely fast)
    # The order announces waiting for that tracker are served in: "reports-first", as the real one
    # serves them (tracker/fastpath.py, ReportsFirst): announces reporting digests (origin pieces
    # fetched) go before the others waiting, so a crowd's announces do not hold back the swarm's
    # origin intake; or "fifo", a what-if: the tracker before that, first come first served.
    tracker_queue: str = REPORTS_FIRST
    cache_upload: float = 0.0  # pull-through cache uplink; 0 = same as the origin's
    sweep: tuple[int, ...] = ()  # node counts for the time-to-all vs N plots
    time_limit: float = 86400.0  # simulated seconds after which a run is cut off

    def with_nodes(self, n: int) -> Scenario:
        return dataclasses.replace(self, nodes=n, seeds=min(self.seeds, n))


# --- loading -----------------------------------------------------------------------------------

_TOP = {"name", "description", "seed", "nodes", "image", "network", "arrival", "churn", "stragglers", "seeds",
        "runs", "p2pdist", "baselines", "sweep", "time_limit"}


def load_scenario(path: str | Path) -> Scenario:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"scenario file {path} is not valid TOML: {e}") from None
    data.setdefault("name", Path(path).stem)
    return scenario_from_dict(data)


def scenario_from_dict(data: dict[str, Any]) -> Scenario:
    _known(data, _TOP, "scenario")
    nodes = _int(data.get("nodes", 100), "nodes", 1)
    runs = tuple(data.get("runs", RUNS))
    for r in runs:
        if r not in RUNS:
            raise ScenarioError(f"runs: unknown run {r!r}; choose from {', '.join(RUNS)}")
    p2p = data.get("p2pdist", {})
    _known(p2p, {"selector", "handout", "streaming", "digest_proofs", "limits", "tracker", "tracker_service_time",
                 "tracker_queue"}, "[p2pdist]")
    queue = str(p2p.get("tracker_queue", REPORTS_FIRST))
    if queue not in TRACKER_QUEUES:
        raise ScenarioError(f"p2pdist.tracker_queue: unknown {queue!r}; choose from {', '.join(TRACKER_QUEUES)}")
    base = data.get("baselines", {})
    _known(base, {"cache_upload"}, "[baselines]")
    network = _network(data.get("network", {}))
    scenario = Scenario(
        name=str(data.get("name", "scenario")),
        description=str(data.get("description", "")),
        seed=_int(data.get("seed", 1), "seed", 0),
        nodes=nodes,
        image=_image(data.get("image", {})),
        network=network,
        arrival=_arrival(data.get("arrival", {})),
        churn=_churn(data.get("churn", {})),
        stragglers=_stragglers(data.get("stragglers", {})),
        seeds=_int(data.get("seeds", 0), "seeds", 0),
        runs=runs,
        selector=str(p2p.get("selector", "rarest-first")),
        handout=str(p2p.get("handout", "")),
        streaming=bool(p2p.get("streaming", True)),
        digest_proofs=bool(p2p.get("digest_proofs", True)),
        limits=tuple(sorted(dict(p2p.get("limits", {})).items())),
        tracker=tuple(sorted(dict(p2p.get("tracker", {})).items())),
        tracker_service_time=parse_duration(p2p.get("tracker_service_time", 0), "p2pdist.tracker_service_time"),
        tracker_queue=queue,
        cache_upload=parse_rate(base["cache_upload"], "baselines.cache_upload") if "cache_upload" in base else 0.0,
        sweep=tuple(_int(n, "sweep", 1) for n in data.get("sweep", ())),
        time_limit=parse_duration(data.get("time_limit", 86400), "time_limit"),
    )
    if scenario.seeds >= scenario.nodes:
        raise ScenarioError(f"seeds ({scenario.seeds}) must be fewer than nodes ({scenario.nodes})")
    # Resolve the agent and tracker overrides now, so a typo fails at load time, not mid-run.
    from .profiles import p2pdist_profile

    p2pdist_profile(scenario)
    return scenario


def _known(table: dict[str, Any], keys: set[str], where: str) -> None:
    if not isinstance(table, dict):
        raise ScenarioError(f"{where} must be a table")
    unknown = sorted(set(table) - keys)
    if unknown:
        raise ScenarioError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(keys))}")


def _int(value: Any, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ScenarioError(f"{what}: expected an integer >= {low}, got {value!r}")
    return value


def _fraction(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ScenarioError(f"{what}: expected a number between 0 and 1, got {value!r}")
    return float(value)


def _image(t: dict[str, Any]) -> Image:
    _known(t, {"layers", "piece_size", "pull_concurrency"}, "[image]")
    layers = t.get("layers", ["1GiB"])
    if not isinstance(layers, list) or not layers:
        raise ScenarioError("image.layers: expected a list of sizes, e.g. [\"512MiB\", \"64MiB\"]")
    sizes = tuple(parse_size(v, f"image.layers[{i}]") for i, v in enumerate(layers))
    if any(s <= 0 for s in sizes):
        raise ScenarioError("image.layers: every layer must have a positive size")
    piece = parse_size(t.get("piece_size", 0), "image.piece_size")
    if piece and piece & (piece - 1):
        raise ScenarioError(f"image.piece_size must be a power of two, got {piece}")
    return Image(sizes, piece, _int(t.get("pull_concurrency", 3), "image.pull_concurrency", 1))


def _distribution(value: Any, what: str) -> Distribution:
    if not isinstance(value, dict):
        return Distribution(value=parse_rate(value, what))
    kind = value.get("dist", "fixed")
    if kind == "fixed":
        _known(value, {"dist", "value"}, what)
        return Distribution(value=parse_rate(value.get("value"), f"{what}.value"))
    if kind == "uniform":
        _known(value, {"dist", "low", "high"}, what)
        low, high = parse_rate(value.get("low"), f"{what}.low"), parse_rate(value.get("high"), f"{what}.high")
        if high < low:
            raise ScenarioError(f"{what}: high must be >= low")
        return Distribution("uniform", low=low, high=high)
    if kind == "choice":
        _known(value, {"dist", "values", "weights"}, what)
        values = tuple(parse_rate(v, f"{what}.values") for v in value.get("values", []))
        weights = tuple(float(w) for w in value.get("weights", []))
        if not values or (weights and len(weights) != len(values)):
            raise ScenarioError(f"{what}: choice needs values and, optionally, as many weights")
        return Distribution("choice", values=values, weights=weights)
    if kind == "lognormal":
        _known(value, {"dist", "median", "sigma"}, what)
        return Distribution("lognormal", value=parse_rate(value.get("median"), f"{what}.median"),
                            sigma=float(value.get("sigma", 0.5)))
    raise ScenarioError(f"{what}: unknown dist {kind!r}; choose fixed, uniform, choice or lognormal")


def _network(t: dict[str, Any]) -> Network:
    _known(t, {"upload", "download", "origin_upload", "rtt", "origin_rtt", "topology"}, "[network]")
    upload = _distribution(t.get("upload", "1Gbit"), "network.upload")
    download = _distribution(t.get("download", t.get("upload", "1Gbit")), "network.download")
    topology = None
    if "topology" in t:
        tt = t["topology"]
        _known(tt, {"zones", "racks_per_zone", "rack_uplink", "zone_uplink"}, "[network.topology]")
        topology = Topology(
            zones=_int(tt.get("zones", 1), "network.topology.zones", 1),
            racks_per_zone=_int(tt.get("racks_per_zone", 1), "network.topology.racks_per_zone", 1),
            rack_uplink=parse_rate(tt["rack_uplink"], "network.topology.rack_uplink") if "rack_uplink" in tt
            else math.inf,
            zone_uplink=parse_rate(tt["zone_uplink"], "network.topology.zone_uplink") if "zone_uplink" in tt
            else math.inf,
        )
    # Without an origin_upload, the origin is one more node: the setting of the chunked bound.
    origin = t.get("origin_upload", upload.value if upload.kind == "fixed" else "1Gbit")
    return Network(
        upload=upload, download=download,
        origin_upload=parse_rate(origin, "network.origin_upload"),
        rtt=parse_duration(t.get("rtt", "0.2ms"), "network.rtt"),
        origin_rtt=parse_duration(t.get("origin_rtt", "10ms"), "network.origin_rtt"),
        topology=topology,
    )


def _arrival(t: dict[str, Any]) -> Arrival:
    _known(t, {"pattern", "spread", "batch_size", "interval", "rate"}, "[arrival]")
    pattern = t.get("pattern", "flash")
    if pattern not in ARRIVALS:
        raise ScenarioError(f"arrival.pattern: unknown {pattern!r}; choose from {', '.join(ARRIVALS)}")
    rate = float(t.get("rate", 10.0))
    if rate <= 0:
        raise ScenarioError("arrival.rate must be > 0 nodes per second")
    return Arrival(
        pattern=pattern,
        spread=parse_duration(t.get("spread", 0), "arrival.spread"),
        batch_size=_int(t.get("batch_size", 100), "arrival.batch_size", 1),
        interval=parse_duration(t.get("interval", 30), "arrival.interval"),
        rate=rate,
    )


def _churn(t: dict[str, Any]) -> Churn:
    _known(t, {"fraction", "start", "end", "rejoin_after"}, "[churn]")
    start = parse_duration(t.get("start", 0), "churn.start")
    end = parse_duration(t.get("end", 10), "churn.end")
    if end < start:
        raise ScenarioError("churn.end must be >= churn.start")
    rejoin = t.get("rejoin_after")
    return Churn(_fraction(t.get("fraction", 0.0), "churn.fraction"), start, end,
                 -1.0 if rejoin is None else parse_duration(rejoin, "churn.rejoin_after"))


def _stragglers(t: dict[str, Any]) -> Stragglers:
    _known(t, {"fraction", "factor"}, "[stragglers]")
    factor = t.get("factor", 0.1)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0 < factor <= 1:
        raise ScenarioError(f"stragglers.factor: expected a number in (0, 1], got {factor!r}")
    return Stragglers(_fraction(t.get("fraction", 0.0), "stragglers.fraction"), float(factor))
