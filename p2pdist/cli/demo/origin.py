"""The demo's origin: the real CNCF distribution registry where installed, else the embedded one.

Both kinds answer the same small interface (:class:`Origin`): start on 127.0.0.1, publish the
image, report blob egress per digest counted on the origin side, stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Protocol

import aiohttp
from yarl import URL

from p2pdist.cli.demo.embedded_origin import EmbeddedOrigin
from p2pdist.cli.demo.image import Image
from p2pdist.cli.demo.procs import free_port, start_process, stop_process, tail

from ...errors import P2pdistError

REGISTRY_BINARY = "docker-registry"
STARTUP_TIMEOUT = 10.0
LOG_SYNC_TIMEOUT = 10.0
_TIMEOUT = aiohttp.ClientTimeout(total=300, sock_connect=5)


class OriginUnavailable(P2pdistError, RuntimeError):
    """The requested origin cannot be started; the message says what to do."""


class Origin(Protocol):
    kind: str
    host: str  # 127.0.0.1:PORT, as image references name it

    async def start(self) -> Origin: ...
    async def publish(self, image: Image) -> None: ...
    async def egress(self) -> dict[str, int]: ...
    async def stop(self) -> None: ...


def registry_installed() -> bool:
    return shutil.which(REGISTRY_BINARY) is not None


def choose_origin(mode: str, workdir: Path, image: Image, repository: str) -> Origin:
    """``auto``: the registry if installed, else embedded; ``registry``/``embedded``: exactly that."""
    if mode == "auto":
        mode = "registry" if registry_installed() else "embedded"
    if mode == "registry":
        if not registry_installed():
            raise OriginUnavailable(
                f"{REGISTRY_BINARY} is not on PATH: install it (Debian: apt-get install -y --no-install-recommends "
                "docker-registry) or use --origin embedded")
        return RegistryOrigin(workdir / "registry", repository)
    if mode == "embedded":
        return EmbeddedOrigin(image.layout, repository)
    raise ValueError(f"unknown origin mode {mode!r}: use auto, registry or embedded")


class RegistryOrigin:
    """``docker-registry serve`` on a loopback port, configured and logged inside ``workdir``.

    Egress comes from the registry's own JSON log: every finished response logs
    ``"msg": "response completed"`` with ``http.response.written``, the body bytes it wrote.
    """

    kind = "registry"

    def __init__(self, workdir: Path, repository: str) -> None:
        self.workdir = workdir
        self.repository = repository
        self.host = ""
        self.log_path = workdir / "registry.log"
        self._proc: subprocess.Popen | None = None

    def _config(self, port: int) -> dict[str, object]:
        return {
            "version": 0.1,
            "log": {"accesslog": {"disabled": False}, "level": "info", "formatter": "json"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.workdir / "storage")},
                "delete": {"enabled": True},
                "cache": {"blobdescriptor": "inmemory"},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {"addr": f"127.0.0.1:{port}", "secret": secrets.token_hex(16)},
        }

    async def start(self) -> RegistryOrigin:
        self.workdir.mkdir(parents=True, exist_ok=True)
        binary = shutil.which(REGISTRY_BINARY)
        if binary is None:
            raise OriginUnavailable(f"{REGISTRY_BINARY} is not on PATH")
        config = self.workdir / "config.yml"
        # free_port() can race with another program taking the port: the log says so, then retry.
        for _attempt in range(3):
            port = free_port()
            config.write_text(json.dumps(self._config(port)))  # JSON is valid YAML
            self.host = f"127.0.0.1:{port}"
            self._proc = start_process([binary, "serve", str(config)], self.log_path, cwd=self.workdir)
            if await self._wait_ready():
                return self
        raise OriginUnavailable(f"{REGISTRY_BINARY} could not get a free port; log: {self.log_path}")

    async def _wait_ready(self) -> bool:
        assert self._proc is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    log = tail(self.log_path)
                    self._proc = None
                    if "address already in use" in log:
                        return False
                    raise OriginUnavailable(f"{REGISTRY_BINARY} exited during startup; log tail:\n{log}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(f"http://{self.host}/v2/") as response:
                        if response.status == 200:
                            return True
                await asyncio.sleep(0.05)
        raise OriginUnavailable(f"{REGISTRY_BINARY} did not answer within {STARTUP_TIMEOUT}s; log: {self.log_path}")

    async def publish(self, image: Image) -> None:
        """Push the image with the OCI distribution push API: blobs (POST + PUT), then the manifest."""
        base = f"http://{self.host}/v2/{self.repository}"
        async with aiohttp.ClientSession(timeout=_TIMEOUT) as session:
            for blob in image.blobs:
                async with session.post(f"{base}/blobs/uploads/") as response:
                    await _expect(response, 202, f"start upload of {blob.digest}")
                    location = response.headers["Location"]
                # As a string: the upload state in the query must reach the registry byte for byte.
                location = str(response.url.join(URL(location, encoded=True)))
                url = URL(f"{location}{'&' if '?' in location else '?'}digest={blob.digest}", encoded=True)
                with open(image.blob_path(blob.digest), "rb") as body:
                    async with session.put(url, data=body,
                                           headers={"Content-Type": "application/octet-stream"}) as response:
                        await _expect(response, 201, f"upload {blob.digest}")
            manifest = image.blob_path(image.manifest.digest).read_bytes()
            async with session.put(f"{base}/manifests/{image.tag}", data=manifest,
                                   headers={"Content-Type": image.manifest.media_type}) as response:
                await _expect(response, 201, f"push manifest {image.tag}")
                if response.headers.get("Docker-Content-Digest") != image.manifest.digest:
                    raise OriginUnavailable(
                        f"registry stored manifest {response.headers.get('Docker-Content-Digest')}, "
                        f"pushed {image.manifest.digest}")

    async def _sync_log(self) -> None:
        """Wait until every response finished so far is in the log.

        The registry writes a request's line after the response, so a client can hold every byte
        before the line exists. A marker request answered now is logged after all of those.
        """
        marker = f"/v2/?p2pdist-demo-log-sync={secrets.token_hex(8)}"
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
                session.get(f"http://{self.host}{marker}") as response:
            await response.read()
        needle = f'"http.request.uri":"{marker}"'.encode()
        deadline = time.monotonic() + LOG_SYNC_TIMEOUT
        while needle not in self.log_path.read_bytes():
            if time.monotonic() > deadline:
                raise OriginUnavailable(f"the registry log did not show {marker} within {LOG_SYNC_TIMEOUT}s")
            await asyncio.sleep(0.02)

    async def egress(self) -> dict[str, int]:
        """Blob body bytes the registry wrote for GETs answered 200/206, per digest."""
        await self._sync_log()
        prefix = f"/v2/{self.repository}/blobs/"
        out: Counter[str] = Counter()
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            for line in log:
                if not line.startswith("{") or '"response completed"' not in line:
                    continue
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    path = str(entry.get("http.request.uri", "")).partition("?")[0]
                    if (entry.get("msg") == "response completed" and entry.get("http.request.method") == "GET"
                            and entry.get("http.response.status") in (200, 206) and path.startswith(prefix)):
                        out[path[len(prefix):]] += int(entry.get("http.response.written", 0))
        return dict(out)

    async def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc)


async def _expect(response: aiohttp.ClientResponse, status: int, what: str) -> None:
    if response.status != status:
        body = (await response.content.read(2000)).decode(errors="replace")
        raise OriginUnavailable(f"registry refused to {what}: {response.status} {body}")
