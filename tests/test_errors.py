"""One exception root: every error the project defines is a P2pdistError; one ConfigError, one
loopback rule for the agent and the tracker; one log schema."""

from __future__ import annotations

import importlib
import inspect
import io
import json
import logging
import pkgutil

import pytest

import p2pdist
import simulations
import tracker
import tracker.config
from p2pdist import config as agent_config
from p2pdist.errors import P2pdistError
from p2pdist.logs import JsonFormatter, log_event


def _project_exceptions() -> list[type[BaseException]]:
    found = []
    for package in (p2pdist, tracker, simulations):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            if info.name.endswith("__main__"):
                continue
            module = importlib.import_module(info.name)
            for _, cls in inspect.getmembers(module, inspect.isclass):
                if issubclass(cls, BaseException) and cls.__module__ == module.__name__:
                    found.append(cls)
    return found


def test_every_project_exception_has_the_one_root():
    found = _project_exceptions()
    assert len(found) > 30  # the walk found them (a broken walk must not pass)
    strays = sorted(f"{c.__module__}.{c.__qualname__}" for c in found if not issubclass(c, P2pdistError))
    assert not strays, f"exceptions outside P2pdistError: {strays}"


def test_the_agent_and_the_tracker_share_one_config_error_and_one_loopback_rule():
    assert tracker.config.ConfigError is agent_config.ConfigError
    assert tracker.config.is_loopback is agent_config.is_loopback
    for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost"):
        assert agent_config.is_loopback(host), host
    for host in ("0.0.0.0", "10.0.0.1", "::", "127.example.com", "example.com", ""):
        assert not agent_config.is_loopback(host), host


@pytest.mark.parametrize("how", ["extra", "log_event"])
def test_one_log_schema(how):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.schema.{how}")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        if how == "extra":
            logger.warning("peer banned", extra={"peer": "n1", "bad_pieces": 2})
        else:
            log_event(logger, logging.WARNING, "peer banned", peer="n1", bad_pieces=2, args="kept")
    finally:
        logger.removeHandler(handler)
    line = json.loads(stream.getvalue())
    assert list(line)[:4] == ["ts", "level", "logger", "msg"]
    assert line["msg"] == "peer banned" and line["level"] == "warning" and line["peer"] == "n1"
    assert line["bad_pieces"] == 2
