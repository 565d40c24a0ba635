"""Network namespaces joined by a bridge, with tbf-shaped links: a private LAN for benchmarks.

Layout: one hub namespace holds a Linux bridge; every host gets its own namespace and a veth pair
whose inner end is ``eth0`` (with an address in a private /24) and whose outer end is a bridge port in
the hub, named after the host. There is no default route anywhere, so traffic can reach only
loopback and the other hosts: nothing leaves the machine.

Shaping (REAL_STACK.md, "Network namespaces and shaped links"): netem is not in this kernel, so links
are token-bucket filters. A host's upload is a tbf on its ``eth0``; its download is a tbf on its hub
port, which is where the bridge sends the host's incoming frames.

Processes are started inside a namespace with ``ip netns exec`` (which execs, so the PID we hold is the
program's own) and stopped by that PID. Python code reaches into a namespace with :func:`entered`,
which moves only the calling thread (setns), so sockets it opens and children it forks live there.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
NAME_PREFIX = "p2pb"  # every namespace we make is p2pb-<our pid>-<token>-<host>
# tbf burst and queue as REAL_STACK.md measured them (100mbit -> 95.7 Mbit/s of goodput).
TBF_BURST = "64kb"
TBF_LATENCY = "50ms"
_OUR_NAME = re.compile(rf"^{NAME_PREFIX}-(?P<pid>\d+)-[0-9a-f]+-")


class NetnsError(RuntimeError):
    """Namespaces, links or shaping could not be set up; the message has the failing command."""


def require_tools() -> None:
    """Fail (never skip) when this machine cannot build namespaces: root, ``ip`` and ``tc`` are needed."""
    if os.geteuid() != 0:
        raise NetnsError("network namespaces need root: run as root (sudo)")
    for tool, package in (("ip", "iproute2"), ("tc", "iproute2")):
        if shutil.which(tool) is None:
            raise NetnsError(f"{tool} not found: apt-get install -y --no-install-recommends {package}")
    # `ip netns list` fails on kernels or containers without namespace support: say so now, not midway.
    run(["ip", "netns", "list"])


def run(args: Sequence[str], timeout: float = 30.0) -> str:
    """Run a setup command; raise with its stderr so a failed step says what went wrong."""
    proc = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout


def namespaces() -> list[str]:
    """Names of every network namespace on this machine (``ip netns list``)."""
    return [line.split()[0] for line in run(["ip", "netns", "list"]).splitlines() if line.strip()]


def delete_namespace(name: str) -> None:
    # The namespace itself lives on while processes inside it do: callers stop those first.
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, timeout=30, check=False)


def sweep_stale() -> list[str]:
    """Delete namespaces left by a benchmark process that no longer exists (killed with -9)."""
    removed = []
    for name in namespaces():
        match = _OUR_NAME.match(name)
        if match and not _alive(int(match["pid"])):
            delete_namespace(name)
            removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def entered(namespace: str) -> Iterator[None]:
    """Run the body with the calling thread inside ``namespace``; always come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(NETNS_DIR / namespace, os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def shape(namespace: str, device: str, rate: str) -> None:
    """Cap what ``device`` sends at ``rate`` (tc syntax: 50mbit)."""
    run(["tc", "-n", namespace, "qdisc", "replace", "dev", device, "root", "tbf", "rate", rate,
         "burst", TBF_BURST, "latency", TBF_LATENCY])


@dataclass(frozen=True)
class Host:
    """One namespace on the LAN: ``label`` is its name on the bridge, ``addr`` its eth0 address."""

    label: str
    namespace: str
    addr: str
    upload: str | None  # tc rate, None = unshaped
    download: str | None


@dataclass
class Process:
    """A program running inside a namespace, with its output in a log file."""

    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout)

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class Lan:
    """A bridge in a hub namespace and hosts on /24 ``subnet`` (e.g. 198.18.0), deleted by :meth:`close`.

    198.18.0.0/15 is reserved for benchmarking (RFC 2544), so it clashes with no real network.
    """

    subnet: str = "198.18.0"
    tag: str = field(default_factory=lambda: f"{NAME_PREFIX}-{os.getpid()}-{secrets.token_hex(2)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    _made: list[str] = field(default_factory=list)

    @property
    def hub(self) -> str:
        return f"{self.tag}-hub"

    def open(self) -> Lan:
        require_tools()
        self._add_namespace(self.hub)
        run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        return self

    def _add_namespace(self, name: str) -> None:
        # Recorded before creation: if the command half-succeeds, close() still tries to delete it.
        self._made.append(name)
        run(["ip", "netns", "add", name])
        run(["ip", "-n", name, "link", "set", "lo", "up"])

    def add_host(self, label: str, octet: int, upload: str | None = None, download: str | None = None) -> Host:
        """A namespace wired to the bridge at ``subnet.octet``; rates in tc syntax, None = unshaped."""
        if len(label) > 15:
            raise NetnsError(f"host label {label!r} is longer than an interface name may be (15)")
        if label in self.hosts:
            raise NetnsError(f"host {label!r} already exists")
        host = Host(label, f"{self.tag}-{label}", f"{self.subnet}.{octet}", upload, download)
        self._add_namespace(host.namespace)
        # Both ends are born in their namespaces: nothing ever appears in the machine's own.
        run(["ip", "link", "add", label, "netns", self.hub, "type", "veth", "peer", "name", "eth0",
             "netns", host.namespace])
        run(["ip", "-n", self.hub, "link", "set", label, "master", "br0", "up"])
        run(["ip", "-n", host.namespace, "addr", "add", f"{host.addr}/24", "dev", "eth0"])
        run(["ip", "-n", host.namespace, "link", "set", "eth0", "up"])
        if upload:
            shape(host.namespace, "eth0", upload)
        if download:
            shape(self.hub, label, download)
        self.hosts[label] = host
        return host

    def spawn(self, host: Host, args: Sequence[str], log: Path, env: dict[str, str] | None = None) -> Process:
        """Start ``args`` inside the host's namespace, in its own session (Ctrl-C goes to us, not it)."""
        with open(log, "ab") as out:
            popen = subprocess.Popen(["ip", "netns", "exec", host.namespace, *args], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
                                     start_new_session=True)
        return Process(popen, log)

    def namespaces(self) -> list[str]:
        return list(self._made)

    def close(self) -> None:
        """Delete every namespace we made (their veths and the bridge go with them)."""
        for name in reversed(self._made):
            delete_namespace(name)
        leftover = [n for n in namespaces() if n in self._made]
        deadline = time.monotonic() + 5
        while leftover and time.monotonic() < deadline:
            time.sleep(0.1)
            for name in leftover:
                delete_namespace(name)
            leftover = [n for n in namespaces() if n in self._made]
        self._made = [n for n in self._made if n in leftover]
        self.hosts.clear()
        if leftover:
            raise NetnsError(f"could not delete namespaces {', '.join(leftover)}: see `ip netns pids NAME`")

    def __enter__(self) -> Lan:
        try:
            return self.open()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()
