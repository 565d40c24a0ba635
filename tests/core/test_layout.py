import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pdist.core.layout import (
    MAX_PIECE_SIZE,
    MAX_PIECES,
    MIN_PIECE_SIZE,
    TARGET_PIECES,
    LayoutError,
    PieceLayout,
    piece_size_for,
)

MiB = 1 << 20
blob_sizes = st.integers(0, 64 << 30)


@given(st.integers(0, 1 << 40), st.integers(1, 1 << 20))
def test_pieces_cover_blob_exactly(blob_size, piece_size):
    if -(-blob_size // piece_size) > MAX_PIECES:
        return
    layout = PieceLayout(blob_size, piece_size)
    expected_offset = 0
    for i in _sample_indices(layout.count):
        offset, length = layout.span(i)
        assert offset == i * piece_size
        assert 0 < length <= piece_size or blob_size == 0
        if i < layout.count - 1:
            assert length == piece_size
    # Contiguity over the sampled prefix and the tail closes the blob with no gap or overlap.
    for i in range(min(layout.count, 64)):
        offset, length = layout.span(i)
        assert offset == expected_offset
        expected_offset += length
    last = layout.count - 1
    assert layout.offset(last) + layout.length(last) == blob_size
    assert (layout.count - 1) * piece_size + layout.length(last) == blob_size


def _sample_indices(count):
    return sorted({0, count - 1, count // 2, *range(min(count, 8))})


@given(st.integers(0, 10_000), st.integers(1, 4096))
def test_small_layout_exact_partition(blob_size, piece_size):
    layout = PieceLayout(blob_size, piece_size)
    covered = []
    for i in range(layout.count):
        offset, length = layout.span(i)
        covered.extend(range(offset, offset + length))
    assert covered == list(range(blob_size))


@given(st.integers(1, 1 << 30), st.integers(1, 1 << 24))
def test_last_piece_length(blob_size, piece_size):
    if -(-blob_size // piece_size) > MAX_PIECES:
        return
    layout = PieceLayout(blob_size, piece_size)
    remainder = blob_size % piece_size
    assert layout.length(layout.count - 1) == (remainder or piece_size)
    assert layout.count == (blob_size + piece_size - 1) // piece_size


@given(st.integers(1, 1 << 30), st.integers(1, 1 << 24), st.data())
def test_piece_at_is_inverse_of_span(blob_size, piece_size, data):
    if -(-blob_size // piece_size) > MAX_PIECES:
        return
    layout = PieceLayout(blob_size, piece_size)
    offset = data.draw(st.integers(0, blob_size - 1))
    index = layout.piece_at(offset)
    start, length = layout.span(index)
    assert start <= offset < start + length


def test_piece_at_bounds():
    layout = PieceLayout(10, 4)
    assert [layout.piece_at(o) for o in range(10)] == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]
    for bad in (-1, 10, 11):
        with pytest.raises(LayoutError):
            layout.piece_at(bad)


def test_index_bounds():
    layout = PieceLayout(10, 4)
    assert layout.count == 3
    for bad in (-1, 3):
        for method in (layout.offset, layout.length, layout.span):
            with pytest.raises(LayoutError):
                method(bad)


def test_empty_blob_has_one_empty_piece():
    layout = PieceLayout.for_blob(0)
    assert layout.count == 1
    assert layout.span(0) == (0, 0)
    assert layout.piece_at(0) == 0
    with pytest.raises(LayoutError):
        layout.span(1)


@given(blob_sizes, blob_sizes)
def test_piece_size_monotonic(a, b):
    lo, hi = sorted((a, b))
    assert piece_size_for(lo) <= piece_size_for(hi)


@given(blob_sizes)
def test_piece_size_within_clamps_power_of_two_and_target(blob_size):
    size = piece_size_for(blob_size)
    assert MIN_PIECE_SIZE <= size <= MAX_PIECE_SIZE
    assert size & (size - 1) == 0
    count = PieceLayout.for_blob(blob_size).count
    if size < MAX_PIECE_SIZE:
        assert count <= TARGET_PIECES
    # Smallest such power of two: halving would exceed the target (unless at the lower clamp).
    if size > MIN_PIECE_SIZE:
        assert -(-blob_size // (size // 2)) > TARGET_PIECES


@pytest.mark.parametrize(
    ("blob_size", "piece_size"),
    [
        (0, MIN_PIECE_SIZE),
        (1, MIN_PIECE_SIZE),
        (TARGET_PIECES * MiB, MiB),
        (TARGET_PIECES * MiB + 1, 2 * MiB),
        (TARGET_PIECES * 8 * MiB, 8 * MiB),
        (TARGET_PIECES * 8 * MiB + 1, 16 * MiB),
        (100 << 30, MAX_PIECE_SIZE),  # clamped: more than TARGET_PIECES pieces
    ],
)
def test_piece_size_examples(blob_size, piece_size):
    assert piece_size_for(blob_size) == piece_size


def test_clamped_at_max_exceeds_target():
    layout = PieceLayout.for_blob(100 << 30)
    assert layout.piece_size == MAX_PIECE_SIZE
    assert layout.count == 6400 > TARGET_PIECES


def test_piece_size_for_custom_bounds():
    assert piece_size_for(1000, target_pieces=10, min_size=16, max_size=1024) == 128
    assert piece_size_for(10**9, target_pieces=10, min_size=16, max_size=1024) == 1024


def test_piece_size_for_negative():
    with pytest.raises(LayoutError):
        piece_size_for(-1)


@pytest.mark.parametrize(("blob_size", "piece_size"), [(-1, 4), (10, 0), (10, -4), (MAX_PIECES + 1, 1)])
def test_invalid_layouts(blob_size, piece_size):
    with pytest.raises(LayoutError):
        PieceLayout(blob_size, piece_size)


def test_max_pieces_boundary_accepted():
    assert PieceLayout(MAX_PIECES, 1).count == MAX_PIECES


def test_for_blob_explicit_piece_size():
    assert PieceLayout.for_blob(10, 3) == PieceLayout(10, 3)
    assert PieceLayout.for_blob(10) == PieceLayout(10, MIN_PIECE_SIZE)


def test_for_blob_rejects_explicit_zero_piece_size():
    with pytest.raises(LayoutError):
        PieceLayout.for_blob(10, 0)


def test_layout_error_is_value_error():
    assert issubclass(LayoutError, ValueError)


def test_one_layout_decision_the_tracker_wins() -> None:
    from p2pdist.core.layout import PieceRule, decide_layout

    size = 100 * MiB
    assert decide_layout(size).piece_size == piece_size_for(size)
    assert decide_layout(size, pinned_piece_size=4 * MiB).piece_size == 4 * MiB
    # A tracker's answer beats a node's own setting: every node of a swarm cuts the blob alike.
    assert decide_layout(size, tracker_piece_size=2 * MiB, pinned_piece_size=4 * MiB).piece_size == 2 * MiB
    rule = PieceRule(target_pieces=10, min_size=MiB, max_size=64 * MiB)
    assert decide_layout(size, rule=rule).piece_size == 16 * MiB
    assert decide_layout(size, tracker_piece_size=None, pinned_piece_size=0, rule=rule) == PieceLayout(size, 16 * MiB)
