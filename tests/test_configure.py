"""`p2pdist configure containerd|docker|podman`: fresh writes, merges, idempotence, backups, refusals.

Every produced file is read back with the real parser (tomllib, json); registries.conf also with
podman itself when it is installed (`podman info` loads it with containers/image's own code).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest

from p2pdist.cli import configure
from p2pdist.cli.configure_common import (
    Mirror,
    UsageError,
    parse_mirror,
    parse_registries,
    parse_registry,
)

MIRROR = "http://127.0.0.1:65001"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run `p2pdist configure ARGV` through the same hooks cli.py uses."""
    parser = argparse.ArgumentParser(prog="p2pdist")
    configure.add_parser(parser.add_subparsers(dest="command", required=True))
    rc = configure.run(parser.parse_args(["configure", *argv]))
    out, err = capsys.readouterr()
    return rc, out, err


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root with its bytes: equal snapshots mean nothing was touched."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def backups(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".bak*"))


# --- containerd ---------------------------------------------------------------------------------


def check_hosts_toml(path: Path, *, server: str | None) -> dict:
    """Parse like containerd: server and every host need a scheme; the p2pdist mirror is the first host."""
    doc = tomllib.loads(path.read_text())
    assert doc.get("server") == server
    hosts = doc["host"]
    assert next(iter(hosts)) == MIRROR
    assert hosts[MIRROR]["capabilities"] == ["pull", "resolve"]
    for url, host in hosts.items():
        assert url.split("://")[0] in ("http", "https"), url  # without a scheme containerd speaks TLS
        assert set(host.get("capabilities", [])) <= {"pull", "resolve", "push"}
    return doc


def containerd(capsys, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "containerd", "--config-path", str(tmp_path / "certs.d"),
               "--containerd-config", str(tmp_path / "config.toml"), *argv)


def test_containerd_fresh_write(capsys, tmp_path):
    rc, out, err = containerd(capsys, tmp_path)
    assert rc == 0, err
    root = tmp_path / "certs.d"
    check_hosts_toml(root / "docker.io/hosts.toml", server="https://registry-1.docker.io")
    check_hosts_toml(root / "_default/hosts.toml", server=None)  # containerd derives the server itself
    assert f"created {root / 'docker.io/hosts.toml'}" in out
    assert "config_path" in out and "ctr images pull --hosts-dir" in out


def test_containerd_several_registries_and_mirror(capsys, tmp_path):
    rc, _, err = containerd(capsys, tmp_path, "--mirror", "127.0.0.1:7001", "--registry", "quay.io",
                            "--registry", "http://127.0.0.1:5000", "--no-default-host")
    assert rc == 0, err
    root = tmp_path / "certs.d"
    assert sorted(p.name for p in root.iterdir()) == ["127.0.0.1:5000", "quay.io"]
    quay = tomllib.loads((root / "quay.io/hosts.toml").read_text())
    assert quay["server"] == "https://quay.io"
    assert quay["host"] == {"http://127.0.0.1:7001": {"capabilities": ["pull", "resolve"]}}
    local = tomllib.loads((root / "127.0.0.1:5000/hosts.toml").read_text())
    assert local["server"] == "http://127.0.0.1:5000"


EXISTING_HOSTS = """\
# corporate settings, keep me
server = "https://registry-1.docker.io"
capabilities = ["pull", "resolve", "push"]

[host."https://mirror.corp.example"]
  capabilities = ["pull"]
  skip_verify = true

[host."http://127.0.0.1:65001/"]
  capabilities = ["pull"]
  dial_timeout = "2s"
"""


