"""Tracker configuration: defaults < TOML < environment < flags, and refusals with usable messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from tracker.cli import build_parser, main
from tracker.config import ConfigError, TrackerConfig, check_exposure, load, parse_listen


def test_defaults_need_no_configuration() -> None:
    config = load(env={})
    assert config == TrackerConfig()
    assert (config.host, config.port, config.peer_ttl, config.lease_ttl) == ("127.0.0.1", 7070, 30.0, 10.0)
    check_exposure(config)  # loopback without a token is fine


def test_precedence_file_then_env_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "tracker.toml"
    path.write_text('[tracker]\nlisten = "127.0.0.2:9000"\npeer_ttl = 40\nlease_ttl = 20\nlease_pieces = 4\n')
    env = {"P2PDIST_TRACKER_LEASE_TTL": "15", "P2PDIST_TRACKER_LEASE_PIECES": "6", "UNRELATED": "x"}
    config = load(path, env=env, flags={"lease_pieces": 12, "peer_ttl": None})
    assert (config.host, config.port) == ("127.0.0.2", 9000)
    assert config.peer_ttl == 40.0  # file
    assert config.lease_ttl == 15.0  # env beats file
    assert config.lease_pieces == 12  # flag beats env


def test_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text("handout_size = 4\n")
    assert load(env={"P2PDIST_TRACKER_CONFIG": str(path)}).handout_size == 4


def test_env_values_are_parsed_by_type() -> None:
    config = load(env={"P2PDIST_TRACKER_INSECURE": "yes", "P2PDIST_TRACKER_CLUSTER_TOKEN": "t0k",
                       "P2PDIST_TRACKER_LISTEN": "[::1]:7171"})
    assert config.insecure and config.cluster_token == "t0k" and (config.host, config.port) == ("::1", 7171)
    with pytest.raises(ConfigError, match=r"lease_pieces: Input should be a valid integer.*got 'many' "
                                          r"\(from P2PDIST_TRACKER_LEASE_PIECES\)"):
        load(env={"P2PDIST_TRACKER_LEASE_PIECES": "many"})


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("peer_tll = 3\n", r"unknown setting 'peer_tll' \(from .*bad.toml\); known: host, port, "),
        ("lease_ttl = 0\n", "lease_ttl: Input should be greater than 0, got 0 "),
        ('handout_policy = "best"\n', "handout_policy 'best' is unknown; choose one of locality, kraken"),
        ('lease_ttl = "soon"\n', r"lease_ttl: Input should be a valid number.*got 'soon' \(from .*bad.toml\)"),
        ("leases_per_node = 100\n", "leases_per_node: Input should be less than or equal to 64, got 100"),
        ("upload_slots = 2.7\n", "unknown setting 'upload_slots'"),
        ("lease_pieces = 2.5\n", "lease_pieces: Input should be a valid integer, got a number with a fractional"),
        ("lease_pieces = true\n", "lease_pieces: expected a number, not true/false, got True"),
        ("peer_ttl = 60\nblob_ttl = 30\n", "blob_ttl must be >= peer_ttl"),
        ('log_level = "loud"\n', "log_level: Input should be 'debug', 'info', 'warning' or 'error', got 'loud'"),
        ('max_blob_size = "1TiB"\n', None),
        ("not toml [", "is not valid TOML"),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    if message is None:  # the control: a good value in the same position loads
        assert load(path, env={}).max_blob_size == 1 << 40
        return
    with pytest.raises(ConfigError, match=message):
        load(path, env={})


def test_flags_are_named_in_errors() -> None:
    with pytest.raises(ConfigError, match=r"peer_ttl: Input should be greater than 0, got -1.0 \(from --peer-ttl\)"):
        load(env={}, flags={"peer_ttl": -1.0})


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ValueError, match="leases_per_node"):
        TrackerConfig(leases_per_node=0)
    with pytest.raises(ValueError, match="frozen"):
        TrackerConfig().port = 1  # type: ignore[misc]


def test_missing_config_file() -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file /nonexistent\.toml"):
        load("/nonexistent.toml", env={})
    with pytest.raises(ConfigError, match=r"config file /tmp is a directory"):
        load("/tmp", env={})


@pytest.mark.parametrize("text", ["7070", "host:", ":7070", "h:99999", "h:port"])
def test_bad_listen_addresses(text: str) -> None:
    with pytest.raises(ConfigError, match="must be HOST:PORT"):
        parse_listen(text)


def test_unauthenticated_tracker_refuses_non_loopback() -> None:
    for host in ("0.0.0.0", "10.1.2.3", "tracker.internal"):
        with pytest.raises(ConfigError, match="without a cluster token"):
            check_exposure(TrackerConfig(host=host))
        check_exposure(TrackerConfig(host=host, cluster_token="s"))
        check_exposure(TrackerConfig(host=host, insecure=True))
    for host in ("127.0.0.1", "::1", "localhost"):
        check_exposure(TrackerConfig(host=host))


def test_cli_refuses_exposure_with_a_clear_error(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2PDIST_TRACKER_CLUSTER_TOKEN", raising=False)
    assert main(["--listen", "0.0.0.0:7070"]) == 2
    assert "refusing to listen on 0.0.0.0:7070 without a cluster token" in capsys.readouterr().err


def test_help_teaches() -> None:
    text = build_parser().format_help()
    for needle in ("examples:", "P2PDIST_TRACKER_PEER_TTL", "--listen HOST:PORT", "/v1/announce", "--insecure",
                   "--tls-cert", "p2pdist certs"):
        assert needle in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("p2pdist-tracker ")


@pytest.mark.parametrize("flags", [["--tls-cert", "x.pem"], ["--tls-key", "x-key.pem"]])
def test_tls_cert_and_key_go_together(capsys: pytest.CaptureFixture[str], flags: list[str]) -> None:
    assert main(["--listen", "127.0.0.1:0", *flags]) == 2
    assert "tls_cert and tls_key go together" in capsys.readouterr().err


def test_an_unreadable_tls_certificate_is_a_clear_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--listen", "127.0.0.1:0", "--tls-cert", str(tmp_path / "no.pem"),
                 "--tls-key", str(tmp_path / "no-key.pem")]) == 2
    assert "cannot load the TLS certificate" in capsys.readouterr().err


def test_origin_slow_start_is_on_by_default_and_can_be_turned_off() -> None:
    assert TrackerConfig().origin_slow_start
    assert build_parser().parse_args([]).origin_slow_start is None  # unset: the file, env or default decides
    flag = build_parser().parse_args(["--no-origin-slow-start"]).origin_slow_start
    assert load(env={}, flags={"origin_slow_start": flag}).origin_slow_start is False
    assert load(env={"P2PDIST_TRACKER_ORIGIN_SLOW_START": "false"}).origin_slow_start is False
