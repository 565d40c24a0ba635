"""Where a worker thread sends an origin Range GET (see origin_reader.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RangeTarget:
    scheme: str
    host: str
    port: int
    path: str  # /v2/<repo>/blobs/<digest>, already validated
    authorization: str | None  # what the async client would send now (never followed elsewhere)
    verify_tls: bool
    timeout: float  # seconds to connect and for the answer's headers
    stall: float = 5.0  # then the body: StallWatch's window (limits.origin_stall_timeout)

    def __repr__(self) -> str:
        return f"RangeTarget({self.scheme}://{self.host}:{self.port}{self.path}, authorization=***)"