def test_containerd_merge_keeps_other_hosts_and_puts_mirror_first(capsys, tmp_path):
    path = tmp_path / "certs.d/docker.io/hosts.toml"
    path.parent.mkdir(parents=True)
    path.write_text(EXISTING_HOSTS)
    rc, out, err = containerd(capsys, tmp_path)
    assert rc == 0, err
    doc = check_hosts_toml(path, server="https://registry-1.docker.io")
    assert doc["capabilities"] == ["pull", "resolve", "push"]  # the server's own settings stay
    assert list(doc["host"]) == [MIRROR, "https://mirror.corp.example"]  # old spelling of ours merged, not kept twice
    assert doc["host"][MIRROR]["dial_timeout"] == "2s"  # the user's tuning of the mirror entry stays
    assert doc["host"]["https://mirror.corp.example"] == {"capabilities": ["pull"], "skip_verify": True}
    assert path.read_text().startswith("# corporate settings, keep me\n")
    assert [b.read_text() for b in backups(path)] == [EXISTING_HOSTS]
    assert f"(backup: {path}.bak)" in out


def test_containerd_is_idempotent(capsys, tmp_path):
    path = tmp_path / "certs.d/docker.io/hosts.toml"
    path.parent.mkdir(parents=True)
    path.write_text(EXISTING_HOSTS)
    assert containerd(capsys, tmp_path)[0] == 0
    first = snapshot(tmp_path)
    rc, out, _ = containerd(capsys, tmp_path)
    assert rc == 0
    assert snapshot(tmp_path) == first  # no rewrite, no second backup
    assert out.count("unchanged ") == 2 and "backup" not in out


def test_containerd_dry_run_writes_nothing(capsys, tmp_path):
    path = tmp_path / "certs.d/docker.io/hosts.toml"
    path.parent.mkdir(parents=True)
    path.write_text(EXISTING_HOSTS)
    before = snapshot(tmp_path)
    rc, out, _ = containerd(capsys, tmp_path, "--dry-run")
    assert rc == 0
    assert snapshot(tmp_path) == before
    assert f"==> {path} (would update, keeping a backup) <==" in out
    assert f"==> {tmp_path / 'certs.d/_default/hosts.toml'} (would create) <==" in out
    assert f'[host."{MIRROR}"]' in out


def test_containerd_refuses_invalid_existing_file(capsys, tmp_path):
    path = tmp_path / "certs.d/docker.io/hosts.toml"
    path.parent.mkdir(parents=True)
    path.write_text('server = "https://registry-1.docker.io"\n[host."http://x"\n')
    before = snapshot(tmp_path)
    rc, _, err = containerd(capsys, tmp_path)
    assert rc == 1
    assert f"{path} is not valid TOML" in err and "nothing was changed" in err
    assert snapshot(tmp_path) == before  # not even _default/hosts.toml was written


def test_containerd_merge_with_host_tables_out_of_order(capsys, tmp_path):
    path = tmp_path / "certs.d/docker.io/hosts.toml"
    path.parent.mkdir(parents=True)
    path.write_text('[host."https://a"]\ncapabilities = ["pull"]\n[other]\nx = 1\n'
                    '[host."https://b"]\nskip_verify = true\n')
    assert containerd(capsys, tmp_path)[0] == 0
    doc = check_hosts_toml(path, server="https://registry-1.docker.io")
    assert list(doc["host"]) == [MIRROR, "https://a", "https://b"] and doc["other"] == {"x": 1}


@pytest.mark.parametrize(("config", "expected"), [
    (None, "does not exist"),
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\n', "does not set it"),
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "{root}"\n', "sets config_path"),
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "/elsewhere"\n',
     "--config-path /elsewhere"),
    ('version = 3\n', '[plugins."io.containerd.cri.v1.images".registry]'),
    ('version = 2\n[plugins."io.containerd.grpc.v1.cri".registry]\nconfig_path = "{root}"\n'
     '[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\nendpoint = ["https://x"]\n',
     "remove the mirrors section"),
])
def test_containerd_config_path_hint(capsys, tmp_path, config, expected):
    if config is not None:
        (tmp_path / "config.toml").write_text(config.replace("{root}", str(tmp_path / "certs.d")))
    rc, out, _ = containerd(capsys, tmp_path, "--dry-run")
    assert rc == 0
    assert expected in out


