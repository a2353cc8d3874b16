"""This host's presence in the cluster: its identity and the etcd lease everything live hangs on.

The machine key, the unit states the agent publishes and the engine leadership are all attached
to one lease, renewed every `agent_ttl/3`. When renewal fails for longer than the TTL the lease
must be presumed gone: `on_lease_lost` fires (the agent fences) and a new lease is sought.
Unless `outage_check` says etcd is down for every machine (see `fleetd.peers`): then no lease
can expire, and the session holds (keeps its units) until etcd answers again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fleetd import clock, metrics
from fleetd.registry import EtcdError, MachineRecord, Registry, backoff_sleep

log = logging.getLogger("fleetd.machine")

#: How often a holding watchdog asks its peers again.
HOLD_RECHECK_S = 1.0
#: Pause before retrying a failed lease renewal.
RENEW_RETRY_S = 0.25


@dataclass
class MachineIdentity:
    id: str
    ip: str
    metadata: dict[str, str] = field(default_factory=dict)
    hostname: str = field(default_factory=socket.gethostname)
    version: str = ""
    api_address: str = ""  # where other fleetds reach this one's gRPC API

    def record(self) -> MachineRecord:
        return MachineRecord(self.id, self.ip, dict(self.metadata), self.hostname, self.version,
                             api_address=self.api_address)


class MachineSession:
    """Holds this machine's lease and registration; `lease` is 0 while there is none."""

    def __init__(self, registry: Registry, identity: MachineIdentity, ttl_s: int) -> None:
        self.registry = registry
        self.identity = identity
        self.ttl_s = max(2, int(ttl_s))
        self.lease = 0
        self.generation = 0  # bumps every time a new lease is taken
        self.lease_changed = asyncio.Event()
        self.on_lease_lost: list[Callable[[], Awaitable[None]]] = []
        self.on_new_lease: list[Callable[[int], Awaitable[None]]] = []
        self._last_renewed = 0.0
        self.renewals = 0
        # Before fencing: "is etcd down for everyone?", given how long it has failed us.
        self.outage_check: Callable[[float], Awaitable[bool]] | None = None
        self.holding = False  # past the fence deadline, but etcd is down for everyone
        self.holds = 0  # outages held through, for tests and logs

    @property
    def renew_interval_s(self) -> float:
        # 0.4 x TTL: two renewal attempts fit in one TTL, and an idle cluster costs at most
        # machines / (ttl/2.5) keep-alives per second.
        return self.ttl_s * 0.4

    async def establish(self) -> None:
        """Take a new lease and register the machine under it, retrying until etcd answers."""
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
        for cb in self.on_new_lease:
            await cb(lease)
        self.lease_changed.set()
        self.lease_changed = asyncio.Event()

    @property
    def fence_margin_s(self) -> float:
        """How long before etcd can expire the lease the agent stops its units."""
        return max(0.5, self.ttl_s * 0.1)

    async def run(self) -> None:
        """Renew the lease forever, fence when it may have expired, re-register after; stop
        (MachineIdConflict) if another machine takes over this machine id's registration."""
        await asyncio.gather(self._renew_loop(), self._watchdog(),
                             self.registry.guard_registration(self.identity.record,
                                                              lambda: self.lease))

    async def _renew_loop(self) -> None:
        retry = False
        while True:
            # After a failure retry soon (an etcd leader election lasts about a second), each
            # attempt short enough that several fit before the fence deadline.
            await asyncio.sleep(RENEW_RETRY_S if retry else self.renew_interval_s)
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
                await self._lost()
                await self.establish()
                continue
            self._last_renewed = sent
            self.renewals += 1
            metrics.LEASE_RENEWALS.inc()

    @property
    def renew_timeout_s(self) -> float:
        return max(0.5, self.ttl_s * 0.2)

    @property
    def fence_deadline(self) -> float:
        return self._last_renewed + self.ttl_s - self.fence_margin_s

    @property
    def outage_check_lead_s(self) -> float:
        """How long before the fence deadline the peers are asked (their answers take up to
        `fleetd.peers.PEER_TIMEOUT_S`), so that fencing, if due, still happens on time."""
        return min(1.5, self.ttl_s * 0.25) if self.outage_check else 0.0

    async def _watchdog(self) -> None:
        """Fence on time, independently of renewal calls that may hang on a dead network."""
        while True:
            lead = self.outage_check_lead_s
            left = self.fence_deadline - clock.now()
            if self.lease and left <= lead:
                if await self._hold():
                    await asyncio.sleep(HOLD_RECHECK_S)
                    continue
                left = self.fence_deadline - clock.now()
                if left > 0:
                    # Asked early: fence at the deadline unless the lease renews meanwhile.
                    await asyncio.sleep(left)
                    if self.fence_deadline > clock.now() or not self.lease:
                        continue
                log.error("lease %x not renewed for %.1fs (ttl %ss): presumed expired",
                          self.lease, clock.now() - self._last_renewed, self.ttl_s)
                await self._lost()
                continue
            if self.holding and left > 0:
                self.holding = False
                log.warning("etcd is back: lease %x renewed, units kept", self.lease)
            await asyncio.sleep(min(max(left - lead, 0.05), self.renew_interval_s))

    async def _hold(self) -> bool:
        """True to keep the units running past the fence deadline: etcd is down for everyone
        (so it expires no lease), or it just came back and our lease renewed."""
        if self.outage_check is None:
            return False
        etcd = self.registry.etcd
        outage = etcd.unreachable_for_s() or (clock.now() - self._last_renewed)
        try:
            down = await self.outage_check(outage)
        except Exception:
            log.exception("asking peers about etcd failed")
            down = False
        if down:
            if not self.holding:
                self.holds += 1
                log.warning("lease %x not renewed for %.1fs, but etcd answers no machine: "
                            "holding units (etcd extends every lease when it returns)",
                            self.lease, clock.now() - self._last_renewed)
            self.holding = True
            return True
        if self.holding:
            # Some machine reaches etcd again: it is back, with every lease extended by its new
            # leader. Renew now (our channel may still be reconnecting) rather than fence.
            deadline = clock.now() + self.ttl_s / 2
            while clock.now() < deadline:
                sent = clock.now()
                try:
                    ttl = await self.registry.renew_lease(self.lease)
                except EtcdError:
                    await asyncio.sleep(0.2)
                    continue
                if ttl > 0:
                    self._last_renewed = sent
                    self.holding = False
                    log.warning("etcd is back: lease %x renewed, units kept", self.lease)
                    return True
                break
            self.holding = False
        return False

    async def _lost(self) -> None:
        self.lease = 0
        metrics.LEASE_LOSSES.inc()
        for cb in self.on_lease_lost:
            try:
                await cb()
            except Exception:
                log.exception("lease-lost handler failed")

    async def leave(self) -> None:
        """Revoke the lease: the machine leaves the cluster at once and its units move.

        Not done on a plain SIGTERM: a restarting fleetd must find its units still scheduled
        here so it adopts them."""
        if self.lease:
            try:
                await self.registry.revoke_lease(self.lease)
            except EtcdError as e:
                log.warning("revoking lease failed: %s", e)
            self.lease = 0
