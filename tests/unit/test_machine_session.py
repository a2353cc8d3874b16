"""MachineSession against a scripted registry: a failing new-lease handler is retried, a lease
given up is revoked unless etcd still renews it after the fence (then it is kept), and the
fence deadline keeps a positive margin."""

from __future__ import annotations

import asyncio

import pytest

from fleetd import fencing
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import EtcdError


class ScriptedRegistry:
    """Just the lease calls MachineSession makes."""

    def __init__(self) -> None:
        self.granted = 0
        self.revoked: list[int] = []
        self.alive: set[int] = set()  # leases etcd would still renew
        self.renewed: list[int] = []

    async def renew_lease(self, lease: int, timeout_s: float | None = None) -> int:
        self.renewed.append(lease)
        return 4 if lease in self.alive else 0

    async def grant_lease(self, ttl_s: int) -> int:
        self.granted += 1
        return 100 + self.granted

    async def register_machine(self, record: object, lease: int) -> None:
        pass

    async def revoke_lease(self, lease: int) -> None:
        self.revoked.append(lease)


def session() -> tuple[MachineSession, ScriptedRegistry]:
    reg = ScriptedRegistry()
    return MachineSession(reg, MachineIdentity("m1", "10.0.0.1"),  # type: ignore[arg-type]
                          fencing.min_ttl_s()), reg


def test_an_etcd_error_in_a_new_lease_handler_is_retried_not_fatal() -> None:
    s, _ = session()
    calls = []

    async def flaky(lease: int) -> None:
        calls.append(lease)
        if len(calls) < 3:
            raise EtcdError("etcd hiccup")

    s.on_new_lease.append(flaky)
    asyncio.run(asyncio.wait_for(s.establish(), 10))
    assert s.lease == 101 and calls == [101, 101, 101]


def test_a_lease_given_up_is_fenced_first_then_revoked() -> None:
    s, reg = session()
    order: list[str] = []

    async def fence() -> None:
        order.append(f"fence (lease {s.lease})")

    s.on_lease_lost.append(fence)

    async def go() -> None:
        await s.establish()
        await s.lose("the dead-man switch could not be re-armed", keep_if_alive=False)

    asyncio.run(go())
    assert order == ["fence (lease 0)"] and reg.revoked == [101] and s.lease == 0
    assert reg.renewed == []  # given up for a reason a renewal cannot undo


def test_a_fenced_lease_etcd_says_is_gone_is_replaced_not_revoked() -> None:
    s, reg = session()

    async def go() -> None:
        await s.establish()
        await s.lose("not renewed in time")  # reg: lease 101 not alive
        await s.establish()

    asyncio.run(go())
    assert reg.renewed == [101] and reg.revoked == [] and s.lease == 102


def test_after_a_fence_renewal_is_retried_until_etcd_answers() -> None:
    """etcd unreachable for a moment after the fence: renewal retries until it answers (here
    the third attempt), and the lease, alive all along, is kept."""
    s, reg = session()
    answers = [EtcdError("unreachable"), EtcdError("unreachable"), 4]

    async def renew_lease(lease: int, timeout_s: float | None = None) -> int:
        reg.renewed.append(lease)
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    reg.renew_lease = renew_lease  # type: ignore[method-assign]

    async def go() -> None:
        await s.establish()
        await s.lose("not renewed in time")

    asyncio.run(go())
    assert reg.renewed == [101, 101, 101] and s.lease == 101 and reg.revoked == []


def test_a_lease_etcd_still_renews_after_the_fence_is_kept_not_revoked() -> None:
    """The dead-man timer fired early (fleetd stalled past its deadline) but the lease never
    expired: the machine keeps it, and the new-lease handlers run again for the same lease (the
    agent re-arms and starts its units here); no new lease, nothing revoked."""
    s, reg = session()
    order: list[str] = []

    async def fence() -> None:
        order.append(f"fence (lease {s.lease})")

    async def new_lease(lease: int) -> None:
        order.append(f"new lease {lease}")

    s.on_lease_lost.append(fence)
    s.on_new_lease.append(new_lease)

    async def go() -> None:
        await s.establish()
        reg.alive.add(s.lease)
        woken = asyncio.ensure_future(s.lease_changed.wait())
        deadline_before = s.fence_deadline
        await s.lose("the dead-man timer fired")
        await asyncio.wait_for(woken, 1)  # waiting components (agent, engine) are woken
        assert s.fence_deadline > deadline_before  # counted from the renewal after the fence
        await s.establish()  # what the renew loop does next: nothing, the lease is there

    asyncio.run(go())
    assert order == ["new lease 101", "fence (lease 0)", "new lease 101"]
    assert s.lease == 101 and reg.renewed == [101] and reg.revoked == [] and reg.granted == 1


def test_fence_deadline_is_before_the_ttl_at_the_smallest_ttl() -> None:
    s, _ = session()
    asyncio.run(s.establish())
    assert 0 < s.fence_delay_s() < s.ttl_s
    assert s.fence_margin_s > 0


def test_a_ttl_too_short_for_the_fence_is_refused() -> None:
    with pytest.raises(ValueError, match="renewal intervals"):
        MachineSession(ScriptedRegistry(), MachineIdentity("m1", "10.0.0.1"),  # type: ignore[arg-type]
                       fencing.min_ttl_s() - 1)


def test_a_restart_hands_the_machine_over_to_a_longer_lease() -> None:
    s, reg = session()
    registered: list[int] = []

    async def register_machine(record: object, lease: int) -> None:
        registered.append(lease)

    reg.register_machine = register_machine  # type: ignore[method-assign]

    async def go() -> tuple[int, float] | None:
        await s.establish()
        return await s.hand_over()

    got = asyncio.run(go())
    assert got is not None and got[0] == 102 and registered == [101, 102]
    assert s.lease == 0  # the exiting process renews nothing more
    # The next fleetd gets longer than a whole short-TTL fence point to take over.
    assert fencing.fence_point_s(fencing.HANDOVER_TTL_S) > 3 * fencing.fence_point_s(s.ttl_s)