# --- docker -------------------------------------------------------------------------------------


def docker(capsys, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "docker", "--daemon-json", str(tmp_path / "daemon.json"), *argv)


def test_docker_fresh_write(capsys, tmp_path):
    rc, out, err = docker(capsys, tmp_path)
    assert rc == 0, err
    assert json.loads((tmp_path / "daemon.json").read_text()) == {"registry-mirrors": [MIRROR]}
    assert "docker.io images only" in out and "restart" in out
    assert backups(tmp_path / "daemon.json") == []  # nothing to back up


EXISTING_DAEMON = {"log-driver": "json-file", "registry-mirrors": ["https://mirror.gcr.io", f"{MIRROR}/"],
                   "insecure-registries": ["10.0.0.0/8"], "features": {"buildkit": True}}


def test_docker_merge_keeps_keys_and_puts_mirror_first(capsys, tmp_path):
    path = tmp_path / "daemon.json"
    original = json.dumps(EXISTING_DAEMON, indent=4)
    path.write_text(original)
    path.chmod(0o600)
    rc, _, err = docker(capsys, tmp_path)
    assert rc == 0, err
    config = json.loads(path.read_text())
    # dockerd's own trailing-slash spelling of our mirror is the same mirror: not listed twice.
    assert config == {**EXISTING_DAEMON, "registry-mirrors": [MIRROR, "https://mirror.gcr.io"]}
    assert list(config) == list(EXISTING_DAEMON)  # key order kept
    assert path.stat().st_mode & 0o777 == 0o600  # permissions kept by the atomic replace
    assert [b.read_text() for b in backups(path)] == [original]
    assert list(tmp_path.glob(".daemon.json.*")) == []  # no temp file left behind


def test_docker_is_idempotent(capsys, tmp_path):
    (tmp_path / "daemon.json").write_text(json.dumps(EXISTING_DAEMON))
    assert docker(capsys, tmp_path)[0] == 0
    first = snapshot(tmp_path)
    rc, out, _ = docker(capsys, tmp_path)
    assert rc == 0 and f"unchanged {tmp_path / 'daemon.json'}" in out
    assert snapshot(tmp_path) == first


