"""Real container clients pulling through a p2pdist mirror: skopeo, containerd+ctr, podman, dockerd.

Each client keeps all its state (config, storage, sockets, logs) in its own temp dir, starts its
daemons as child processes and stops them by PID. A missing binary fails loudly with the apt
package to install: a client test that skips proves nothing.

The mirror config each client needs is written by one function per client format, so the later
``p2pdist configure containerd|docker|podman`` can replace them one for one:

- :func:`registries_conf` — containers/image ``registries.conf`` (skopeo, podman, CRI-O);
- :func:`hosts_toml` — containerd ``certs.d/<registry>/hosts.toml``;
- :func:`daemon_json` — dockerd ``daemon.json`` ``registry-mirrors``.

With ``P2PDIST_TEST_MIRROR_CONFIG=configure`` the ``write_*`` functions run ``p2pdist configure``
instead, so the same tests check the command's files with the real clients.

dockerd's ``registry-mirrors`` apply to docker.io names only, so its tests run inside a network
namespace that has nothing but ``lo`` (:class:`NetNS`): the registry, tracker and agents run there
too, and a docker.io pull that slipped past the mirror could reach nothing.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pdist.core.names import path_prefix

CLONE_NEWNET = 0x40000000


class ClientError(RuntimeError):
    """A client binary is missing, or a client daemon did not start or stop."""


def require(name: str, package: str, *, prefer: Sequence[str] = ()) -> str:
    """The path of ``name`` (trying ``prefer`` paths first); fails, never skips, when it is missing."""
    for path in prefer:
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    if found is None:
        raise ClientError(f"{name} not found on PATH: apt-get install -y --no-install-recommends {package} "
                          "(scripts/setup.sh installs it)")
    return found


def short_tempdir(prefix: str) -> Path:
    """A short dir for unix sockets: their paths must stay under 108 bytes, pytest's tmp paths may not."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@dataclass
class Result:
    """One finished client command."""

    cmd: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def refused_auth(self) -> bool:
        """Failed because the registry (or the mirror for it) refused the credentials, not for any
        other reason (a crash, a timeout, a config error)."""
        text = (self.stdout + self.stderr).lower()
        return not self.ok and any(w in text for w in ("unauthorized", "authentication required", "denied",
                                                      "401", "invalid username/password"))

    def check(self) -> Result:
        if not self.ok:
            raise AssertionError(
                f"command failed ({self.returncode}) after {self.seconds:.1f}s: {' '.join(self.cmd)}\n"
                f"--- stdout ---\n{self.stdout[-4000:]}\n--- stderr ---\n{self.stderr[-6000:]}"
            )
        return self


