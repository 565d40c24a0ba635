import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pdist.core.bitfield import Bitfield, BitfieldError


@st.composite
def bitfields(draw, max_size=300):
    size = draw(st.integers(0, max_size))
    indices = draw(st.sets(st.integers(0, size - 1), max_size=size)) if size else set()
    return size, indices


@given(bitfields())
def test_round_trip(sb):
    size, indices = sb
    bf = Bitfield(size, indices)
    data = bf.to_bytes()
    assert len(data) == (size + 7) // 8
    back = Bitfield.from_bytes(size, data)
    assert back == bf
    assert set(back) == indices
    assert len(back) == len(indices)
    assert back.complete == (len(indices) == size)


@given(bitfields())
def test_count_matches_iteration_and_membership(sb):
    size, indices = sb
    bf = Bitfield(size, indices)
    assert len(bf) == len(list(bf)) == len(indices)
    assert list(bf) == sorted(indices)  # iteration is in index order
    assert all((i in bf) == (i in indices) for i in range(size))


@given(bitfields())
def test_missing_is_complement(sb):
    size, indices = sb
    bf = Bitfield(size, indices)
    missing = list(bf.missing())
    assert missing == sorted(set(range(size)) - indices)
    assert set(missing).isdisjoint(bf)
    assert len(missing) + len(bf) == size


def test_msb_first_encoding():
    assert Bitfield(8, [0]).to_bytes() == b"\x80"
    assert Bitfield(8, [7]).to_bytes() == b"\x01"
    assert Bitfield(10, [0, 9]).to_bytes() == b"\x80\x40"
    assert set(Bitfield.from_bytes(12, b"\xa0\x10")) == {0, 2, 11}


@given(st.integers(1, 200), st.data())
def test_spare_bits_rejected(size, data):
    spare = (-size) % 8
    if spare == 0:
        return
    raw = bytearray(Bitfield.full(size).to_bytes())
    bit = data.draw(st.integers(0, spare - 1))
    raw[-1] |= 1 << bit
    with pytest.raises(BitfieldError, match="past its last piece"):
        Bitfield.from_bytes(size, bytes(raw))


@pytest.mark.parametrize(("size", "length"), [(0, 1), (1, 0), (8, 2), (9, 1), (9, 3), (16, 1)])
def test_wrong_lengths_rejected(size, length):
    with pytest.raises(BitfieldError, match="needs"):
        Bitfield.from_bytes(size, bytes(length))


@pytest.mark.parametrize("size", [-1, -7, -8, -9])
def test_negative_size_rejected(size):
    with pytest.raises(BitfieldError):
        Bitfield(size)
    with pytest.raises(BitfieldError):
        Bitfield.from_bytes(size, b"")


def test_full_and_empty():
    assert Bitfield.full(13).complete
    assert len(Bitfield.full(13)) == 13
    assert Bitfield.full(13).to_bytes() == b"\xff\xf8"
    assert not Bitfield(13).complete
    assert Bitfield(0).complete  # zero pieces: trivially complete
    assert Bitfield(0).to_bytes() == b""
    assert Bitfield.from_bytes(0, b"") == Bitfield(0)


def test_add_and_discard_keep_count():
    bf = Bitfield(10)
    assert bf.add(3) is True
    assert bf.add(3) is False
    assert len(bf) == 1
    bf.discard(4)  # not set: no change
    assert len(bf) == 1
    bf.discard(3)
    assert len(bf) == 0 and 3 not in bf
    bf.discard(3)
    assert len(bf) == 0


@pytest.mark.parametrize("index", [-1, 10, 100])
def test_out_of_range(index):
    bf = Bitfield(10)
    with pytest.raises(BitfieldError):
        bf.add(index)
    with pytest.raises(BitfieldError):
        bf.discard(index)
    assert index not in bf
    with pytest.raises(BitfieldError):
        Bitfield(10, [index])


def test_contains_non_int():
    bf = Bitfield(10, [1])
    assert "1" not in bf
    assert None not in bf
    assert 1.0 not in bf


@given(bitfields(), st.lists(st.tuples(st.booleans(), st.integers(0, 299)), max_size=50))
def test_operations_match_set_model(sb, ops):
    size, indices = sb
    bf = Bitfield(size, indices)
    model = set(indices)
    for add, i in ops:
        if size == 0:
            break
        i %= size
        if add:
            assert bf.add(i) == (i not in model)
            model.add(i)
        else:
            bf.discard(i)
            model.discard(i)
        assert len(bf) == len(model)
    assert set(bf) == model
    assert Bitfield.from_bytes(size, bf.to_bytes()) == bf


def test_copy_is_independent():
    bf = Bitfield(10, [1, 2])
    cp = bf.copy()
    assert cp == bf
    cp.add(5)
    assert 5 not in bf and cp != bf


def test_equality_considers_size():
    assert Bitfield(8, [1]) != Bitfield(7, [1])
    assert Bitfield(8, [1]) != Bitfield(8, [2])
    assert Bitfield(8, [1]) != {1}


def test_as_int_puts_piece_i_at_width_minus_one_minus_i():
    bf = Bitfield(11, [0, 3, 10])
    assert bf.width == 16
    got = [i for i in range(11) if bf.as_int() >> (bf.width - 1 - i) & 1]
    assert got == [0, 3, 10]
    union = bf.as_int() | Bitfield(11, [5]).as_int()
    assert [i for i in range(11) if union >> (bf.width - 1 - i) & 1] == [0, 3, 5, 10]
