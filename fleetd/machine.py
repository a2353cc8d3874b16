"""This host's presence in the cluster: its identity and the etcd lease everything live hangs on.

The machine key, the unit states the agent publishes and the engine leadership are all attached
to one lease, renewed every `renew_interval_s`. Each successful renewal calls `on_renewed` (the
agent re-arms systemd's dead-man timer, see `fleetd.fencing`). When renewal fails until the
fence deadline the lease must be presumed gone: `on_lease_lost` fires (the agent fences) and
a new lease is sought. There is no "hold": etcd being unreachable is no evidence that it will
not expire the lease. Once the fence is complete the old lease is renewed again until etcd
answers or the lease must have expired: if etcd renews it, it never expired (the fence came
early: fleetd or systemd stalled past the deadline, etcd away for a moment), so no engine moved
the units; the lease is kept and the new-lease handlers run again (the agent re-arms and starts
its units again here). A lease given up for another reason (the switch could not be re-armed)
is revoked, so the machine key and engine leadership go at once instead of at expiry.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fleetd import clock, fencing, metrics
from fleetd.registry import EtcdError, MachineRecord, Registry, backoff_sleep

log = logging.getLogger("fleetd.machine")

#: What the log says when a lease is given up, and when one proved alive after a fence is kept
#: (`python -m bench --lab-only` counts both in the machines' journals).
GIVING_UP_LOG = "giving up lease"
KEPT_LOG = "is still alive in etcd"
#: Pause before retrying a failed lease renewal (the fence point leaves only a few seconds).
RENEW_RETRY_S = 0.1


@dataclass
class MachineIdentity:
    id: str
    ip: str
    metadata: dict[str, str] = field(default_factory=dict)
    hostname: str = field(default_factory=socket.gethostname)
    version: str = ""
    api_address: str = ""  # where other fleetds reach this one's gRPC API
    # -- resources: (cpu, memory, reserved_cpu, reserved_memory) as
    # `fleetd.config.machine_capacity` gives them; zeros publish no capacity --
    capacity: tuple[int, int, int, int] = (0, 0, 0, 0)
    # -- end resources --

    def record(self) -> MachineRecord:
        cpu, memory, reserved_cpu, reserved_memory = self.capacity
        return MachineRecord(self.id, self.ip, dict(self.metadata), self.hostname, self.version,
                             api_address=self.api_address, cpu=cpu, memory=memory,
                             reserved_cpu=reserved_cpu, reserved_memory=reserved_memory)


class MachineSession:
    """Holds this machine's lease and registration; `lease` is 0 while there is none."""

    def __init__(self, registry: Registry, identity: MachineIdentity, ttl_s: int) -> None:
        self.registry = registry
        self.identity = identity
        self.ttl_s = int(ttl_s)
        problem = fencing.ttl_problem(self.ttl_s)
        if problem is not None:
            raise ValueError(f"lease ttl {self.ttl_s}s {problem}")
        self.lease = 0
        self.generation = 0  # bumps every time a new lease is taken
        self.lease_changed = asyncio.Event()
        self.on_lease_lost: list[Callable[[], Awaitable[None]]] = []
        self._losing = asyncio.Lock()  # held while a lease is given up (fence, revoke)
        self.on_new_lease: list[Callable[[int], Awaitable[None]]] = []
        # After each renewal: False means "cannot stay protected" (the dead-man timer could not
        # be re-armed, or it already fired): the lease is given up and the machine fences.
        self.on_renewed: list[Callable[[], Awaitable[bool]]] = []
        self._last_renewed = 0.0
        self.renewals = 0

    @property
    def renew_interval_s(self) -> float:
        return fencing.renew_interval_s(self.ttl_s)

    @property
    def fence_margin_s(self) -> float:
        """How long before etcd can expire the lease the machine fences."""
        return fencing.fence_margin_s(self.ttl_s)

    @property
    def fence_deadline(self) -> float:
        return self._last_renewed + fencing.fence_point_s(self.ttl_s)

    def fence_delay_s(self) -> float:
        """Seconds from now until the fence is due (0: due now)."""
        return fencing.fence_delay_s(self.ttl_s, clock.now() - self._last_renewed)

    @property
    def renew_timeout_s(self) -> float:
        return fencing.renew_timeout_s(self.ttl_s)

    async def establish(self) -> None:
        """Take a new lease and register the machine under it, retrying until etcd answers.

        Never while a `lose()` is fencing: a lease granted meanwhile would run out while its
        new-lease handlers wait for the fence to finish, and fire the switch again (livelock).
        Nothing to do if that fence found the lease still alive (`lose` kept it)."""
        async with self._losing:
            pass
        if self.lease:
            return
        attempt = 0
        while True:
            sent = clock.now()
            try:
                lease = await self.registry.grant_lease(self.ttl_s)
                await self.registry.register_machine(self.identity.record(), lease)
                break
            except EtcdError as e:
                log.warning("registering machine %s failed: %s", self.identity.id, e)
                await backoff_sleep(attempt)
                attempt += 1
        self.lease = lease
        self.generation += 1
        self._last_renewed = sent
        log.info("machine %s registered with lease %x (ttl %ss)", self.identity.id, lease,
                 self.ttl_s)
        await self._lease_taken(lease)

    async def _lease_taken(self, lease: int) -> None:
        """Run the new-lease handlers for `lease` (new, or kept after a fence) and wake the
        components waiting for a lease."""
        for cb in self.on_new_lease:
            # A callback may fail like any request (etcd, systemd): retry it while the lease lasts
            # (the watchdog drops the lease when it runs out, and the next lease retries all).
            attempt = 0
            while self.lease == lease:
                try:
                    await cb(lease)
                    break
                except Exception as e:  # etcd or systemd: neither may end fleetd for good
                    log.warning("new-lease handler failed (%s); retrying", e)
                    await backoff_sleep(attempt)
                    attempt += 1
        self.lease_changed.set()
        self.lease_changed = asyncio.Event()

    async def run(self) -> None:
        """Register, renew the lease forever, fence when it may have expired, re-register
        after; stop (MachineIdConflict) if another machine takes over this machine id's
        registration."""
        if not self.lease:
            await self.establish()
        await asyncio.gather(self._renew_loop(), self._watchdog(),
                             self.registry.guard_registration(self.identity.record,
                                                              lambda: self.lease))

    async def _renew_loop(self) -> None:
        retry = False
        while True:
            # After a failure retry soon (an etcd leader election lasts about a second), each
            # attempt short enough that several fit before the fence deadline.
            # Never let the deadline come first: a registration that took long (etcd just
            # back) leaves less than a full interval before it.
            await asyncio.sleep(RENEW_RETRY_S if retry else min(
                self.renew_interval_s, max(0.05, (self.fence_deadline - clock.now()) / 2)))
            retry = False
            if not self.lease:
                await self.establish()
                continue
            lease = self.lease
            # etcd restarts the TTL when it handles the request, which is after we send it:
            # counting from the send keeps our deadline ahead of etcd's.
            sent = clock.now()
            try:
                ttl = await self.registry.renew_lease(lease, self.renew_timeout_s)
            except EtcdError as e:
                log.warning("lease renewal failed (%s); %.1fs left before fencing", e,
                            self.fence_deadline - clock.now())
                retry = True
                continue
            if lease != self.lease:
                continue  # fenced meanwhile; the next round registers again
            if ttl <= 0:
                log.error("lease %x expired in etcd", lease)
                await self.lose("expired in etcd", keep_if_alive=False)
                await self.establish()
                continue
            self._last_renewed = sent
            self.renewals += 1
            metrics.LEASE_RENEWALS.inc()
            for cb in self.on_renewed:
                if not await cb():
                    await self.lose("the dead-man switch could not be re-armed or fired",
                                    keep_if_alive=False)
                    break

    async def _watchdog(self) -> None:
        """Fence on time, independently of renewal calls that may hang on a dead network."""
        while True:
            if not self.lease:
                await asyncio.sleep(0.1)  # establishing; the new lease brings a new deadline
                continue
            left = self.fence_deadline - clock.now()
            if left <= 0:
                log.error("lease %x not renewed for %.1fs (ttl %ss): presumed expired",
                          self.lease, clock.now() - self._last_renewed, self.ttl_s)
                await self.lose("not renewed in time")
                continue
            await asyncio.sleep(min(max(left, 0.02), self.renew_interval_s))

    async def lose(self, why: str, keep_if_alive: bool = True) -> None:
        """Give the lease up: fence (the `on_lease_lost` handlers), then revoke it if etcd
        answers, so the machine key and engine leadership go at once instead of at expiry.
        With `keep_if_alive` (the fence was for lack of renewals), a lease that etcd still
        renews after the fence is kept instead (`_give_up`)."""
        lease, self.lease = self.lease, 0
        if not lease:
            return
        async with self._losing:
            await self._give_up(lease, why, keep_if_alive)

    async def _give_up(self, lease: int, why: str, keep_if_alive: bool) -> None:
        log.error("%s %x: %s", GIVING_UP_LOG, lease, why)
        metrics.LEASE_LOSSES.inc()
        for cb in self.on_lease_lost:
            try:
                await cb()
            except Exception:
                log.exception("lease-lost handler failed")
        if keep_if_alive:
            answer = await self._renew_after_fence(lease)
            if answer is not None and answer[0] > 0:
                ttl, sent = answer
                log.warning("lease %x %s (%ss left): keeping it, the fenced units start "
                            "again here", lease, KEPT_LOG, ttl)
                metrics.LEASE_KEPT.inc()
                self._last_renewed = sent
                self.lease = lease
                await self._lease_taken(lease)
                return
            if answer is not None:
                return  # etcd says it is gone: nothing to revoke
        try:
            await asyncio.wait_for(self.registry.revoke_lease(lease), fencing.REVOKE_TIMEOUT_S)
        except (EtcdError, TimeoutError) as e:
            log.info("revoking lease %x failed (%s); it lapses on its own", lease, e)

    async def _renew_after_fence(self, lease: int) -> tuple[int, float] | None:
        """Once the fence is complete, try renewing `lease` until etcd answers or the lease
        must have expired by etcd's clock too: (remaining TTL, send time) of the answer, None
        if etcd never answered. The fence may have come early: the dead-man timer fires when a
        renewal's re-arm was late (the event loop or systemd busy for a second, etcd away for
        a moment), while etcd still holds the lease. A renewal that succeeds proves the lease
        never expired, so the machine key never vanished and no engine started these units
        elsewhere: the machine keeps the lease and starts them again where they were, instead
        of handing every unit (global ones included) through a new registration."""
        give_up_at = (self._last_renewed + self.ttl_s * (1 + fencing.CLOCK_RATE_ERROR)
                      + RENEW_RETRY_S)
        while True:
            sent = clock.now()
            try:
                return await self.registry.renew_lease(lease, self.renew_timeout_s), sent
            except EtcdError:
                pass
            if clock.now() + RENEW_RETRY_S >= give_up_at:
                return None
            await asyncio.sleep(RENEW_RETRY_S)

    async def hand_over(self) -> tuple[int, float] | None:
        """Before exiting for a restart: move the registration to a new lease of
        `fencing.HANDOVER_TTL_S` (the old one lapses). Returns (lease, send time of its grant:
        the fence point counts from there), or None if etcd did not answer in time."""
        sent = clock.now()
        try:
            lease = await asyncio.wait_for(self.registry.grant_lease(fencing.HANDOVER_TTL_S),
                                           fencing.HANDOVER_TIMEOUT_S)
            await asyncio.wait_for(self.registry.register_machine(self.identity.record(), lease),
                                   fencing.HANDOVER_TIMEOUT_S)
        except (EtcdError, TimeoutError) as e:
            log.warning("handing the machine over to a restart lease failed: %s", e)
            return None
        self.lease = 0  # this process renews nothing more
        log.info("machine %s handed over to lease %x (ttl %ss) for the restart",
                 self.identity.id, lease, fencing.HANDOVER_TTL_S)
        return lease, sent

    async def update_metadata(self, metadata: dict[str, str]) -> None:
        """Publish new configured ``metadata`` (a fleet.conf reload): the registration under the
        current lease is rewritten now, every later one carries it."""
        self.identity.metadata = dict(metadata)
        if self.lease:
            await self.registry.register_machine(self.identity.record(), self.lease)

    async def leave(self) -> None:
        """Revoke the lease: the machine leaves the cluster at once (list-machines drops it).

        Only after the agent stopped its units (`systemctl stop fleetd`); a restarting fleetd
        keeps its lease alive so the next one finds its units still scheduled here."""
        lease, self.lease = self.lease, 0
        if lease:
            try:
                await asyncio.wait_for(self.registry.revoke_lease(lease),
                                       fencing.REVOKE_TIMEOUT_S * 3)
            except (EtcdError, TimeoutError) as e:
                log.warning("revoking lease failed: %s", e)