def test_docker_later_change_keeps_first_backup(capsys, tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text('{"debug": true}')
    assert docker(capsys, tmp_path)[0] == 0
    assert docker(capsys, tmp_path, "--mirror", "127.0.0.1:7001")[0] == 0
    found = backups(path)
    assert len(found) == 2 and found[0].name == "daemon.json.bak"
    assert found[0].read_text() == '{"debug": true}'  # the pristine original is never overwritten
    assert json.loads(path.read_text())["registry-mirrors"] == ["http://127.0.0.1:7001", MIRROR]


def test_docker_dry_run_writes_nothing(capsys, tmp_path):
    rc, out, _ = docker(capsys, tmp_path, "--dry-run")
    assert rc == 0
    assert snapshot(tmp_path) == {}
    assert f"==> {tmp_path / 'daemon.json'} (would create) <==" in out
    body = out.split("<==\n", 1)[1].split("\n\n", 1)[0]
    assert json.loads(body) == {"registry-mirrors": [MIRROR]}


@pytest.mark.parametrize(("content", "message"), [
    ('{"debug": true,}', "is not valid JSON"),
    ('["http://x"]', "must hold a JSON object"),
    ('{"registry-mirrors": "http://x"}', "must be a list of URLs"),
])
def test_docker_refuses_unusable_daemon_json(capsys, tmp_path, content, message):
    (tmp_path / "daemon.json").write_text(content)
    before = snapshot(tmp_path)
    rc, _, err = docker(capsys, tmp_path)
    assert rc == 1
    assert message in err and "nothing was changed" in err
    assert snapshot(tmp_path) == before


def test_docker_empty_daemon_json_is_no_settings(capsys, tmp_path):
    (tmp_path / "daemon.json").write_text("\n")
    assert docker(capsys, tmp_path)[0] == 0
    assert json.loads((tmp_path / "daemon.json").read_text()) == {"registry-mirrors": [MIRROR]}


def test_docker_writes_through_symlink(capsys, tmp_path):
    real = tmp_path / "managed" / "daemon.json"
    real.parent.mkdir()
    real.write_text("{}")
    (tmp_path / "daemon.json").symlink_to(real)
    assert docker(capsys, tmp_path)[0] == 0
    assert (tmp_path / "daemon.json").is_symlink()
    assert json.loads(real.read_text()) == {"registry-mirrors": [MIRROR]}


def test_docker_warns_about_other_registries(capsys, tmp_path):
    rc, out, _ = docker(capsys, tmp_path, "--registry", "quay.io")
    assert rc == 0
    assert "pulls from quay.io go straight to the registry" in out


# --- podman / registries.conf -------------------------------------------------------------------


def podman_registries(path: Path) -> dict:
    """registries.conf as containers/image itself loads it (via podman info)."""
    if shutil.which("podman") is None:  # scripts/setup.sh installs it: a missing podman is a broken setup
        raise AssertionError("podman is not installed: run scripts/setup.sh")
    state = Path(tempfile.mkdtemp(prefix="p2p-podman-"))  # podman refuses a --runroot over 50 characters
    cmd = ["podman", "--root", str(state / "root"), "--runroot", str(state / "run"), "--storage-driver", "vfs",
           "--cgroup-manager", "cgroupfs", "--events-backend", "file", "info", "--format", "{{json .Registries}}"]
    done = subprocess.run(cmd, env={**os.environ, "CONTAINERS_REGISTRIES_CONF": str(path)},
                          capture_output=True, text=True, timeout=60, check=False)
    shutil.rmtree(state, ignore_errors=True)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def registry_entry(doc: dict, prefix: str) -> dict:
    [entry] = [e for e in doc["registry"] if e.get("prefix", e.get("location")) == prefix]
    return entry


def podman(capsys, tmp_path: Path, *argv: str) -> tuple[int, str, str]:
    return run(capsys, "podman", "--registries-conf", str(tmp_path / "registries.conf"), *argv)


def test_podman_fresh_write(capsys, tmp_path):
    rc, out, err = podman(capsys, tmp_path, "--registry", "docker.io", "--registry", "http://127.0.0.1:5000")
    assert rc == 0, err
    path = tmp_path / "registries.conf"
    doc = tomllib.loads(path.read_text())
    assert registry_entry(doc, "docker.io") == {
        "prefix": "docker.io", "location": "docker.io",
        "mirror": [{"location": "127.0.0.1:65001/docker.io", "insecure": True}]}
    assert registry_entry(doc, "127.0.0.1:5000")["insecure"] is True  # the registry itself is plain http
    # The registry is the mirror location's path prefix: the mirror routes by it (':' is not allowed there).
    assert registry_entry(doc, "127.0.0.1:5000")["mirror"][0]["location"] == "127.0.0.1:65001/127.0.0.1-5000"
    assert "--upstream http://127.0.0.1:5000" in out
    assert "podman login 127.0.0.1:65001" in out  # how private images reach the mirror with credentials
    real = podman_registries(path)
    assert [(m["Location"], m["Insecure"]) for m in real["docker.io"]["Mirrors"]] == [
        ("127.0.0.1:65001/docker.io", True)]
    assert real["127.0.0.1:5000"]["Insecure"] is True


EXISTING_REGISTRIES = """\
# site policy: keep this comment
unqualified-search-registries = ["docker.io", "quay.io"]

[[registry]]
prefix = "quay.io"
location = "quay.io"
[[registry.mirror]]
location = "quay-mirror.corp.example"

[[registry]]
location = "docker.io"  # prefix defaults to location
blocked = false
[[registry.mirror]]
location = "hub-mirror.corp.example"
[[registry.mirror]]
location = "127.0.0.1:65001"
"""


def test_podman_merge_updates_existing_entry_and_keeps_others(capsys, tmp_path):
    path = tmp_path / "registries.conf"
    path.write_text(EXISTING_REGISTRIES)
    rc, _, err = podman(capsys, tmp_path, "--registry", "docker.io", "--registry", "ghcr.io", "--mirror-by-digest-only")
    assert rc == 0, err
    text = path.read_text()
    doc = tomllib.loads(text)
    assert doc["unqualified-search-registries"] == ["docker.io", "quay.io"]
    assert registry_entry(doc, "quay.io") == tomllib.loads(EXISTING_REGISTRIES)["registry"][0]
    hub = registry_entry(doc, "docker.io")
    assert "prefix" not in hub and hub["blocked"] is False  # updated in place, not duplicated
    # The bare location an older p2pdist wrote is ours too: given its prefix, not kept twice.
    assert hub["mirror"] == [{"location": "127.0.0.1:65001/docker.io", "insecure": True},
                             {"location": "hub-mirror.corp.example"}]
    assert hub["mirror-by-digest-only"] is True
    assert registry_entry(doc, "ghcr.io")["mirror"][0]["location"] == "127.0.0.1:65001/ghcr.io"
    assert text.startswith("# site policy: keep this comment\n")
    assert [b.read_text() for b in backups(path)] == [EXISTING_REGISTRIES]
    real = podman_registries(path)
    assert [m["Location"] for m in real["docker.io"]["Mirrors"]] == ["127.0.0.1:65001/docker.io",
                                                                     "hub-mirror.corp.example"]
    assert real["docker.io"]["MirrorByDigestOnly"] is True and "quay.io" in real


def test_podman_is_idempotent(capsys, tmp_path):
    (tmp_path / "registries.conf").write_text(EXISTING_REGISTRIES)
    argv = ("--registry", "docker.io", "--registry", "quay.io")
    assert podman(capsys, tmp_path, *argv)[0] == 0
    first = snapshot(tmp_path)
    rc, out, _ = podman(capsys, tmp_path, *argv)
    assert rc == 0 and "unchanged" in out
    assert snapshot(tmp_path) == first


def test_podman_dry_run_writes_nothing(capsys, tmp_path):
    (tmp_path / "registries.conf").write_text(EXISTING_REGISTRIES)
    before = snapshot(tmp_path)
    rc, out, _ = podman(capsys, tmp_path, "--dry-run")
    assert rc == 0
    assert snapshot(tmp_path) == before
    assert f"==> {tmp_path / 'registries.conf'} (would update, keeping a backup) <==" in out


def test_podman_merge_inline_mirror_list(capsys, tmp_path):
    path = tmp_path / "registries.conf"
    path.write_text('[[registry]]\nlocation = "docker.io"\nmirror = [{location = "hub", insecure = false}, '
                    '{location = "127.0.0.1:65001"}]\n[[registry]]\nlocation = "quay.io"\n')
    assert podman(capsys, tmp_path)[0] == 0
    doc = tomllib.loads(path.read_text())
    assert registry_entry(doc, "docker.io")["mirror"] == [{"location": "127.0.0.1:65001/docker.io", "insecure": True},
                                                           {"location": "hub", "insecure": False}]
    assert registry_entry(doc, "quay.io") == {"location": "quay.io"}
    first = snapshot(tmp_path)
    assert podman(capsys, tmp_path)[0] == 0
    assert snapshot(tmp_path) == first


@pytest.mark.parametrize(("content", "message"), [
    ('[[registry]]\nlocation = "docker.io"\nlocation = "x"\n', "is not valid TOML"),
    ('[registries.search]\nregistries = ["docker.io"]\n', "old v1 format"),
    ('registry = "docker.io"\n', "must be [[registry]] tables"),
])
def test_podman_refuses_unusable_file(capsys, tmp_path, content, message):
    (tmp_path / "registries.conf").write_text(content)
    before = snapshot(tmp_path)
    rc, _, err = podman(capsys, tmp_path)
    assert rc == 1
    assert message in err and "nothing was changed" in err
    assert snapshot(tmp_path) == before


def test_podman_warns_about_more_specific_prefix(capsys, tmp_path):
    (tmp_path / "registries.conf").write_text('[[registry]]\nprefix = "docker.io/library"\nlocation = "x.example"\n')
    rc, out, _ = podman(capsys, tmp_path)
    assert rc == 0
    assert 'prefix = "docker.io/library" is more specific than docker.io' in out


# --- arguments common to all runtimes -----------------------------------------------------------


@pytest.mark.parametrize("runtime", ["containerd", "docker", "podman"])
@pytest.mark.parametrize(("registry", "message"), [
    ("docker.io/library/ubuntu", "give the registry host only (e.g. --registry docker.io)"),
    ("bad_host!", "invalid registry host"),
    ("-quay.io", "invalid registry host"),
    ("http://docker.io", "Docker Hub is https only"),
])
def test_invalid_registry_is_refused(capsys, tmp_path, runtime, registry, message):
    argv = {"containerd": ["--config-path", str(tmp_path / "certs.d"), "--containerd-config", str(tmp_path / "c")],
            "docker": ["--daemon-json", str(tmp_path / "daemon.json")],
            "podman": ["--registries-conf", str(tmp_path / "registries.conf")]}[runtime]
    rc, _, err = run(capsys, runtime, *argv, f"--registry={registry}")
    assert rc == 2
    assert message in err and f"--registry {registry!r}" in err
    assert snapshot(tmp_path) == {}


@pytest.mark.parametrize(("mirror", "message"), [
    ("127.0.0.1", "expected HOST:PORT"),
    ("127.0.0.1:0", "expected HOST:PORT"),
    ("0.0.0.0:65001", "listen address"),
    ("https://127.0.0.1:65001", "plain http"),
])
def test_invalid_mirror_is_refused(capsys, tmp_path, mirror, message):
    rc, _, err = docker(capsys, tmp_path, "--mirror", mirror)
    assert rc == 2 and message in err
    assert snapshot(tmp_path) == {}


def test_parse_registry_normalises():
    assert parse_registry("index.docker.io").host == "docker.io"
    assert parse_registry("https://quay.io/").host == "quay.io"
    assert parse_registry("http://127.0.0.1:5000").plain_http
    assert [r.host for r in parse_registries(None)] == ["docker.io"]
    assert [r.host for r in parse_registries(["quay.io", "docker.io", "quay.io"])] == ["quay.io", "docker.io"]
    with pytest.raises(UsageError, match="both with and without http://"):
        parse_registries(["127.0.0.1:5000", "http://127.0.0.1:5000"])


def test_parse_mirror_accepts_http_url():
    assert parse_mirror("http://10.1.2.3:65001/") == Mirror("10.1.2.3:65001")
    assert Mirror("127.0.0.1:65001").matches_url("http://127.0.0.1:65001/")


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit):
        run(capsys, "containerd", "--help")
    out = capsys.readouterr().out
    assert "examples:" in out and "--config-path" in out and "config_path" in out


