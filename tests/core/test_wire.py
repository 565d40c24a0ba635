import contextlib
import dataclasses
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.core.manifest import PIECE_DIGEST_SIZE
from p2pdist.core.wire import (
    EVENTS,
    MAX_FRAME,
    MAX_LIST,
    MESSAGES,
    VERSION,
    Announce,
    AnnounceReply,
    BitfieldMsg,
    Have,
    Hello,
    Lost,
    PeerInfo,
    Room,
    WireError,
    decode,
    encode,
)

BLOB = "sha256:" + "ab" * 32
D32 = b"\x11" * 32

# -- strategies ----------------------------------------------------------------------------------

HEX = "0123456789abcdef"
digests = st.one_of(
    st.text(HEX, min_size=64, max_size=64).map(lambda h: "sha256:" + h),
    st.text(HEX, min_size=128, max_size=128).map(lambda h: "sha512:" + h),
)


def text(limit):
    return st.text(max_size=min(limit, 40)) | st.text(max_size=limit, min_size=limit, alphabet="xé")


piece_digests = st.tuples(st.integers(0, 1 << 20), st.binary(min_size=32, max_size=32))
leases = st.integers(0, (1 << 20) - 1).flatmap(
    lambda s: st.tuples(st.just(s), st.integers(s + 1, 1 << 20), st.floats(0, 1e9, allow_nan=False))
)
peer_entries = st.builds(
    PeerInfo, node=text(128), addr=text(300), zone=text(64), rack=text(64),
    have=st.integers(0, 1 << 62), complete=st.booleans(),
)
announces = st.builds(
    Announce, node=text(128), addr=text(300), blob=digests, zone=text(64), rack=text(64),
    size=st.none() | st.integers(0, 1 << 62), have=st.integers(0, 1 << 62), complete=st.booleans(),
    load=st.integers(0, 1 << 20), event=st.sampled_from(EVENTS), want_leases=st.integers(0, 16),
    digests=st.lists(piece_digests, max_size=20), digest_pos=st.integers(0, 1 << 62),
    streaming=st.booleans(),
)
replies = st.builds(
    AnnounceReply, interval=st.floats(0, 86400, allow_nan=False),
    size=st.none() | st.integers(0, 1 << 62), piece_size=st.none() | st.integers(1, 1 << 32),
    peers=st.lists(peer_entries, max_size=8), digests=st.lists(piece_digests, max_size=20),
    digest_pos=st.integers(0, 1 << 62), leases=st.lists(leases, max_size=10), reset=st.booleans(),
)
messages = st.one_of(
    announces,
    replies,
    st.builds(Hello, node=text(128), addr=text(300)),
    st.builds(BitfieldMsg, blob=digests, pieces=st.integers(1, 1 << 20), bits=st.binary(max_size=200)),
    st.builds(Have, blob=digests, index=st.integers(0, 1 << 20)),
    st.builds(Lost, blob=digests),
    st.builds(Room, free=st.integers(0, 1 << 16)),
)


@settings(max_examples=300)
@given(messages)
def test_round_trip(message):
    data = encode(message)
    assert len(data) <= MAX_FRAME
    back = decode(data)
    assert type(back) is type(message)
    assert back == message
    assert encode(back) == data


@pytest.mark.parametrize("cls", list(MESSAGES.values()))
def test_every_message_type_is_covered_by_round_trip_strategies(cls):
    # Guards against adding a message without a strategy above.
    assert cls in (Announce, AnnounceReply, Hello, BitfieldMsg, Have, Lost, Room)


def test_defaults_round_trip_and_frame_shape():
    msg = Announce(node="n1", addr="10.0.0.1:7000", blob=BLOB)
    raw = msgpack.unpackb(encode(msg))
    assert raw["v"] == VERSION and raw["t"] == "announce"
    assert raw["digests"] == [] and raw["event"] == "progress"
    assert decode(encode(msg)) == msg


