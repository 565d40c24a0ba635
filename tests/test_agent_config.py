"""Agent configuration: defaults < TOML < environment < flags, typed and bounded, and every refusal
names the setting, the value and where it came from (file, variable or flag)."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pdist.cli.main import main
from p2pdist.config import AgentConfig, Limits, Upstream, load
from p2pdist.settings import ConfigError, replace


def test_defaults_need_no_configuration(tmp_path: Path) -> None:
    cfg = load(environ={})
    assert cfg == AgentConfig()
    assert cfg.tracker == "http://127.0.0.1:7070" and cfg.mirror.listen == "127.0.0.1:65001"
    assert cfg.limits.upload_slots == 2 and cfg.upstreams == (Upstream(registry="docker.io"),)


def test_precedence_file_then_env_then_flags_with_nested_tables(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        'zone = "z-file"\nrack = "r-file"\ncapacity = "2GiB"\n'
        '[limits]\nupload-slots = 3\nstall_timeout = 4\npiece_timeout = 9\n'
        '[mirror]\nlisten = "127.0.0.1:7001"\ntag_ttl = 60\n'
        '[[upstream]]\nregistry = "127.0.0.1:5000"\nplain_http = true\nusername = "robot"\n'
    )
    env = {"P2PDIST_RACK": "r-env", "P2PDIST_LIMITS_STALL_TIMEOUT": "5", "p2pdist_mirror_tag_ttl": "70",
           "P2PDIST_TRACKER_PEER_TTL": "1", "UNRELATED": "x"}
    cfg = load(path, environ=env, overrides={"zone": "z-flag", "mirror": {"listen": "127.0.0.1:7002"}, "rack": None})
    assert (cfg.zone, cfg.rack, cfg.capacity) == ("z-flag", "r-env", 2 << 30)
    assert (cfg.limits.upload_slots, cfg.limits.stall_timeout, cfg.limits.piece_timeout) == (3, 5.0, 9.0)
    assert (cfg.mirror.listen, cfg.mirror.tag_ttl) == ("127.0.0.1:7002", 70.0)
    assert cfg.upstreams == (Upstream(registry="127.0.0.1:5000", plain_http=True, username="robot"),)


def test_upstreams_from_env_and_flags_add_to_the_file(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[[upstream]]\nregistry = "docker.io"\nusername = "robot"\n')
    cfg = load(path, environ={"P2PDIST_UPSTREAMS": "http://127.0.0.1:5000, quay.io"},
               overrides={"upstream": ["http://127.0.0.1:6000=127.0.0.1:6001"]})
    assert [(u.registry, u.plain_http, u.endpoint) for u in cfg.upstreams] == [
        ("docker.io", False, ""), ("127.0.0.1:5000", True, ""), ("quay.io", False, ""),
        ("127.0.0.1:6000", True, "127.0.0.1:6001")]
    assert cfg.upstreams[0].username == "robot"


def test_config_file_from_env(tmp_path: Path) -> None:
    path = tmp_path / "a.toml"
    path.write_text('node_id = "n7"\n')
    assert load(environ={"P2PDIST_CONFIG": str(path)}).node_id == "n7"


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("capacity = true\n", r"capacity: expected a number, not true/false, got True \(from .*bad.toml\)"),
        ('capacity = "lots"\n', r"capacity: not a size .*got 'lots'"),
        ("capacity = -1\n", "capacity: Input should be greater than or equal to 0, got -1"),
        ("[limits]\nupload_slots = 2.7\n", "limits.upload_slots: Input should be a valid integer, got a number "
                                           "with a fractional part, got 2.7"),
        ("[limits]\nupload_slots = -1\n", "limits.upload_slots: Input should be greater than or equal to 1, got -1"),
        ("[limits]\nupload_slots = true\n", "limits.upload_slots: expected a number, not true/false"),
        ("[limits]\npiece_size = \"3MiB\"\n", "limits.piece_size: must be a power of two"),
        ("[limits]\nuplod_slots = 3\n", r"unknown setting 'limits.uplod_slots' \(from .*\); known: peer_concurrency"),
        ("trackr = \"x\"\n", "unknown setting 'trackr'"),
        ('tracker = "tracker:7070"\n', "tracker: must be a URL with a scheme"),
        ('log_level = "loud"\n', "log_level: Input should be 'debug', 'info', 'warning' or 'error', got 'loud'"),
        ('peer_listen = "65003"\n', "peer_listen: must be HOST:PORT"),
        ('peer_listen = "0.0.0.0:65003"\n', "peer_listen is not a loopback address but this node has no identity"),
        ('tls_cert = "n.pem"\ntls_ca = "ca.pem"\n', "tls_cert and tls_key go together"),
        ('tls_cert = "n.pem"\ntls_key = "n-key.pem"\n', "tls_cert needs tls_ca"),
        ('[[upstream]]\nusername = "x"\n', r"upstreams.0.registry: Field required"),
        ("limits = 3\n", "limits: Input should be a valid dictionary or instance of Limits"),
        ("not toml [", "is not valid TOML"),
        ('peer_listen = "0.0.0.0:65003"\ncluster_token = "s"\ncapacity = "50GiB"\n', None),
        ('peer_listen = "0.0.0.0:65003"\nnode_credential = "/etc/p2pdist/n.credential"\ncapacity = "50GiB"\n', None),
    ],
)
def test_bad_settings_are_refused_with_the_setting_named(tmp_path: Path, toml: str, message: str | None) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    if message is None:  # the control: good values in the same places load
        assert load(path, environ={}).capacity == 50 << 30
        return
    with pytest.raises(ConfigError, match=message):
        load(path, environ={})


def test_the_source_of_a_bad_value_is_named() -> None:
    with pytest.raises(ConfigError, match=r"got '2.7' \(from P2PDIST_LIMITS_UPLOAD_SLOTS\)"):
        load(environ={"P2PDIST_LIMITS_UPLOAD_SLOTS": "2.7"})
    with pytest.raises(ConfigError, match=r"unknown setting 'limits.bogus' \(from P2PDIST_LIMITS_BOGUS\)"):
        load(environ={"P2PDIST_LIMITS_BOGUS": "1"})
    with pytest.raises(ConfigError, match=r"mirror.listen: must be HOST:PORT.*\(from --mirror-listen\)"):
        load(environ={}, overrides={"mirror": {"listen": "nowhere"}})


def test_settings_built_in_code_are_checked_too() -> None:
    with pytest.raises(ValueError, match="upload_slots"):
        Limits(upload_slots=0)
    with pytest.raises(ConfigError, match=r"limits\.inflight_bytes: Input should be greater than or equal to 1"):
        replace(AgentConfig(), limits={"inflight_bytes": 0})
    assert replace(Limits(), upload_slots=5).upload_slots == 5


def test_daemon_reports_config_errors_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("P2PDIST_CONFIG", raising=False)
    assert main(["daemon", "--config", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"config file {tmp_path} is a directory" in err and "Traceback" not in err
    assert main(["daemon", "--data-dir", str(tmp_path), "--capacity", "true"]) == 2
    assert "capacity: not a size" in capsys.readouterr().err