# --- --remove -----------------------------------------------------------------------------------


def test_containerd_remove_takes_only_the_mirror_out(capsys, tmp_path):
    hosts = tmp_path / "certs.d" / "docker.io" / "hosts.toml"
    hosts.parent.mkdir(parents=True)
    hosts.write_text('server = "https://registry-1.docker.io"\n\n[host."https://mirror.example"]\n'
                     '  capabilities = ["pull"]\n')
    before = tomllib.loads(hosts.read_text())
    assert containerd(capsys, tmp_path, "--registry", "quay.io")[0] == 0
    assert containerd(capsys, tmp_path)[0] == 0
    rc, out, err = containerd(capsys, tmp_path, "--remove")
    assert rc == 0, err
    assert tomllib.loads(hosts.read_text()) == before  # the user's host and server, as they were
    for path in (tmp_path / "certs.d").glob("*/hosts.toml"):
        assert MIRROR not in tomllib.loads(path.read_text()).get("host", {}), path  # every registry's file
    assert backups(hosts)
    rc, out, _ = containerd(capsys, tmp_path, "--remove")
    assert rc == 0 and "nothing to remove" in out


def test_docker_remove_keeps_other_keys_and_mirrors(capsys, tmp_path):
    path = tmp_path / "daemon.json"
    path.write_text(json.dumps({"log-driver": "journald", "registry-mirrors": ["https://other.example"]}))
    assert docker(capsys, tmp_path)[0] == 0
    assert json.loads(path.read_text())["registry-mirrors"][0] == MIRROR
    assert docker(capsys, tmp_path, "--remove")[0] == 0
    assert json.loads(path.read_text()) == {"log-driver": "journald", "registry-mirrors": ["https://other.example"]}
    path.write_text(json.dumps({"registry-mirrors": [MIRROR]}))
    assert docker(capsys, tmp_path, "--remove")[0] == 0
    assert json.loads(path.read_text()) == {}  # the key goes with its last mirror