def test_nested_peers_and_tuples_decode_to_typed_values():
    reply = AnnounceReply(
        interval=5, peers=[PeerInfo("a", "a:1", complete=True)], digests=[(3, D32)], leases=[(0, 4, 10)]
    )
    back = decode(encode(reply))
    assert isinstance(back.peers[0], PeerInfo) and back.peers[0].complete is True
    assert back.digests == [(3, D32)] and isinstance(back.digests[0], tuple)
    assert back.leases == [(0, 4, 10.0)] and isinstance(back.leases[0][2], float)
    assert isinstance(back.interval, float)


def test_decode_accepts_bytearray_and_memoryview():
    data = encode(Have(BLOB, 3))
    assert decode(bytearray(data)) == Have(BLOB, 3)
    assert decode(memoryview(data)) == Have(BLOB, 3)


def test_expect_filters_types():
    data = encode(Have(BLOB, 3))
    assert decode(data, expect=(Have, Lost)) == Have(BLOB, 3)
    with pytest.raises(WireError, match="unexpected message type 'have'"):
        decode(data, expect=(Announce,))


def test_unknown_fields_ignored():
    data = msgpack.packb({"v": VERSION, "t": "have", "blob": BLOB, "index": 2, "future": [1, 2, {"x": b""}]})
    assert decode(data) == Have(BLOB, 2)


# -- malformed frames ----------------------------------------------------------------------------


def _frame(t, **fields):
    return msgpack.packb({"v": VERSION, "t": t, **fields}, use_bin_type=True)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # reserved byte
        b"\x81",  # map header, no entries
        b"\xa2\xff\xfe",  # invalid UTF-8 string
        b"\x82\xa1v\x01",  # truncated map
        msgpack.packb({1: 2}),  # non-string key
        msgpack.packb(msgpack.ExtType(1, b"abc")),
        msgpack.packb({"v": VERSION, "t": "lost", "blob": msgpack.ExtType(5, b"x")}),
        b"\x91" * 5000 + b"\xc0",  # nesting bomb
        msgpack.packb({f"k{i}": i for i in range(65)}),  # too many keys
        _frame("lost", blob=BLOB) + b"\x00",  # trailing data
    ],
)
def test_malformed_msgpack(data):
    with pytest.raises(WireError, match="malformed msgpack"):
        decode(data)


@settings(max_examples=60)
@given(messages, st.data())
def test_truncated_frames_rejected(message, data):
    frame = encode(message)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(WireError):
        decode(frame[:cut])


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash(data):
    with contextlib.suppress(WireError):
        decode(data)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=40) | digests,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(MESSAGES)), st.data())
def test_random_field_values_only_raise_wire_error(kind, data):
    cls = MESSAGES[kind]
    names = [f.name for f in dataclasses.fields(cls)]
    fields = data.draw(st.dictionaries(st.sampled_from(names), msgpack_values, max_size=len(names)))
    frame = msgpack.packb({"v": VERSION, "t": kind, **fields}, use_bin_type=True)
    try:
        message = decode(frame)
    except WireError:
        return
    # Whatever was accepted re-encodes to an equivalent, valid frame.
    assert type(message) is cls
    assert decode(encode(message)) == message


@pytest.mark.parametrize("obj", [[1, 2], "announce", 1, None, b"x", 1.5, True])
def test_non_map(obj):
    with pytest.raises(WireError, match="must be a msgpack map"):
        decode(msgpack.packb(obj, use_bin_type=True))


@pytest.mark.parametrize("value", ["frame", 1, None, ["a"]])
def test_non_bytes_frame(value):
    with pytest.raises(WireError, match="frame must be bytes"):
        decode(value)


