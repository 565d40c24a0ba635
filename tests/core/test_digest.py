import hashlib
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdist.core.digest import Digest, DigestError, DigestMismatch, Verifier

HEX = "0123456789abcdef"
SHA256 = "sha256:" + "a1" * 32
SHA512 = "sha512:" + "0f" * 64


def test_parse_sha256():
    d = Digest.parse(SHA256)
    assert (d.algorithm, d.encoded) == ("sha256", "a1" * 32)
    assert str(d) == SHA256


def test_parse_sha512():
    d = Digest.parse(SHA512)
    assert (d.algorithm, d.encoded) == ("sha512", "0f" * 64)
    assert str(d) == SHA512


@given(st.sampled_from([("sha256", 64), ("sha512", 128)]), st.data())
def test_parse_round_trips_any_valid_digest(alg_len, data):
    algorithm, length = alg_len
    encoded = data.draw(st.text(alphabet=HEX, min_size=length, max_size=length))
    text = f"{algorithm}:{encoded}"
    assert str(Digest.parse(text)) == text
    assert Digest.parse(text) == Digest(algorithm, encoded)


@pytest.mark.parametrize(
    "text",
    [
        "sha256:" + "A" * 64,  # upper case hex
        "SHA256:" + "a" * 64,  # upper case algorithm
        "sha256:" + "a" * 63,  # too short
        "sha256:" + "a" * 65,  # too long
        "sha256:" + "a" * 128,  # sha512 length under sha256
        "sha512:" + "a" * 64,  # sha256 length under sha512
        "sha512:" + "a" * 127,
        "md5:" + "a" * 32,  # unknown algorithm
        "sha1:" + "a" * 40,
        "sha384:" + "a" * 96,
        "sha256+b64u:" + "a" * 64,  # grammar-valid but unregistered
        "sha256:" + "g" * 64,  # not hex
        "sha256:" + "a" * 63 + "\n",  # trailing newline must not sneak past the regex
        "sha256:" + "a" * 62 + " a",
        "sha256:../../etc/passwd",
        "sha256:../../" + "a" * 58,
        "sha256:" + "a" * 32 + "/" + "a" * 31,
        "../x",
        "../../sha256:" + "a" * 64,
        "/sha256:" + "a" * 64,
        "sha256",  # no separator
        "sha256:",  # empty encoded
        ":" + "a" * 64,  # empty algorithm
        "",
        " sha256:" + "a" * 64,
        "sha256:" + "a" * 64 + ":",
        "sha256:" + "٣" * 64,  # non-ASCII digits
    ],
)
def test_parse_rejects(text):
    with pytest.raises(DigestError):
        Digest.parse(text)


@pytest.mark.parametrize("value", [None, 123, b"sha256:" + b"a" * 64, ["sha256", "a" * 64]])
def test_parse_rejects_non_strings(value):
    with pytest.raises(DigestError, match="must be a string"):
        Digest.parse(value)


def test_digest_error_is_value_error_with_actionable_message():
    with pytest.raises(ValueError, match="unsupported algorithm"):
        Digest.parse("md5:" + "a" * 32)
    with pytest.raises(ValueError, match="64 lowercase hex"):
        Digest.parse("sha256:" + "A" * 64)


@given(st.binary(max_size=2048), st.sampled_from(["sha256", "sha512"]))
def test_of_matches_hashlib_and_parses(data, algorithm):
    d = Digest.of(data, algorithm)
    assert d.encoded == hashlib.new(algorithm, data).hexdigest()
    assert Digest.parse(str(d)) == d


def test_of_defaults_to_sha256():
    assert str(Digest.of(b"")) == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_digest_is_hashable_and_compares_by_value():
    a = Digest.parse(SHA256)
    b = Digest.parse(SHA256)
    assert a == b and hash(a) == hash(b)
    assert a != Digest.parse("sha256:" + "b" * 64)
    assert len({a, b}) == 1


@settings(max_examples=60)
@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=8), st.sampled_from(["sha256", "sha512"]))
def test_verifier_streaming_equals_one_shot(data, cuts, algorithm):
    expected = Digest.of(data, algorithm)
    v = Verifier(expected)
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for a, b in itertools.pairwise(points):
        chunk = data[a:b]
        v.update(memoryview(chunk) if a % 2 else chunk)
    assert v.size == len(data)
    assert v.actual() == expected
    assert v.verified()
    v.check()  # no exception


def test_verifier_mismatch_raises_with_both_digests():
    expected = Digest.of(b"hello")
    v = Verifier(expected)
    v.update(b"hell")
    v.update(b"0")
    assert not v.verified()
    with pytest.raises(DigestMismatch) as info:
        v.check()
    assert info.value.expected == str(expected)
    assert info.value.actual == str(Digest.of(b"hell0"))
    assert str(expected) in str(info.value)


def test_verifier_truncated_content_mismatches():
    expected = Digest.of(b"abcdef")
    v = Verifier(expected)
    v.update(b"abcde")
    assert v.size == 5
    with pytest.raises(DigestMismatch):
        v.check()


def test_verifier_uses_expected_algorithm():
    expected = Digest.of(b"x", "sha512")
    v = Verifier(expected)
    v.update(b"x")
    assert v.actual().algorithm == "sha512"
    assert len(v.actual().encoded) == 128
    v.check()


@given(st.binary(min_size=1, max_size=256), st.integers(0, 255), st.integers(1, 255))
def test_verifier_detects_any_single_byte_change(data, pos, flip):
    pos %= len(data)
    corrupted = bytearray(data)
    corrupted[pos] ^= flip
    v = Verifier(Digest.of(data))
    v.update(bytes(corrupted))
    assert not v.verified()
    with pytest.raises(DigestMismatch):
        v.check()