def test_docker_remove_without_a_file_writes_nothing(capsys, tmp_path):
    rc, out, _ = docker(capsys, tmp_path, "--remove")
    assert rc == 0 and "nothing to remove" in out and not (tmp_path / "daemon.json").exists()


def test_podman_remove_takes_the_mirror_out_of_every_registry(capsys, tmp_path):
    path = tmp_path / "registries.conf"
    path.write_text('unqualified-search-registries = ["docker.io"]\n\n[[registry]]\nprefix = "quay.io"\n'
                    'location = "quay.io"\n\n[[registry.mirror]]\nlocation = "mirror.example/quay"\n')
    before = tomllib.loads(path.read_text())
    assert podman(capsys, tmp_path, "--registry", "docker.io", "--registry", "quay.io")[0] == 0
    assert any("127.0.0.1:65001" in m["location"] for m in registry_entry(tomllib.loads(path.read_text()),
                                                                           "quay.io")["mirror"])
    rc, _, err = podman(capsys, tmp_path, "--remove")
    assert rc == 0, err
    after = tomllib.loads(path.read_text())
    assert registry_entry(after, "quay.io") == registry_entry(before, "quay.io")
    assert "mirror" not in registry_entry(after, "docker.io")  # its only mirror was ours
    assert after["unqualified-search-registries"] == ["docker.io"]