def run(cmd: list[str], *, log: Path | None = None, env: dict[str, str] | None = None, timeout: float = 240.0,
        check: bool = True, stdin: str | None = None) -> Result:
    """Run a client command to the end; its output is appended to ``log`` for post-mortems."""
    start = time.monotonic()
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout,
                              **({"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}))
        result = Result(cmd, proc.returncode, proc.stdout, proc.stderr, time.monotonic() - start)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        result = Result(cmd, -9, out, err + f"\n(timed out after {timeout}s)", time.monotonic() - start)
    if log is not None:
        with open(log, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n# exit {result.returncode} in {result.seconds:.2f}s\n")
            f.write(result.stdout)
            f.write(result.stderr)
            f.write("\n")
    return result.check() if check else result


@dataclass
class Daemon:
    """A long-running child process, logging to a file, stopped by its PID."""

    args: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Daemon:
        with open(self.log, "ab") as logf:
            self.popen = subprocess.Popen(self.args, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env={**os.environ, **self.env}, start_new_session=True)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)


def wait_for(what: str, probe: Callable[[], object], daemon: Daemon | None = None, timeout: float = 30.0) -> None:
    """Poll ``probe()`` until it is truthy; fail early with the daemon's log if it died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if daemon is not None and not daemon.alive():
            raise ClientError(f"{daemon.args[0]} exited before {what}; log tail:\n{daemon.tail()}")
        with contextlib.suppress(OSError):
            if probe():
                return
        time.sleep(0.1)
    tail = daemon.tail() if daemon is not None else ""
    raise ClientError(f"timed out after {timeout}s waiting for {what}\n{tail}")


# --- mirror config, one function per client format -------------------------------------------------

# "harness": the functions below write the files; "configure": `p2pdist configure RUNTIME` writes them
# (the same files, merged the way a user's would be), which also tests the command with real clients.
CONFIG_SOURCE_ENV = "P2PDIST_TEST_MIRROR_CONFIG"
ROOT = Path(__file__).resolve().parents[2]


def _config_source() -> str:
    source = os.environ.get(CONFIG_SOURCE_ENV, "harness")
    if source not in ("harness", "configure"):
        raise ClientError(f"{CONFIG_SOURCE_ENV}={source!r}: use 'harness' or 'configure'")
    return source


def _configure(runtime: str, mirror: str, registries: Sequence[str], *args: str) -> None:
    flags = [a for r in registries for a in ("--registry", f"http://{r}")]
    run([sys.executable, "-m", "p2pdist", "configure", runtime, "--mirror", mirror, *flags, *args],
        env={"PYTHONPATH": str(ROOT)}, timeout=60)


def write_registries_conf(path: Path, registries: Sequence[str], mirror: str) -> None:
    if _config_source() == "configure":
        _configure("podman", mirror, registries, "--registries-conf", str(path))
    else:
        path.write_text(registries_conf(registries, mirror))


def write_hosts_toml(certs_d: Path, registry: str, mirror: str) -> None:
    if _config_source() == "configure":
        _configure("containerd", mirror, [registry], "--config-path", str(certs_d), "--no-default-host",
                   "--containerd-config", str(certs_d / "absent-config.toml"))
    else:
        (certs_d / registry).mkdir(parents=True, exist_ok=True)
        (certs_d / registry / "hosts.toml").write_text(hosts_toml(registry, mirror))


def write_daemon_json(path: Path, mirror: str) -> None:
    if _config_source() == "configure":
        _configure("docker", mirror, [], "--daemon-json", str(path))
    else:
        path.write_text(json.dumps(daemon_json(mirror), indent=2))


def registries_conf(registries: Sequence[str], mirror: str) -> str:
    """containers/image registries.conf: ``mirror`` (host:port, plain http) in front of each registry,
    with the registry as the location's path prefix (the mirror routes by it)."""
    blocks = []
    for registry in registries:
        blocks.append(
            f'[[registry]]\nprefix = "{registry}"\nlocation = "{registry}"\ninsecure = true\n'
            f'[[registry.mirror]]\nlocation = "{mirror}/{path_prefix(registry)}"\ninsecure = true\n'
        )
    return "\n".join(blocks)


def hosts_toml(registry: str, mirror: str) -> str:
    """containerd certs.d/<registry>/hosts.toml: try the mirror (plain http) first, then the registry."""
    return (
        f'server = "http://{registry}"\n\n'
        f'[host."http://{mirror}"]\n'
        f'  capabilities = ["pull", "resolve"]\n'
    )


def daemon_json(mirror: str, **extra: object) -> dict[str, object]:
    """dockerd daemon.json with ``registry-mirrors`` (docker.io names only)."""
    return {"registry-mirrors": [f"http://{mirror}"], **extra}


def write_authfile(path: Path, credentials: dict[str, tuple[str, str]]) -> Path:
    """A containers-auth.json: host (or host/namespace) -> (user, password)."""
    auths = {host: {"auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
             for host, (user, password) in credentials.items()}
    path.write_text(json.dumps({"auths": auths}))
    path.chmod(0o600)
    return path


# --- skopeo -------------------------------------------------------------------------------------


class Skopeo:
    """``skopeo --registries-conf FILE copy docker://REF dir:OUT`` through the mirror.

    skopeo ignores CONTAINERS_REGISTRIES_CONF; the global ``--registries-conf`` flag is the way.
    """

    def __init__(self, workdir: Path, mirror: str, registries: Sequence[str]) -> None:
        self.binary = require("skopeo", "skopeo")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "registries.conf"
        write_registries_conf(self.conf, registries, mirror)
        self.log = workdir / "skopeo.log"

    def copy_cmd(self, ref: str, out: Path, *, debug: bool = False, args: Sequence[str] = ()) -> list[str]:
        # No --src-tls-verify=false: plain http must come from registries.conf's insecure = true.
        return [self.binary, *(["--debug"] if debug else []), "--registries-conf", str(self.conf), "copy",
                *args, f"docker://{ref}", f"dir:{out}"]

    def copy(self, ref: str, out: Path, *, debug: bool = True, timeout: float = 180.0, check: bool = True,
             args: Sequence[str] = ()) -> Result:
        """``args``: more copy flags, e.g. ``--src-authfile FILE`` (credentials for the mirror's host)."""
        if out.exists():
            shutil.rmtree(out)
        return run(self.copy_cmd(ref, out, debug=debug, args=args), log=self.log, timeout=timeout, check=check)

    def popen_copy(self, ref: str, out: Path) -> subprocess.Popen[bytes]:
        """The same copy, in the background (for killing the agent mid-pull)."""
        if out.exists():
            shutil.rmtree(out)
        logf = open(self.log, "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(self.copy_cmd(ref, out, debug=True), stdout=logf, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
        finally:
            logf.close()


# --- containerd + ctr ---------------------------------------------------------------------------


class Containerd:
    """A private containerd 1.6 (no CRI) and ``ctr images pull --hosts-dir`` with unpack."""

    namespace = "p2ptest"

    def __init__(self, workdir: Path, mirror: str, registry: str, name: str = "containerd") -> None:
        self.binary = require("containerd", "containerd")
        self.ctr = require("ctr", "containerd")
        require("runc", "runc")
        self.workdir = workdir
        self.mirror, self.registry = mirror, registry
        workdir.mkdir(parents=True, exist_ok=True)
        self.sockdir = short_tempdir("p2p-ctd-")
        self.socket = self.sockdir / "containerd.sock"
        self.certs_d = workdir / "certs.d"
        self.log = workdir / f"{name}.log"
        self.cmd_log = workdir / "ctr.log"
        self.daemon: Daemon | None = None

    def write_hosts(self) -> None:
        write_hosts_toml(self.certs_d, self.registry, self.mirror)

    def config(self) -> str:
        return "\n".join([
            "version = 2",
            f'root = "{self.workdir / "root"}"',
            f'state = "{self.sockdir / "state"}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]",
            f'  address = "{self.socket}"',
            "[ttrpc]",
            f'  address = "{self.socket}.ttrpc"',
            "[debug]",
            '  level = "debug"',
            "",
        ])

    def start(self) -> Containerd:
        self.write_hosts()
        config = self.workdir / "config.toml"
        config.write_text(self.config())
        self.daemon = Daemon([self.binary, "--config", str(config)], self.log).start()
        wait_for("containerd's socket", lambda: run(self.ctl("version"), check=False, timeout=5).ok, self.daemon)
        return self

    def ctl(self, *args: str) -> list[str]:
        return [self.ctr, "--address", str(self.socket), "--namespace", self.namespace, *args]

    def pull(self, ref: str, *, timeout: float = 180.0, check: bool = True, user: str | None = None) -> Result:
        """Fetch and unpack (ctr's default) through the hosts.toml mirror; ``user``: "name:password"."""
        cmd = self.ctl("images", "pull", "--hosts-dir", str(self.certs_d), "--print-chainid",
                       *(["--user", user] if user else []), ref)
        result = run(cmd, log=self.cmd_log, timeout=timeout, check=False)
        result.stdout = last_progress_frame(result.stdout)  # the full log is in cmd_log
        return result.check() if check else result

    def run_container(self, ref: str, *command: str, timeout: float = 120.0) -> Result:
        """``ctr run --rm`` of the pulled image (runc; a network namespace of its own, with only lo)."""
        name = f"p2ptest-{secrets.token_hex(3)}"
        return run(self.ctl("run", "--rm", ref, name, *command), log=self.cmd_log, timeout=timeout)

    @contextlib.contextmanager
    def mounted(self, ref: str) -> Iterator[Path]:
        """The unpacked rootfs of ``ref`` mounted read-only: proof the layers were applied."""
        target = self.workdir / f"mnt-{secrets.token_hex(3)}"
        target.mkdir()
        run(self.ctl("images", "mount", ref, str(target)), log=self.cmd_log, timeout=60)
        try:
            yield target
        finally:
            run(self.ctl("images", "unmount", "--rm", str(target)), log=self.cmd_log, timeout=60, check=False)

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        # Unmount anything left below our root (snapshots of a failed test), then drop the socket dir.
        self._unmount_below(self.workdir)
        shutil.rmtree(self.sockdir, ignore_errors=True)

    @staticmethod
    def _unmount_below(root: Path) -> None:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
        for point in sorted(points, key=len, reverse=True):
            if point.startswith(str(root) + "/"):
                subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def last_progress_frame(stdout: str) -> str:
    """ctr redraws its progress table every 100 ms even without a tty: keep the last table and what follows."""
    lines = stdout.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("elapsed:")]
    if len(starts) < 2:
        return stdout
    return "\n".join(lines[starts[-2] + 1:]) + "\n"


# --- podman -------------------------------------------------------------------------------------


class Podman:
    """Rootful podman with all storage in a temp dir and CONTAINERS_REGISTRIES_CONF naming the mirror."""

    def __init__(self, workdir: Path, mirror: str, registries: Sequence[str]) -> None:
        self.binary = require("podman", "podman")
        # runc, not crun: crun 1.8 refuses this machine's hybrid cgroup v1/v2 layout.
        self.runtime = require("runc", "runc")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "registries.conf"
        write_registries_conf(self.conf, registries, mirror)
        self.log = workdir / "podman.log"
        self.env = {"CONTAINERS_REGISTRIES_CONF": str(self.conf)}
        # podman refuses a runroot longer than 50 characters: pytest's tmp paths are longer.
        self.rundir = short_tempdir("p2p-pod-")

    def cmd(self, *args: str) -> list[str]:
        w, r = self.workdir, self.rundir
        return [self.binary, "--root", str(w / "root"), "--runroot", str(r / "run"), "--tmpdir", str(r / "tmp"),
                "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
                "--runtime", self.runtime, *args]

    def pull(self, ref: str, *, timeout: float = 180.0, check: bool = True, args: Sequence[str] = ()) -> Result:
        """``args``: more pull flags, e.g. ``--authfile FILE`` (credentials for the mirror's host)."""
        return run(self.cmd("--log-level", "debug", "pull", *args, ref), log=self.log, env=self.env,
                   timeout=timeout, check=check)

    def login(self, host: str, user: str, password: str, authfile: Path, *, check: bool = True) -> Result:
        """``podman login`` (plain http): the credentials land in ``authfile`` under ``host``."""
        return run(self.cmd("login", "--tls-verify=false", "--authfile", str(authfile), "--username", user,
                            "--password-stdin", host), log=self.log, env=self.env, timeout=60, check=check,
                   stdin=password)

    def run_container(self, ref: str, *command: str, timeout: float = 120.0) -> Result:
        """Run a command in the pulled image: no network, the ulimits this machine allows."""
        return run(self.cmd("run", "--rm", "--network", "none", "--pull", "never",
                            "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024", ref, *command),
                   log=self.log, env=self.env, timeout=timeout)

    def image_digest(self, ref: str) -> str:
        out = run(self.cmd("image", "inspect", "--format", "{{.Digest}}", ref), log=self.log, env=self.env)
        return out.stdout.strip()

    def stop(self) -> None:
        # vfs keeps no mounts, but a container left by a failed run may: let podman clean up its own.
        run(self.cmd("rm", "--all", "--force"), log=self.log, env=self.env, timeout=60, check=False)
        Containerd._unmount_below(self.workdir)
        Containerd._unmount_below(self.rundir)
        shutil.rmtree(self.rundir, ignore_errors=True)


# --- network namespace --------------------------------------------------------------------------


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


class NetNS:
    """A network namespace with only ``lo``: nothing started inside can reach anything outside.

    :meth:`entered` moves the calling thread into it, so every process the test starts meanwhile
    (registry, tracker, agents via their helpers) and every socket it opens (readiness probes,
    registry log syncs) lives on the namespace's loopback. Daemons that need the host's mount view
    (dockerd needs the cgroup mounts ``ip netns exec`` would hide) run under ``nsenter --net``.
    """

    def __init__(self, name: str | None = None) -> None:
        self.ip = require("ip", "iproute2")
        self.nsenter_bin = require("nsenter", "util-linux")
        self.name = name or f"p2pdist-{os.getpid()}-{secrets.token_hex(3)}"
        self.created = False

    @property
    def path(self) -> Path:
        return Path("/run/netns") / self.name

    def create(self) -> NetNS:
        run([self.ip, "netns", "add", self.name], timeout=30)
        self.created = True
        run([self.ip, "-n", self.name, "link", "set", "lo", "up"], timeout=30)
        return self

    def nsenter(self, cmd: Sequence[str]) -> list[str]:
        return [self.nsenter_bin, f"--net={self.path}", *cmd]

    def run(self, cmd: Sequence[str], **kwargs: Any) -> Result:
        return run(self.nsenter(cmd), **kwargs)

    def links(self) -> list[str]:
        out = run([self.ip, "-n", self.name, "-o", "link", "show"], timeout=30).stdout
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if line.strip()]

    @contextlib.contextmanager
    def entered(self) -> Iterator[NetNS]:
        """Run the body with this thread inside the namespace; always come back."""
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(self.path, os.O_RDONLY)
            try:
                _setns(target)
            finally:
                os.close(target)
            try:
                yield self
            finally:
                _setns(home)
        finally:
            os.close(home)

    def delete(self) -> None:
        if self.created:
            run([self.ip, "netns", "delete", self.name], timeout=30, check=False)
            self.created = False

    def __enter__(self) -> NetNS:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.delete()


# --- dockerd ------------------------------------------------------------------------------------


class Dockerd:
    """dockerd 20.10 in a network namespace, no bridge or iptables, everything under a temp dir.

    Its ``registry-mirrors`` point at the agent's mirror on the namespace's loopback.
    """

    def __init__(self, workdir: Path, mirror: str, netns: NetNS, name: str = "dockerd") -> None:
        self.binary = require("dockerd", "docker.io")
        # Debian's docker.io client matches this daemon; a newer docker CLI elsewhere on PATH may not.
        self.cli = require("docker", "docker.io", prefer=["/usr/bin/docker"])
        require("containerd", "containerd")
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.netns = netns
        self.mirror = mirror
        self.sockdir = short_tempdir("p2p-dkr-")
        self.socket = self.sockdir / "docker.sock"
        self.log = workdir / f"{name}.log"
        self.cmd_log = workdir / "docker.log"
        self.daemon: Daemon | None = None

    def start(self) -> Dockerd:
        config = self.workdir / "daemon.json"
        write_daemon_json(config, self.mirror)
        args = [
            self.binary, "--config-file", str(config), "--debug",
            "--data-root", str(self.workdir / "data"), "--exec-root", str(self.sockdir / "exec"),
            "--pidfile", str(self.sockdir / "docker.pid"), "--host", f"unix://{self.socket}",
            "--bridge=none", "--iptables=false", "--ip6tables=false", "--ip-masq=false",
        ]
        self.daemon = Daemon(self.netns.nsenter(args), self.log).start()
        wait_for("dockerd's socket", lambda: run(self.cli_cmd("version"), check=False, timeout=10).ok,
                 self.daemon, timeout=60)
        return self

    def cli_cmd(self, *args: str) -> list[str]:
        return [self.cli, "--host", f"unix://{self.socket}", *args]

    def pull(self, ref: str, *, timeout: float = 180.0, check: bool = True,
             credentials: tuple[str, str] | None = None) -> Result:
        """``credentials``: Docker Hub credentials, as `docker login` would store them (a login itself
        would go to the Hub, which nothing here can reach); the CLI hands them to the daemon."""
        cmd = self.cli_cmd("pull", ref)
        if credentials is not None:
            config = self.workdir / "cli-config"
            config.mkdir(exist_ok=True)
            write_authfile(config / "config.json", {"https://index.docker.io/v1/": credentials})
            cmd = [self.cli, "--config", str(config), *cmd[1:]]
        return run(cmd, log=self.cmd_log, timeout=timeout, check=check)

    def run_container(self, ref: str, *command: str, timeout: float = 120.0) -> Result:
        return run(self.cli_cmd("run", "--rm", "--network", "none", "--pull", "never", ref, *command),
                   log=self.cmd_log, timeout=timeout)

    def image_id(self, ref: str) -> str:
        return run(self.cli_cmd("image", "inspect", "--format", "{{.Id}}", ref), log=self.cmd_log).stdout.strip()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop(timeout=20)
        Containerd._unmount_below(self.workdir)
        Containerd._unmount_below(self.sockdir)
        shutil.rmtree(self.sockdir, ignore_errors=True)
