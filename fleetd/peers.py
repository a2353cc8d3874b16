"""Is etcd down for everyone, or only for this machine? Asked before fencing.

A machine that cannot renew its lease must stop its units (fencing) because etcd may expire the
lease and the engine may start them elsewhere. But etcd cannot expire anything while it serves
nobody, and when its leader is (re)elected it extends every lease (lessor promotion): so when
etcd is down for the whole cluster, fencing would only stop every unit everywhere for nothing.

Before fencing, the lease watchdog asks the other machines' fleetds (their `api_address`, from
the last machine list this fleetd saw) how long ago etcd last answered them. If a majority of
the known machines (this one included) answer and none of them heard from etcd since this
machine lost it, etcd is down for everyone: hold (keep units running, keep retrying). Otherwise
(peers unreachable, or some peer still reaches etcd) fence as before. The residual risk is a
partition that leaves a majority of the fleet machines together without etcd while etcd keeps
serving a minority this side cannot reach; a cluster where that matters runs etcd on the
fleet machines themselves, so that the side without etcd is the minority.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from fleetd import clock
from fleetd.registry import (
    EtcdError,
    MachineRecord,
    Registry,
    WatchCompacted,
    backoff_sleep,
    decode,
)

log = logging.getLogger("fleetd.peers")

#: How long the watchdog waits for each peer's answer.
PEER_TIMEOUT_S = 1.0
#: A peer whose last etcd answer is older than this probes etcd before it answers (within
#: PEER_PROBE_TIMEOUT_S), so its age is fresh rather than "since my last renewal".
PEER_PROBE_AFTER_S = 0.3
PEER_PROBE_TIMEOUT_S = 0.5

AskPeer = Callable[[str, float], Awaitable[float | None]]


def etcd_down_for_everyone(known_machines: int, own_outage_s: float,
                           peer_ages_s: Sequence[float | None]) -> bool:
    """The hold decision. `known_machines` counts this one; `own_outage_s` is how long etcd has
    been failing this machine; `peer_ages_s` are the other machines' answers (seconds since
    etcd last answered them; None: no answer). True only if a majority answered (this machine
    included) and no peer heard from etcd since this machine lost it."""
    answered = [a for a in peer_ages_s if a is not None]
    if (1 + len(answered)) * 2 <= max(known_machines, 1 + len(peer_ages_s)):
        return False
    return all(a >= own_outage_s for a in answered)


class PeerDirectory:
    """The last known machines (id -> API address), kept current by a watch on the machine
    keys (no request while nothing changes), and the question asked of them before fencing."""

    def __init__(self, registry: Registry, machine_id: str, ask: AskPeer | None) -> None:
        self.registry = registry
        self.machine_id = machine_id
        self.ask = ask
        self.addresses: dict[str, str] = {}
        self.known = False  # the list has been read at least once

    async def run(self) -> None:
        prefix = self.registry.keys.machines
        attempt = 0
        while True:
            try:
                kvs, rev = await self.registry.etcd.get_prefix(prefix)
                self.addresses = {}
                for kv in kvs:
                    m = decode(MachineRecord, kv.value)
                    self.addresses[m.id] = m.api_address
                self.known = True
                attempt = 0
                async for batch in self.registry.watch(prefix, rev + 1):
                    for ev in batch:
                        mid = ev.kv.key[len(prefix):]
                        if ev.kind == "delete":
                            self.addresses.pop(mid, None)
                        else:
                            self.addresses[mid] = decode(MachineRecord, ev.kv.value).api_address
            except WatchCompacted:
                continue
            except EtcdError:
                # Keep the last known list: it is what the watchdog needs while etcd is away.
                await backoff_sleep(attempt)
                attempt += 1

    async def etcd_down_for_everyone(self, own_outage_s: float) -> bool:
        """Ask every known peer (concurrently, PEER_TIMEOUT_S each); see the module doc."""
        if self.ask is None or not self.known:
            return False
        peers = {mid: a for mid, a in self.addresses.items() if mid != self.machine_id}
        known = len(peers) + 1
        t0 = clock.now()
        answers = await asyncio.gather(*(self._ask(a) for a in peers.values()))
        down = etcd_down_for_everyone(known, own_outage_s, answers)
        log.info("etcd unreachable here for %.1fs; peers say %s (%.0f ms): %s",
                 own_outage_s, ", ".join(
                     f"{mid[:8]}=" + ("no answer" if a is None else f"{a:.1f}s ago")
                     for mid, a in zip(peers, answers, strict=True)) or "nothing (no peers)",
                 (clock.now() - t0) * 1000,
                 "etcd is down for everyone: holding units" if down else "fencing")
        return down

    async def _ask(self, address: str) -> float | None:
        if not address or self.ask is None:
            return None
        try:
            return await asyncio.wait_for(self.ask(address, PEER_TIMEOUT_S), PEER_TIMEOUT_S + 0.5)
        except (TimeoutError, OSError):
            return None
        except Exception as e:  # a broken peer must never stop the watchdog from fencing
            log.warning("asking peer %s about etcd failed: %s", address, e)
            return None
