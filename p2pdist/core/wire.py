"""Wire messages: msgpack maps with a protocol version and a type, validated on decode.

Every frame is ``{"v": VERSION, "t": TYPE, ...fields}``. Decoding checks the size before parsing,
parses with msgpack's own container limits, then checks every field's type and bounds, so a
malformed, oversized or foreign frame becomes a precise ``WireError`` and never a crash.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import msgpack

from ..errors import P2pdistError
from .digest import Digest, DigestError
from .manifest import PIECE_DIGEST_SIZE
from .proofs import PROOF_SIZE

# 3: a piece digest is the root over its 256 KiB blocks' BLAKE3 digests (core.manifest); 2: BLAKE3 of
# the whole piece; 1: sha256. Nodes of two versions disagree on every digest, so they do not talk.
VERSION = 3
MAX_FRAME = 1 << 20  # 1 MiB: an announce with thousands of digests fits, a memory bomb does not
MAX_LIST = 8192
MAX_PROOFS = 4096  # proved digests in one bitfield message (~110 bytes each): the rest come from the tracker
MAX_TEXT = 512


class WireError(P2pdistError, ValueError):
    """A frame that is not a valid message of this protocol version."""


def _text(limit: int = MAX_TEXT):
    def check(name: str, v: Any) -> str:
        if not isinstance(v, str) or len(v) > limit:
            raise WireError(f"field {name!r} must be a string of at most {limit} characters")
        return v

    return check


def _int(lo: int = 0, hi: int = 1 << 62):
    def check(name: str, v: Any) -> int:
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            raise WireError(f"field {name!r} must be an integer in [{lo}, {hi}]")
        return v

    return check


def _opt_int(lo: int = 0, hi: int = 1 << 62):
    inner = _int(lo, hi)
    return lambda name, v: None if v is None else inner(name, v)


def _num(lo: float = 0.0, hi: float = 1e9):
    def check(name: str, v: Any) -> float:
        if not isinstance(v, int | float) or isinstance(v, bool) or not math.isfinite(v) or not lo <= v <= hi:
            raise WireError(f"field {name!r} must be a number in [{lo}, {hi}]")
        return float(v)

    return check


def _bool(name: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise WireError(f"field {name!r} must be a boolean")
    return v


def _bytes(limit: int):
    def check(name: str, v: Any) -> bytes:
        if not isinstance(v, bytes) or len(v) > limit:
            raise WireError(f"field {name!r} must be at most {limit} bytes")
        return v

    return check


_DIGESTS: dict[str, str] = {}  # blob digests already checked: a tracker sees the same few all day
_DIGESTS_KEPT = 4096


def _digest(name: str, v: Any) -> str:
    if type(v) is str and (known := _DIGESTS.get(v)) is not None:
        return known
    try:
        checked = str(Digest.parse(v))
    except DigestError as e:
        raise WireError(f"field {name!r}: {e}") from None
    if len(_DIGESTS) >= _DIGESTS_KEPT:
        _DIGESTS.clear()
    _DIGESTS[v] = checked
    return checked


def _choice(*options: str):
    def check(name: str, v: Any) -> str:
        if v not in options:
            raise WireError(f"field {name!r} must be one of {', '.join(options)}")
        return v

    return check


def _list(item, limit: int = MAX_LIST):
    def check(name: str, v: Any) -> list:
        if not isinstance(v, list) or len(v) > limit:
            raise WireError(f"field {name!r} must be a list of at most {limit} items")
        return [item(f"{name}[{i}]", x) for i, x in enumerate(v)]

    return check


_piece_index = _int(0, 1 << 20)
_lease_end = _int(1, 1 << 20)
_ttl = _num()


def _piece_digest(name: str, v: Any) -> tuple[int, bytes]:
    if not isinstance(v, list) or len(v) != 2:
        raise WireError(f"field {name!r} must be [index, piece digest]")
    index = _piece_index(name, v[0])
    if not isinstance(v[1], bytes) or len(v[1]) != PIECE_DIGEST_SIZE:
        raise WireError(f"field {name!r} must carry a {PIECE_DIGEST_SIZE}-byte piece digest")
    return index, v[1]


def _proof(name: str, v: Any) -> bytes:
    if not isinstance(v, bytes) or len(v) != PROOF_SIZE:
        raise WireError(f"field {name!r} must be a {PROOF_SIZE}-byte piece proof")
    return v


def _proved_digest(name: str, v: Any) -> tuple[int, bytes, bytes]:
    if not isinstance(v, list) or len(v) != 3:
        raise WireError(f"field {name!r} must be [index, piece digest, proof]")
    index, digest = _piece_digest(name, v[:2])
    return index, digest, _proof(name, v[2])


def _lease(name: str, v: Any) -> tuple[int, int, float]:
    if not isinstance(v, list) or len(v) != 3:
        raise WireError(f"field {name!r} must be [start, end, ttl]")
    start, end = _piece_index(name, v[0]), _lease_end(name, v[1])
    if end <= start:
        raise WireError(f"field {name!r}: lease end must be after its start")
    return start, end, _ttl(name, v[2])


def _peer(name: str, v: Any) -> PeerInfo:
    if not isinstance(v, dict):
        raise WireError(f"field {name!r} must be a map")
    return PeerInfo.from_fields(v, name)


class Message:
    TYPE: ClassVar[str]
    CHECKS: ClassVar[dict[str, Any]]

    def to_fields(self) -> dict[str, Any]:
        out = {}
        for name, _required in _fields_of(type(self)):
            value = getattr(self, name)
            if isinstance(value, list):
                value = [x.to_fields() if isinstance(x, Message) else list(x) if isinstance(x, tuple) else x
                         for x in value]
            elif isinstance(value, Message):
                value = value.to_fields()
            out[name] = value
        return out

    @classmethod
    def from_fields(cls, fields: dict[str, Any], where: str = ""):
        checks = cls.CHECKS
        values = {}
        for name, required in _fields_of(cls):
            if name in fields:
                values[name] = checks[name](f"{where}.{name}" if where else name, fields[name])
            elif required:
                label = f"{where}.{name}" if where else name
                raise WireError(f"{cls.TYPE or 'message'}: missing field {label!r}")
        # Unknown fields are ignored so a minor addition does not need a version bump.
        defaults = _DEFAULTS.get(cls)
        if defaults is None:
            return cls(**values)
        # What the frozen dataclass's __init__ would do (every value checked above), without its
        # object.__setattr__ per field: a tenth of an announce's decoding at the tracker.
        plain, factories = defaults
        message = object.__new__(cls)
        state = message.__dict__
        state.update(plain)
        for name, factory in factories:
            state[name] = factory()
        state.update(values)
        return message


# (name, required) of each message class's fields, looked up once: dataclasses.fields() on every
# encode and decode was a tenth of the tracker's time per announce.
_FIELDS: dict[type, tuple[tuple[str, bool], ...]] = {}
# Per message class built without its __init__ (has a __dict__, no __post_init__): its plain
# defaults, and (name, factory) of the fields whose default is made fresh each time.
_DEFAULTS: dict[type, tuple[dict[str, Any], tuple[tuple[str, Any], ...]]] = {}


def _fast_build(cls: type) -> None:
    if hasattr(cls, "__slots__") or hasattr(cls, "__post_init__"):
        return
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    plain = {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}
    factories = tuple((f.name, f.default_factory) for f in fields if f.default_factory is not dataclasses.MISSING)
    _DEFAULTS[cls] = (plain, factories)


def _fields_of(cls: type) -> tuple[tuple[str, bool], ...]:
    known = _FIELDS.get(cls)
    if known is None:
        known = _FIELDS[cls] = tuple(
            (f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        )
    return known


@dataclass(frozen=True, slots=True)
class PeerInfo(Message):
    """A peer as the tracker knows it and hands it out: the one record of a peer from announce to
    handout to the reply on the wire (core.handout ranks these)."""

    TYPE: ClassVar[str] = ""
    CHECKS: ClassVar[dict[str, Any]] = {
        "node": _text(128), "addr": _text(300), "zone": _text(64), "rack": _text(64),
        "have": _int(), "complete": _bool, "load": _int(0, 1 << 20),
    }
    node: str
    addr: str
    zone: str = ""
    rack: str = ""
    have: int = 0  # verified pieces
    complete: bool = False
    load: int = 0  # uploads in progress, as the peer last reported

    def to_fields(self) -> dict[str, Any]:
        # Spelled out: a reply carries up to handout_size of these, and the generic walk over the
        # fields cost 1.3 us each (a 16-peer reply: 24 us to encode, 11.6 us spelled out).
        return {"node": self.node, "addr": self.addr, "zone": self.zone, "rack": self.rack, "have": self.have,
                "complete": self.complete, "load": self.load}


EVENTS = ("started", "progress", "completed", "stopped", "corrupt")


@dataclass(frozen=True)
class Announce(Message):
    TYPE: ClassVar[str] = "announce"
    CHECKS: ClassVar[dict[str, Any]] = {
        "node": _text(128), "addr": _text(300), "zone": _text(64), "rack": _text(64),
        "blob": _digest, "size": _opt_int(), "have": _int(), "complete": _bool, "load": _int(0, 1 << 20),
        "event": _choice(*EVENTS), "want_leases": _int(0, 16),
        "digests": _list(_piece_digest), "digest_pos": _int(), "streaming": _bool, "wants_peers": _bool,
        "peer_key": _bytes(32), "orphans": _list(_piece_index, 64), "spares": _bool,
    }
    node: str
    addr: str
    blob: str
    zone: str = ""
    rack: str = ""
    size: int | None = None
    have: int = 0
    complete: bool = False
    load: int = 0
    event: str = "progress"
    want_leases: int = 0
    digests: list[tuple[int, bytes]] = field(default_factory=list)
    digest_pos: int = 0
    # Bytes arrived on one of our origin streams since the last announce: the tracker renews our
    # leases, as it does for a digest (a piece may take longer than the lease TTL to arrive).
    streaming: bool = False
    # False: the agent's neighbourhood is full, so the tracker skips the handout (its cost per
    # announce grows with the blob's peers). Absent (older agents): True.
    wants_peers: bool = True
    # The node's Ed25519 public key for peer requests: the tracker answers with a ticket for it
    # (core.identity). Empty: no ticket wanted.
    peer_key: bytes = b""
    # Pieces the node lacks and no neighbour of it holds, after a while without progress
    # (core.download.Download.orphans): the tracker leases again those it counted as fetched.
    orphans: list[int] = field(default_factory=list)
    # True: the agent keeps its spare lease queued behind its origin streams (core.leases.SPARE_LEASES).
    # Absent (older agents, which start every lease they hold at once): the tracker grants no spare.
    spares: bool = False


@dataclass(frozen=True)
class AnnounceReply(Message):
    TYPE: ClassVar[str] = "announce-reply"
    CHECKS: ClassVar[dict[str, Any]] = {
        "interval": _num(0.0, 86400.0), "size": _opt_int(), "piece_size": _opt_int(1, 1 << 32),
        "peers": _list(_peer, 1024), "digests": _list(_piece_digest), "digest_pos": _int(),
        "leases": _list(_lease, 64), "reset": _bool, "ticket": _text(512), "spacing": _num(0.0, 60.0),
        "proofs": _list(_proof), "wiped": _bool,
    }
    interval: float
    size: int | None = None
    piece_size: int | None = None
    peers: list[PeerInfo] = field(default_factory=list)
    digests: list[tuple[int, bytes]] = field(default_factory=list)
    digest_pos: int = 0
    leases: list[tuple[int, int, float]] = field(default_factory=list)
    reset: bool = False  # the tracker forgot this blob's digests: drop the cursor and start over
    ticket: str = ""  # a new peer ticket for the announce's peer_key, when the last one nears expiry
    # Seconds the agent leaves between its announces at least, when the tracker is loaded (its
    # pacer, tracker/pacer.py); 0: the agent's own spacing.
    spacing: float = 0.0
    # The tracker's proof of each digest in ``digests`` (core.proofs), in the same order, so the
    # agent can hand the digests on with its pieces. Empty: a tracker that signs nothing.
    proofs: list[bytes] = field(default_factory=list)
    # With ``reset``: the log was wiped by a "corrupt" report (an assembled blob failed its digest),
    # so what the agent holds was checked against digests one of which is wrong: it starts over.
    wiped: bool = False

    def to_fields(self) -> dict[str, Any]:
        # Spelled out, as PeerInfo's: the tracker encodes one per announce. msgpack packs the
        # tuples of digests and leases as arrays, as the generic walk's lists.
        return {"interval": self.interval, "size": self.size, "piece_size": self.piece_size,
                "peers": [p.to_fields() for p in self.peers], "digests": self.digests,
                "digest_pos": self.digest_pos, "leases": self.leases, "reset": self.reset,
                "ticket": self.ticket, "spacing": self.spacing, "proofs": self.proofs, "wiped": self.wiped}


@dataclass(frozen=True)
class Hello(Message):
    TYPE: ClassVar[str] = "hello"
    CHECKS: ClassVar[dict[str, Any]] = {"node": _text(128), "addr": _text(300)}
    node: str
    addr: str


@dataclass(frozen=True)
class BitfieldMsg(Message):
    TYPE: ClassVar[str] = "bitfield"
    CHECKS: ClassVar[dict[str, Any]] = {
        "blob": _digest, "pieces": _int(1, 1 << 20), "bits": _bytes((1 << 20) // 8),
        "epoch": _int(), "proofs": _list(_proved_digest, MAX_PROOFS),
    }
    blob: str
    pieces: int
    bits: bytes
    # Proved digests of pieces in ``bits`` (index, digest, tracker proof), of the sender's digest
    # epoch: a receiver in the same epoch takes them without asking the tracker (core.proofs).
    epoch: int = 0
    proofs: list[tuple[int, bytes, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Have(Message):
    TYPE: ClassVar[str] = "have"
    CHECKS: ClassVar[dict[str, Any]] = {
        "blob": _digest, "index": _int(0, 1 << 20), "digest": _bytes(PIECE_DIGEST_SIZE), "proof": _bytes(PROOF_SIZE),
        "epoch": _int(),
    }
    blob: str
    index: int
    # The piece's digest and the tracker's proof of it, in the sender's digest epoch; empty when
    # the sender has no proof (its own origin piece, not yet published).
    digest: bytes = b""
    proof: bytes = b""
    epoch: int = 0

    def to_fields(self) -> dict[str, Any]:
        # Spelled out, and a HAVE without a proof as before: one goes to every neighbour per piece.
        if not self.proof:
            return {"blob": self.blob, "index": self.index}
        return {"blob": self.blob, "index": self.index, "digest": self.digest, "proof": self.proof,
                "epoch": self.epoch}


@dataclass(frozen=True)
class Lost(Message):
    """The sender no longer holds this blob (evicted or found corrupt): forget its pieces."""

    TYPE: ClassVar[str] = "lost"
    CHECKS: ClassVar[dict[str, Any]] = {"blob": _digest}
    blob: str


@dataclass(frozen=True)
class Room(Message):
    """Upload slots the sender has free right now: askers skip a full peer and prefer the emptiest.

    Sent when the number changes; a peer that never said is assumed to have room (a 503 corrects it).
    """

    TYPE: ClassVar[str] = "room"
    CHECKS: ClassVar[dict[str, Any]] = {"free": _int(0, 1 << 16)}
    free: int


MESSAGES: dict[str, type[Message]] = {
    m.TYPE: m for m in (Announce, AnnounceReply, Hello, BitfieldMsg, Have, Lost, Room)
}
for _message in MESSAGES.values():
    _fast_build(_message)


def encode(message: Message, **changes: Any) -> bytes:
    """The frame of ``message``, with ``changes`` to its fields (as dataclasses.replace would make,
    unchecked: the sender's own values) without building a second message."""
    data = msgpack.packb({"v": VERSION, "t": message.TYPE, **message.to_fields(), **changes}, use_bin_type=True)
    if len(data) > MAX_FRAME:
        raise WireError(f"{message.TYPE} frame of {len(data)} bytes exceeds {MAX_FRAME}")
    return data


def decode(data: bytes, expect: tuple[type[Message], ...] | None = None) -> Message:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise WireError("frame must be bytes")
    if len(data) > MAX_FRAME:
        raise WireError(f"frame of {len(data)} bytes exceeds the {MAX_FRAME}-byte limit")
    try:
        obj = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=MAX_FRAME, max_bin_len=MAX_FRAME, max_array_len=MAX_LIST * 2,
            max_map_len=64, max_ext_len=0,
        )
    except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError, TypeError) as e:
        raise WireError(f"malformed msgpack frame: {e}") from None
    if not isinstance(obj, dict):
        raise WireError("frame must be a msgpack map")
    version = obj.get("v")
    if type(version) is not int or version != VERSION:
        raise WireError(f"unsupported protocol version {version!r}: this node speaks version {VERSION}")
    kind = obj.get("t")
    cls = MESSAGES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown message type {str(kind)[:40]!r}")
    if expect is not None and cls not in expect:
        raise WireError(f"unexpected message type {kind!r} here")
    return cls.from_fields(obj)
