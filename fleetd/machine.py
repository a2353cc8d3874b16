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
        return self.ttl_s / 3

    async def establish(self) -> None:
        """Take a new lease and register the machine under it, retrying until etcd answers."""
        attempt = 0
        while True:
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
        self._last_renewed = time.monotonic()
        log.info("machine %s registered with lease %x (ttl %ss)", self.identity.id, lease,
                 self.ttl_s)
        for cb in self.on_new_lease:
            await cb(lease)
        self.lease_changed.set()
        self.lease_changed = asyncio.Event()

    async def run(self) -> None:
        """Renew the lease forever; fence and re-register when it is lost."""
        while True:
            await asyncio.sleep(self.renew_interval_s)
            if not self.lease:
                await self.establish()
                continue
            try:
                ttl = await self.registry.renew_lease(self.lease)
            except EtcdError as e:
                expired = time.monotonic() - self._last_renewed >= self.ttl_s - 0.5
                log.warning("lease renewal failed (%s)%s", e,
                            "; lease presumed expired" if expired else "")
                if expired and self.lease:
                    await self._lost()
                continue
            if ttl <= 0:
                log.error("lease %x expired in etcd", self.lease)
                await self._lost()
                await self.establish()
                continue
            self._last_renewed = time.monotonic()
            self.renewals += 1
            metrics.LEASE_RENEWALS.inc()

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
