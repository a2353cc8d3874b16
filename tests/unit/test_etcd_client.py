"""EtcdClient's retry rules, on a client whose transport is replaced (no etcd needed)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fleetd.registry import EtcdClient, EtcdError


def _client_failing_with(message: str) -> tuple[EtcdClient, list[str]]:
    client = EtcdClient(["127.0.0.1:1"], request_timeout_s=0.1)
    calls: list[str] = []

    async def unary_once(what: str, method: Any, request: Any) -> Any:
        calls.append(what)
        raise EtcdError(f"etcd {what} failed: UNAVAILABLE: {message}")

    client._unary_once = unary_once  # type: ignore[method-assign]
    return client, calls


def test_a_write_during_an_etcd_election_fails_with_etcd_error_and_is_not_retried() -> None:
    # Found by the simulation (tests/sim): a write answered "no leader" used to fall out of
    # the retry loop as AssertionError("unreachable"), which no EtcdError handler catches
    # (MachineSession.establish died with it, and fleetd with it).
    async def main() -> None:
        client, calls = _client_failing_with("etcdserver: no leader")
        with pytest.raises(EtcdError, match="no leader"):
            await client.put("/k", b"v")
        assert calls == ["put /k"]
        with pytest.raises(EtcdError, match="no leader"):
            await client.grant(5)
        await client.close()
    asyncio.run(main())


def test_a_read_during_an_etcd_election_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("fleetd.registry._etcd.READ_RETRY_S", 0.0)

    async def main() -> None:
        client, calls = _client_failing_with("etcdserver: leader changed")
        with pytest.raises(EtcdError, match="leader changed"):
            await client.get("/k")
        assert len(calls) == 7
        await client.close()
    asyncio.run(main())