# Every older version (1: sha256 pieces, 2: BLAKE3 of whole pieces) and the next one disagree on digests.
@pytest.mark.parametrize("version", [0, 1, 2, VERSION + 1, -1, str(VERSION), None, True, float(VERSION), [VERSION]])
def test_wrong_version(version):
    data = msgpack.packb({"v": version, "t": "lost", "blob": BLOB})
    with pytest.raises(WireError, match="unsupported protocol version"):
        decode(data)


def test_missing_version():
    with pytest.raises(WireError, match="unsupported protocol version"):
        decode(msgpack.packb({"t": "lost", "blob": BLOB}))


@pytest.mark.parametrize("kind", ["nope", "", "Announce", 1, None, ["have"], b"have"])
def test_unknown_type(kind):
    data = msgpack.packb({"v": VERSION, "t": kind, "blob": BLOB, "index": 1}, use_bin_type=True)
    with pytest.raises(WireError, match="unknown message type"):
        decode(data)


def test_missing_type():
    with pytest.raises(WireError, match="unknown message type"):
        decode(msgpack.packb({"v": VERSION, "blob": BLOB}))


@pytest.mark.parametrize(
    ("t", "fields", "missing"),
    [
        ("announce", {"node": "n", "addr": "a"}, "blob"),
        ("announce", {"node": "n", "blob": BLOB}, "addr"),
        ("announce-reply", {}, "interval"),
        ("hello", {"node": "n"}, "addr"),
        ("bitfield", {"blob": BLOB, "pieces": 3}, "bits"),
        ("have", {"blob": BLOB}, "index"),
        ("lost", {}, "blob"),
        ("announce-reply", {"interval": 1.0, "peers": [{"node": "a"}]}, "peers[0].addr"),
    ],
)
def test_missing_required_field(t, fields, missing):
    with pytest.raises(WireError, match=rf"missing field '{missing}'".replace("[", r"\[").replace("]", r"\]")):
        decode(_frame(t, **fields))


ANN = {"node": "n", "addr": "a:1", "blob": BLOB}
REPLY = {"interval": 1.0}