def test_remove_dry_run_writes_nothing(capsys, tmp_path):
    assert docker(capsys, tmp_path)[0] == 0
    before = snapshot(tmp_path)
    rc, out, _ = docker(capsys, tmp_path, "--remove", "--dry-run")
    assert rc == 0 and "would update" in out and snapshot(tmp_path) == before


@pytest.mark.parametrize("runtime", ["containerd", "docker", "podman"])
def test_an_unwritable_place_is_a_clear_error_not_a_traceback(capsys, tmp_path, runtime):
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way")  # a file where a folder would have to be made
    option = {"containerd": "--config-path", "docker": "--daemon-json", "podman": "--registries-conf"}[runtime]
    target = blocker / "certs.d" if runtime == "containerd" else blocker / "conf"
    rc, _, err = run(capsys, runtime, option, str(target), *(
        ["--containerd-config", str(tmp_path / "config.toml")] if runtime == "containerd" else []))
    assert rc == 1 and f"p2pdist configure {runtime}: error: cannot read" in err and "Traceback" not in err
    assert "Not a directory" in err and blocker.read_text() == "in the way"


def test_a_folder_that_cannot_be_made_is_a_clear_error_not_a_traceback(capsys):
    rc, _, err = run(capsys, "docker", "--daemon-json", "/proc/p2pdist-test/daemon.json")  # /proc takes no folders
    assert rc == 1 and "p2pdist configure docker: error: cannot write /proc/p2pdist-test" in err
    assert "Traceback" not in err
