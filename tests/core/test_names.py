import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pdist.core.names import MAX_NAME, InvalidName, check_registry, check_repository, check_tag


@pytest.mark.parametrize(
    "name",
    [
        "library/ubuntu",
        "ubuntu",
        "a",
        "0",
        "my-org/my_repo",
        "a__b",
        "a---b",
        "a.b.c/d-e/f_g",
        "gcr.io/distroless/static",
        "x" * MAX_NAME,
    ],
)
def test_valid_repositories(name):
    assert check_repository(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "../x",
        "a/../b",
        "a/./b",
        "..",
        ".",
        "/abs",
        "abs/",
        "a//b",
        "A",
        "Library/ubuntu",
        "a b",
        "a\\b",
        "a/..",
        "a..b",
        "a___b",  # only one or two underscores
        "-a",
        "a-",
        "_a",
        "a.",
        "a:tag",
        "a@sha256",
        "a\n",
        "x" * (MAX_NAME + 1),
        "%2e%2e/x",
    ],
)
def test_invalid_repositories(name):
    with pytest.raises(InvalidName):
        check_repository(name)


@pytest.mark.parametrize("value", [None, 1, b"ubuntu", ["ubuntu"]])
def test_repository_non_string(value):
    with pytest.raises(InvalidName):
        check_repository(value)


_component = st.from_regex(r"\A[a-z0-9]{1,5}(?:(?:\.|_|__|-{1,3})[a-z0-9]{1,5}){0,2}\Z")


@given(st.lists(_component, min_size=1, max_size=5))
def test_generated_repositories_accepted(parts):
    name = "/".join(parts)
    assert check_repository(name) == name


@given(st.lists(_component, min_size=1, max_size=4), st.integers(0, 4), st.sampled_from(["..", ".", ""]))
def test_traversal_segments_always_rejected(parts, pos, bad):
    parts.insert(min(pos, len(parts)), bad)
    with pytest.raises(InvalidName):
        check_repository("/".join(parts))


@pytest.mark.parametrize("tag", ["latest", "v1.2.3", "_x", "A", "1", "a" * 128, "Release_2024-01.rc-1"])
def test_valid_tags(tag):
    assert check_tag(tag) == tag


@pytest.mark.parametrize(
    "tag", ["", ".hidden", "-x", "a" * 129, "a/b", "../x", "a:b", "a@b", "a b", "tag\n", None, 3]
)
def test_invalid_tags(tag):
    with pytest.raises(InvalidName):
        check_tag(tag)


@pytest.mark.parametrize(
    "host",
    [
        "registry-1.docker.io",
        "localhost",
        "localhost:5000",
        "ghcr.io",
        "10.0.0.1:443",
        "a",
        "A-b.Example.COM",
        "[::1]",
        "[::1]:5000",
        "[fe80::1:2]:65535",
    ],
)
def test_valid_registries(host):
    assert check_registry(host) == host


@pytest.mark.parametrize(
    "host",
    [
        "",
        "../x",
        "a/b",
        "host/path",
        "-a",
        "a-",
        ".a",
        "a.",
        "a..b",
        "a.-b",
        "a-.b",
        "host:",
        "host:abc",
        "host:123456",
        "user@host",
        "http://host",
        "host name",
        "[::1",
        "[::g]",
        "[]",
        "a" * 256,
        None,
        5000,
    ],
)
def test_invalid_registries(host):
    with pytest.raises(InvalidName):
        check_registry(host)


def test_invalid_name_is_value_error():
    assert issubclass(InvalidName, ValueError)