@pytest.mark.parametrize(
    ("t", "base", "field", "value"),
    [
        # strings
        ("hello", {"addr": "a"}, "node", 5),
        ("hello", {"addr": "a"}, "node", b"n"),
        ("hello", {"addr": "a"}, "node", "x" * 129),
        ("hello", {"node": "n"}, "addr", "x" * 301),
        ("announce", ANN, "zone", "z" * 65),
        ("announce", ANN, "rack", None),
        # integers: wrong type, bounds, bools passed as ints, floats passed as ints
        ("have", {"blob": BLOB}, "index", "1"),
        ("have", {"blob": BLOB}, "index", -1),
        ("have", {"blob": BLOB}, "index", (1 << 20) + 1),
        ("have", {"blob": BLOB}, "index", True),
        ("have", {"blob": BLOB}, "index", 1.0),
        ("announce", ANN, "have", True),
        ("announce", ANN, "have", 1 << 63),
        ("announce", ANN, "size", False),
        ("announce", ANN, "size", -5),
        ("announce", ANN, "load", (1 << 20) + 1),
        ("announce", ANN, "want_leases", 17),
        ("announce", ANN, "digest_pos", -1),
        ("bitfield", {"blob": BLOB, "bits": b""}, "pieces", 0),
        ("announce-reply", REPLY, "piece_size", 0),
        ("announce-reply", REPLY, "piece_size", (1 << 32) + 1),
        # booleans: ints passed as bools
        ("announce", ANN, "complete", 1),
        ("announce", ANN, "complete", 0),
        ("announce", ANN, "complete", "true"),
        ("announce", ANN, "streaming", 1),
        ("announce", ANN, "streaming", "yes"),
        ("announce-reply", REPLY, "reset", 1),
        # numbers
        ("announce-reply", {}, "interval", True),
        ("announce-reply", {}, "interval", math.nan),
        ("announce-reply", {}, "interval", math.inf),
        ("announce-reply", {}, "interval", -0.5),
        ("announce-reply", {}, "interval", 86400.5),
        ("announce-reply", {}, "interval", "5"),
        # choices
        ("announce", ANN, "event", "bogus"),
        ("announce", ANN, "event", 1),
        ("announce", ANN, "event", ["started"]),
        # bytes
        ("bitfield", {"blob": BLOB, "pieces": 8}, "bits", "\x00"),
        ("bitfield", {"blob": BLOB, "pieces": 8}, "bits", b"\x00" * ((1 << 17) + 1)),
        # lists of piece digests
        ("announce", ANN, "digests", {"0": D32}),
        ("announce", ANN, "digests", [[0]]),
        ("announce", ANN, "digests", [[0, D32, 1]]),
        ("announce", ANN, "digests", [[0, b"x" * 31]]),
        ("announce", ANN, "digests", [[0, "x" * 32]]),
        ("announce", ANN, "digests", [[-1, D32]]),
        ("announce", ANN, "digests", [[True, D32]]),
        ("announce", ANN, "digests", [[(1 << 20) + 1, D32]]),
        ("announce-reply", REPLY, "digests", [[0, D32], "x"]),
        # leases
        ("announce-reply", REPLY, "leases", [[0, 1]]),
        ("announce-reply", REPLY, "leases", [[5, 5, 1.0]]),
        ("announce-reply", REPLY, "leases", [[5, 4, 1.0]]),
        ("announce-reply", REPLY, "leases", [[0, 1, -1.0]]),
        ("announce-reply", REPLY, "leases", [[0, 1, math.nan]]),
        ("announce-reply", REPLY, "leases", [[0, True, 1.0]]),
        ("announce-reply", REPLY, "leases", [[0, 1, False]]),
        ("announce-reply", REPLY, "leases", "0-1"),
        # peers
        ("announce-reply", REPLY, "peers", ["a:1"]),
        ("announce-reply", REPLY, "peers", [{"node": "a", "addr": "a:1", "complete": 1}]),
        ("announce-reply", REPLY, "peers", [{"node": "a", "addr": "a:1", "have": True}]),
        ("announce-reply", REPLY, "peers", [{"node": 1, "addr": "a:1"}]),
        ("announce-reply", REPLY, "peers", {"node": "a", "addr": "a:1"}),
    ],
)
def test_wrong_field_type(t, base, field, value):
    with pytest.raises(WireError, match=field):
        decode(_frame(t, **{**base, field: value}))


@pytest.mark.parametrize(
    "blob",
    [
        "sha256:../../etc/passwd",
        "../x",
        "sha256:" + "AB" * 32,
        "sha256:" + "a" * 63,
        "md5:" + "a" * 32,
        "sha512:" + "a" * 64,
        "",
        None,
        7,
        b"sha256:" + b"a" * 64,
    ],
)
@pytest.mark.parametrize(
    ("t", "base"),
    [("lost", {}), ("have", {"index": 0}), ("bitfield", {"pieces": 1, "bits": b"\x00"}), ("announce", ANN)],
)
def test_invalid_digests_rejected(t, base, blob):
    with pytest.raises(WireError, match="field 'blob'"):
        decode(_frame(t, **{**base, "blob": blob}))


def test_oversize_frame_rejected_before_parsing():
    with pytest.raises(WireError, match="exceeds"):
        decode(b"\xc0" * (MAX_FRAME + 1))
    big = msgpack.packb({"v": VERSION, "t": "hello", "node": "n", "addr": "x" * MAX_FRAME})
    with pytest.raises(WireError, match="exceeds"):
        decode(big)


def test_frame_at_limit_is_parsed():
    pad = MAX_FRAME - len(_frame("lost", blob=BLOB, pad=b""))
    data = _frame("lost", blob=BLOB, pad=b"\x00" * (pad - 3))  # bin8 -> bin32 header: 3 more bytes
    assert len(data) == MAX_FRAME
    assert decode(data) == Lost(BLOB)


