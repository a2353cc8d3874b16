"""SIGHUP re-reads fleet.conf (fleet's reconfigure): metadata and verbosity apply to the running
fleetd, other changes wait for a restart, an invalid file changes nothing."""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib

import pytest

from fleetd.config import Config, load_config
from fleetd.main import reconfigure


class FakeSession:
    def __init__(self) -> None:
        self.published: list[dict[str, str]] = []

    async def update_metadata(self, metadata: dict[str, str]) -> None:
        self.published.append(metadata)


@pytest.fixture(autouse=True)
def _no_fleet_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("FLEET_"):
            monkeypatch.delenv(name)


def start(tmp_path: pathlib.Path, text: str) -> tuple[Config, list[str], pathlib.Path]:
    conf = tmp_path / "fleet.conf"
    conf.write_text(text)
    argv = ["--config", str(conf)]
    return load_config(argv)[0], argv, conf


def reload(cfg: Config, argv: list[str], session: FakeSession) -> Config:
    return asyncio.run(reconfigure(cfg, argv, session))  # type: ignore[arg-type]


@pytest.mark.parametrize("before,after,published,verbosity,restart_needed", [
    ('metadata="region=us"\n', 'metadata="region=eu,disk=ssd"\n',
     [{"region": "eu", "disk": "ssd"}], 0, ""),
    ("verbosity=0\n", "verbosity=2\n", [], 2, ""),
    ("agent_ttl=30s\n", "agent_ttl=40s\n", [], 0, "agent_ttl"),
    ('metadata="a=b"\n', 'metadata="a=b"\n', [], 0, ""),
])
def test_sighup_applies_metadata_and_verbosity_and_defers_the_rest(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, before: str, after: str,
        published: list[dict[str, str]], verbosity: int, restart_needed: str) -> None:
    cfg, argv, conf = start(tmp_path, before)
    conf.write_text(after)
    session = FakeSession()
    level = logging.getLogger().level
    try:
        with caplog.at_level(logging.INFO, logger="fleetd"):
            now = reload(cfg, argv, session)
        assert session.published == published
        assert now.verbosity == verbosity
        assert now.metadata == (published[-1] if published else cfg.metadata)
        # a deferred option stays at its running value
        assert now.agent_ttl == cfg.agent_ttl
        warned = [r.message for r in caplog.records if r.levelno == logging.WARNING]
        if restart_needed:
            assert any(restart_needed in m for m in warned), warned
        else:
            assert not warned
    finally:
        logging.getLogger().setLevel(level)


def test_an_invalid_configuration_keeps_the_running_one(
        tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg, argv, conf = start(tmp_path, 'metadata="a=b"\n')
    conf.write_text('metadata="not a pair"\n')
    session = FakeSession()
    assert reload(cfg, argv, session) is cfg
    assert session.published == []
    assert any("not reloaded" in r.message for r in caplog.records)
