"""This host's presence in the cluster: its identity and the etcd lease everything live hangs on.

The machine key, the unit states the agent publishes and the engine leadership are all attached
to one lease, renewed every `agent_ttl/3`. When renewal fails for longer than the TTL the lease
must be presumed gone: `on_lease_lost` fires (the agent fences) and a new lease is sought.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from fleetd import metrics
from fleetd.registry import EtcdError, MachineRecord, Registry, backoff_sleep

log = logging.getLogger("fleetd.machine")


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

    @property
    def renew_interval_s(self) -> float:
        # 0.4 x TTL: two renewal attempts fit in one TTL, and an idle cluster costs at most
        # machines / (ttl/2.5) keep-alives per second.
        return self.ttl_s * 0.4

    async def establish(self) -> None:
        """Take a new lease and register the machine under it, retrying until etcd answers."""
        attempt = 0
        while True:
            sent = time.monotonic()
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
        """Renew the lease forever, fence when it may have expired, re-register after."""
        await asyncio.gather(self._renew_loop(), self._watchdog())

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.renew_interval_s)
            if not self.lease:
                await self.establish()
                continue
            lease = self.lease
            # etcd restarts the TTL when it handles the request, which is after we send it:
            # counting from the send keeps our deadline ahead of etcd's.
            sent = time.monotonic()
            try:
                ttl = await self.registry.renew_lease(lease)
            except EtcdError as e:
                log.warning("lease renewal failed (%s); %.1fs left before fencing", e,
                            self.fence_deadline - time.monotonic())
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
    def fence_deadline(self) -> float:
        return self._last_renewed + self.ttl_s - self.fence_margin_s

    async def _watchdog(self) -> None:
        """Fence on time, independently of renewal calls that may hang on a dead network."""
        while True:
            left = self.fence_deadline - time.monotonic()
            if self.lease and left <= 0:
                log.error("lease %x not renewed for %.1fs (ttl %ss): presumed expired",
                          self.lease, time.monotonic() - self._last_renewed, self.ttl_s)
                await self._lost()
                continue
            await asyncio.sleep(min(max(left, 0.05), self.renew_interval_s))

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