def test_oversize_message_not_encoded():
    with pytest.raises(WireError, match="exceeds"):
        encode(Hello(node="n", addr="x" * MAX_FRAME))


def test_list_limits():
    at_limit = [[i, D32] for i in range(MAX_LIST)]
    assert len(decode(_frame("announce", **ANN, digests=at_limit)).digests) == MAX_LIST
    with pytest.raises(WireError, match="at most 8192 items"):
        decode(_frame("announce", **ANN, digests=[*at_limit, [0, D32]]))
    with pytest.raises(WireError, match="leases"):
        decode(_frame("announce-reply", **REPLY, leases=[[0, 1, 1.0]] * 65))
    with pytest.raises(WireError, match="peers"):
        decode(_frame("announce-reply", **REPLY, peers=[{"node": "a", "addr": "b"}] * 1025))


def test_huge_list_rejected_by_parser_limits():
    # More elements than the parser allows, each a single nil byte: tiny frame, large count.
    data = _frame("announce", **ANN, digests=[None] * (MAX_LIST * 2 + 1))
    assert len(data) < MAX_FRAME
    with pytest.raises(WireError, match="malformed msgpack"):
        decode(data)


def test_huge_list_in_unknown_field_bounded():
    data = _frame("lost", blob=BLOB, junk=[None] * (MAX_LIST * 2 + 1))
    with pytest.raises(WireError):
        decode(data)


def test_digest_is_canonical_string():
    back = decode(_frame("have", blob=BLOB, index=0))
    assert back.blob == BLOB and isinstance(back.blob, str)


def test_wire_error_is_value_error():
    assert issubclass(WireError, ValueError)


@pytest.mark.parametrize("free", [-1, 1 << 17, "4", 2.5, None])
def test_room_out_of_range_or_wrong_type_is_refused(free):
    data = msgpack.packb({"v": VERSION, "t": "room", "free": free})
    with pytest.raises(WireError, match="free"):
        decode(data)


def test_peer_info_encodes_every_field():
    """PeerInfo spells its fields out for speed: a field added to the class must be added there too."""
    info = PeerInfo("n", "a:1", "z", "r", 3, True, 2)
    assert set(info.to_fields()) == {f.name for f in dataclasses.fields(PeerInfo)}
    assert PeerInfo.from_fields(info.to_fields()) == info


def test_announce_reply_encodes_every_field_and_changes_apply_without_a_copy():
    """AnnounceReply spells its fields out too; ``encode(reply, **changes)`` is replace-then-encode."""
    reply = AnnounceReply(interval=2.0, size=10, piece_size=4, peers=[PeerInfo("n", "a:1")],
                          digests=[(1, b"d" * PIECE_DIGEST_SIZE)], digest_pos=3, leases=[(0, 2, 5.0)],
                          reset=True, ticket="t", spacing=0.5)
    assert set(reply.to_fields()) == {f.name for f in dataclasses.fields(AnnounceReply)}
    assert decode(encode(reply)) == reply
    changed = dataclasses.replace(reply, ticket="new", spacing=1.5)
    assert decode(encode(reply, ticket="new", spacing=1.5)) == changed


def test_messages_built_without_init_are_equal_to_built_ones_and_get_fresh_defaults():
    """Decoding skips the frozen dataclass's __init__: the result must be the same message, with
    defaults of its own (a shared digests list would leak one announce's digests into the next)."""
    sent = Announce(node="n", addr="a:1", blob="sha256:" + "ab" * 32)
    first, second = decode(encode(sent)), decode(encode(sent))
    assert first == sent and hash(first.blob) == hash(sent.blob)
    first.digests.append((0, b"x" * PIECE_DIGEST_SIZE))
    assert second.digests == [] and Announce(node="n", addr="a:1", blob=sent.blob).digests == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.node = "other"  # type: ignore[misc]
