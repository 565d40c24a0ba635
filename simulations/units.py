"""Sizes, rates and durations as people write them in scenarios: "1GiB", "10Gbit", "500ms"."""

from __future__ import annotations

import re

from p2pdist.errors import P2pdistError


class ScenarioError(P2pdistError, ValueError):
    """A scenario that cannot be simulated; the message names the setting and what to write instead."""


_NUMBER = r"\s*(\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)\s*"
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
# Rates: bits per second ("bit", "bps") or bytes per second ("B/s", "MiB/s").
_BIT_UNITS = {"bit": 1, "bps": 1, "kbit": 1e3, "kbps": 1e3, "mbit": 1e6, "mbps": 1e6, "gbit": 1e9, "gbps": 1e9,
              "tbit": 1e12, "tbps": 1e12}
_TIME_UNITS = {"": 1.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_size(value: object, what: str) -> int:
    """'1GiB', '512MB', 1073741824 -> bytes."""
    if isinstance(value, bool):
        raise ScenarioError(f"{what}: expected a size such as 512MiB, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ScenarioError(f"{what}: a size cannot be negative ({value})")
        return int(value)
    m = re.fullmatch(_NUMBER + r"([A-Za-z]*)\s*", str(value))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _SIZE_UNITS:
        raise ScenarioError(f"{what}: expected a size such as 512MiB or 1GB, got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_rate(value: object, what: str) -> float:
    """'1Gbit', '100Mbps', '125MB/s', 1.25e8 (bytes/s) -> bytes per second."""
    if isinstance(value, bool):
        raise ScenarioError(f"{what}: expected a rate such as 1Gbit or 125MB/s, got {value!r}")
    if isinstance(value, int | float):
        rate = float(value)
    else:
        text = str(value).strip()
        m = re.fullmatch(_NUMBER + r"([A-Za-z]*)(/s)?\s*", text)
        if not m:
            raise ScenarioError(f"{what}: expected a rate such as 1Gbit or 125MB/s, got {value!r}")
        number, unit, per_second = float(m.group(1)), m.group(2).lower(), m.group(3)
        if unit in _BIT_UNITS and not per_second:
            rate = number * _BIT_UNITS[unit] / 8
        elif unit in _SIZE_UNITS and (per_second or unit == ""):
            rate = number * _SIZE_UNITS[unit]
        else:
            raise ScenarioError(f"{what}: unknown rate unit in {value!r}; use bit rates (Mbit, Gbit, Gbps) "
                                "or byte rates (MB/s, MiB/s)")
    if not rate > 0:
        raise ScenarioError(f"{what}: a rate must be positive, got {value!r}")
    return rate


def parse_duration(value: object, what: str) -> float:
    """'500ms', '2s', '1.5m', 3 -> seconds."""
    if isinstance(value, bool):
        raise ScenarioError(f"{what}: expected a duration such as 2s or 500ms, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        m = re.fullmatch(_NUMBER + r"([A-Za-z]*)\s*", str(value))
        if not m or m.group(2).lower() not in _TIME_UNITS:
            raise ScenarioError(f"{what}: expected a duration such as 2s or 500ms, got {value!r}")
        seconds = float(m.group(1)) * _TIME_UNITS[m.group(2).lower()]
    if seconds < 0:
        raise ScenarioError(f"{what}: a duration cannot be negative ({value!r})")
    return seconds


def human_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"

