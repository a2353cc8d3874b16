"""`fleetd --after-exit`: fleetd.service's ExecStopPost=, the hand-over after a crash.

A fleetd that exits for a restart hands its machine over to a lease of
`fencing.HANDOVER_TTL_S` (`Agent.hand_over`), so the next fleetd adopts the units instead of
finding them fenced. A fleetd killed with SIGKILL (or dying of a bug, or OOM-killed) cannot.
At a short `agent_ttl` the dead-man timer then fences its units (`fencing.fence_point_s`:
1.5 s after the last renewal at 4 s) before systemd has even restarted it, and the next
fleetd starts them again: new processes, for no reason but the crash.

systemd runs ExecStopPost= as soon as fleetd's main process is gone, however it went. This
command does there what the exiting fleetd would have done: it moves the machine's
registration and unit states from the dead fleetd's lease to a new `HANDOVER_TTL_S` one, then
arms the dead-man timer for that lease's fence point and stops the older timers. The
never-two-copies argument is the restart's (`fleetd.fencing`): the registration is on the new
lease before the old lease's timer is replaced, and the new timer fences before the new lease
can expire. If any step fails or comes late, the old timer fences at its point, as before.

It does nothing (and says why) when fleetd exited cleanly (`SERVICE_RESULT=success`: a stop
already purged, a restart already handed over), when fleetd's unit is being stopped, when the
units are already fenced, when the TTL's own fence point outlasts a restart, when the
registration is gone, not this host's, or already on a hand-over lease: a fleetd that keeps
crashing gets one hand-over, not a lease renewed forever by its ExecStopPost=.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import TYPE_CHECKING

from fleetd import clock, fencing
from fleetd.systemd.fence_timers import arm_replacing_older, fence_timer_name

if TYPE_CHECKING:
    from fleetd.config import Config
    from fleetd.registry import Registry
    from fleetd.systemd import UnitManager

log = logging.getLogger("fleetd.after_exit")

#: What the log says when the hand-over is done (tests and the lab bench look for it).
HANDED_OVER_LOG = "handed over after fleetd's exit"


async def hand_over_after_exit(registry: Registry, systemd: UnitManager, machine_id: str,
                               host: tuple[str, str], ttl_s: int, service_result: str | None,
                               own_job: str | None) -> str:
    """The hand-over (see the module); returns what was done, as one line for the log.

    `host` is this host's (ip, hostname): a registration from another host under the same
    machine id is not ours to move. `service_result` is systemd's $SERVICE_RESULT, `own_job`
    the job pending for fleetd's unit ("stop", "restart" or None)."""
    if service_result == "success":
        return "fleetd exited cleanly: nothing to hand over"
    if ttl_s >= fencing.HANDOVER_TTL_S:
        return (f"agent_ttl {ttl_s}s: its fence point outlasts a restart, nothing to hand "
                "over")
    if own_job == "stop":
        return "fleetd is being stopped: its units are fenced at the lease's deadline"
    if (await systemd.unit_status(fencing.FENCE_TARGET)).active_state in ("active",
                                                                         "activating"):
        return "the units are already fenced: nothing to hand over"
    reg = await registry.machine_registration(machine_id)
    if reg is None:
        return f"machine {machine_id} is not registered: nothing to hand over"
    record, old_lease, granted, left = reg
    if (record.ip, record.hostname) != host:
        return (f"machine {machine_id} is registered by another host (ip {record.ip}, "
                f"hostname {record.hostname}): not handing it over")
    if left <= 0:
        return f"lease {old_lease:x} has expired: nothing to hand over"
    if granted != ttl_s:
        return (f"lease {old_lease:x} is a hand-over lease (ttl {granted}s): a fleetd that "
                "exits again before taking over gets no second one")
    sent = clock.now()
    lease = await registry.grant_lease(fencing.HANDOVER_TTL_S)
    moved = await registry.move_machine_to_lease(machine_id, old_lease, lease)
    if not moved:
        await registry.revoke_lease(lease)
        return f"machine {machine_id}'s registration changed meanwhile: not handing it over"
    # The registration is on the new lease: arm its timer, then retire the older ones.
    name = fence_timer_name(time.time_ns() // 1000)
    await arm_replacing_older(systemd, name, fencing.fence_delay_s(fencing.HANDOVER_TTL_S,
                                                                  clock.now() - sent))
    return (f"machine {machine_id} {HANDED_OVER_LOG}: {moved} keys moved from lease "
            f"{old_lease:x} to {lease:x} (ttl {fencing.HANDOVER_TTL_S}s), dead-man timer "
            f"{name} armed {fencing.fence_point_s(fencing.HANDOVER_TTL_S):.1f}s from the "
            "grant")


async def run(cfg: Config) -> int:
    """Connect to etcd and systemd as fleetd does and hand over; 0 unless something failed.
    The whole hand-over is bounded by the old lease's fence point: past it the old timer has
    fenced and there is nothing left to save."""
    from fleetd.config import read_machine_id
    from fleetd.main import connect_systemd, detect_public_ip, etcd_client
    from fleetd.registry import Registry

    machine_id = read_machine_id(cfg)
    registry = Registry(etcd_client(cfg, min(cfg.etcd_request_timeout, 1.0)),
                        cfg.etcd_key_prefix)
    host = (cfg.public_ip or detect_public_ip(cfg.etcd_servers), socket.gethostname())
    systemd = None
    try:
        systemd = await connect_systemd(cfg)
        own_job = await systemd.job_type_of_pid(os.getpid())
        said = await asyncio.wait_for(
            hand_over_after_exit(registry, systemd, machine_id, host, cfg.agent_ttl_s(),
                                 os.environ.get("SERVICE_RESULT"), own_job),
            fencing.fence_point_s(cfg.agent_ttl_s()))
    except Exception as e:  # etcd or systemd away, or too late: the old timer fences
        log.error("hand-over after fleetd's exit failed (the units are fenced at the old "
                  "lease's deadline): %s", e or type(e).__name__)
        return 1
    finally:
        if systemd is not None:
            await systemd.close()
        await registry.close()
    log.info("%s", said)
    return 0
