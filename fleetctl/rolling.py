"""`fleetctl restart`: restart units in place, all at once or rolling, one batch at a time.

A restart of a unit runs `systemctl restart` on each machine that runs it (through fleetd's
RestartUnit, forwarded to that machine), so its desired state and placement never change. With
`--rolling` the targets (every machine of every named unit: a global unit counts once per
machine) go in batches of `--batch`; each batch must be active again within `--wait-active`
seconds before the next one starts, and the first failure stops the rollout (exit 1). The
batch's states arrive on the Watch stream (limited to its units), not by polling.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from fleetctl.command import Command, Exit, api_errors, client, echo, fail, flag
from fleetctl.table import short_id

if TYPE_CHECKING:
    from fleetctl.client import Client
    from fleetd.api.pb import fleet_pb2 as pb

Target = tuple[str, str]  # (unit, machine id)


def plan_batches(targets: list[Target], batch: int) -> list[list[Target]]:
    """(unit, machine) targets in consecutive batches of at most `batch`."""
    if batch < 1:
        raise ValueError("--batch must be at least 1")
    return [targets[i:i + batch] for i in range(0, len(targets), batch)]


def _targets(c: Client, names: list[str]) -> list[Target]:
    from fleetctl.client import NotFoundError

    out = []
    for name in names:
        try:
            u = c.get_unit(name)
        except NotFoundError:
            fail(f"Unit {name} does not exist.")
        if u.desired_state != "launched" or not u.machine_ids:
            fail(f"Unable to restart unit {name} in state {u.current_state or 'inactive'}: "
                 "it is not launched")
        out += [(name, mid) for mid in u.machine_ids]
    return out


# A service counts as restarted once it has stayed active with its new main PID this long:
# a Type=simple service is "active" the moment it forks, even if it exits right after.
STABLE_S = 1.0


def active_pid(s: pb.UnitState | None, old_pid: int) -> tuple[int, str]:
    """(new main PID (-1 if it has none) if active again after the restart else 0,
    "active/sub" state)."""
    if s is None:
        return 0, "unknown"
    state = f"{s.active_state}/{s.sub_state}"
    if s.active_state == "active" and (s.main_pid != old_pid or old_pid == 0):
        return int(s.main_pid) or -1, state
    return 0, state


def _restart_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("units", nargs="+", metavar="UNIT", help="unit names")
    flag(p, "--rolling", help="restart in batches, waiting for each to be active")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="targets per batch with --rolling")
    p.add_argument("--wait-active", type=float, default=30.0, metavar="SECONDS",
                   help="seconds a batch may take to be active again")


@api_errors
def _restart(a: argparse.Namespace) -> int:
    from fleetd.unit import normalize_name

    names = [normalize_name(u) for u in a.units]
    c = client()
    targets = _targets(c, names)
    try:
        batches = plan_batches(targets, a.batch if a.rolling else len(targets))
    except ValueError as e:
        fail(str(e))
    for i, group in enumerate(batches, 1):
        _restart_batch(c, group, a.wait_active, a.rolling and len(batches) > 1, i, len(batches))
    return 0


def _restart_batch(c: Client, group: list[Target], wait_active_s: float, verbose: bool,
                   index: int, total: int) -> None:
    import queue
    import threading

    from fleetctl.wait import UnitsSeen

    names = sorted({n for n, _ in group})
    old = {(s.name, s.machine_id): int(s.main_pid) for s in c.list_unit_states(names)}
    if verbose:
        echo(f"Batch {index}/{total}: " + ", ".join(
            f"{n} on {short_id(m, False)}" for n, m in group))
    for name, mid in group:
        r = c.restart_unit(name, mid)
        if r.exit_code != 0:
            echo(r.output.rstrip(), err=True)
            fail(f"restarting {name} on {mid} failed (systemctl exit {r.exit_code}); "
                 "rollout stopped")
    deadline = time.monotonic() + wait_active_s
    events: queue.Queue[pb.WatchEvent | Exception] = queue.Queue()
    seen = UnitsSeen()
    pending: dict[Target, str] = dict.fromkeys(group, "")
    since: dict[Target, tuple[int, float]] = {}  # new PID, first seen active with it
    with c.watch(states=True, names=names) as stream:
        def pump() -> None:
            try:
                for ev in stream:
                    events.put(ev)
            except Exception as e:
                events.put(e)

        threading.Thread(target=pump, daemon=True).start()
        while True:
            now = time.monotonic()
            wake = deadline
            for t in list(pending):
                pid, state = active_pid(seen.states.get(t[0], {}).get(t[1]), old.get(t, 0))
                if pid and since.get(t, (0, 0.0))[0] != pid:
                    since[t] = (pid, now)
                elif not pid:
                    since.pop(t, None)
                if pid and now - since[t][1] >= STABLE_S:
                    del pending[t]
                    echo(f"Unit {t[0]} restarted on {short_id(t[1], False)}")
                elif state.startswith("failed"):
                    fail(f"unit {t[0]} on {t[1]} failed after restart (state {state}); "
                         "rollout stopped")
                else:
                    pending[t] = state
                    if pid:  # wake when it has been stable long enough, even with no event
                        wake = min(wake, since[t][1] + STABLE_S)
            if not pending:
                return
            if now > deadline:
                for (name, mid), state in pending.items():
                    echo(f"Error: unit {name} on {mid} not active {wait_active_s:g}s after "
                         f"restart (state {state}); rollout stopped", err=True)
                raise Exit(1)
            try:
                item = events.get(timeout=max(0.0, wake - now) + 0.001)
            except queue.Empty:
                continue
            if isinstance(item, Exception):
                raise item
            seen.apply(item)


COMMANDS = {c.name: c for c in [
    Command("restart", "Restart launched units where they run (a global unit on every "
            "machine).", _restart_args, _restart),
]}
