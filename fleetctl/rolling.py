"""`fleetctl restart`: restart units in place, all at once or rolling, one batch at a time.

A restart of a unit runs `systemctl restart` on each machine that runs it (through fleetd's
RestartUnit, forwarded to that machine), so its desired state and placement never change. With
`--rolling` the targets (every machine of every named unit: a global unit counts once per
machine) go in batches of `--batch`; each batch must be active again within `--wait-active`
seconds before the next one starts, and the first failure stops the rollout (exit 1).
"""

from __future__ import annotations

import time
from typing import Any

import typer

from fleetctl.cli import POLL_S, app, client, fail
from fleetctl.client import Client, FleetctlError, NotFoundError
from fleetctl.table import short_id


def plan_batches(targets: list[tuple[str, str]], batch: int) -> list[list[tuple[str, str]]]:
    """(unit, machine) targets in consecutive batches of at most `batch`."""
    if batch < 1:
        raise ValueError("--batch must be at least 1")
    return [targets[i:i + batch] for i in range(0, len(targets), batch)]


def _targets(c: Client, names: list[str]) -> list[tuple[str, str]]:
    out = []
    for name in names:
        try:
            u = c.call("GetUnit", name=name)
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


def _active_since(c: Client, name: str, mid: str, old_pid: int) -> tuple[int, str]:
    """(new main PID if active again after the restart else 0, current active/sub state)."""
    for s in c.call("ListUnitStates", names=[name], machine_id=mid).states:
        state = f"{s.active_state}/{s.sub_state}"
        if s.active_state == "active" and (s.main_pid != old_pid or old_pid == 0):
            return int(s.main_pid) or -1, state
        return 0, state
    return 0, "unknown"


def _main_pid(c: Client, name: str, mid: str) -> int:
    for s in c.call("ListUnitStates", names=[name], machine_id=mid).states:
        return int(s.main_pid)
    return 0


@app.command()
def restart(units: list[str] = typer.Argument(..., help="unit names"),
            rolling: bool = typer.Option(False, "--rolling",
                                         help="restart in batches, waiting for each to be active"),
            batch: int = typer.Option(1, "--batch", help="targets per batch with --rolling"),
            wait_active: float = typer.Option(30.0, "--wait-active",
                                              help="seconds a batch may take to be active again"),
            ) -> None:
    """Restart launched units where they run (a global unit on every machine)."""
    from fleetd.unit import normalize_name

    names = [normalize_name(u) for u in units]
    c = client()
    try:
        targets = _targets(c, names)
        try:
            batches = plan_batches(targets, batch if rolling else len(targets))
        except ValueError as e:
            fail(str(e))
        for i, group in enumerate(batches, 1):
            _restart_batch(c, group, wait_active, rolling and len(batches) > 1, i, len(batches))
    except FleetctlError as e:
        fail(str(e), e.exit_code)


def _restart_batch(c: Client, group: list[tuple[str, str]], wait_active_s: float, verbose: bool,
                   index: int, total: int) -> None:
    old: dict[tuple[str, str], int] = {t: _main_pid(c, *t) for t in group}
    if verbose:
        typer.echo(f"Batch {index}/{total}: " + ", ".join(
            f"{n} on {short_id(m, False)}" for n, m in group))
    for name, mid in group:
        r = c.call("RestartUnit", name=name, machine_id=mid)
        if r.exit_code != 0:
            typer.echo(r.output.rstrip(), err=True)
            fail(f"restarting {name} on {mid} failed (systemctl exit {r.exit_code}); "
                 "rollout stopped")
    deadline = time.monotonic() + wait_active_s
    pending: dict[tuple[str, str], Any] = dict.fromkeys(group, "")
    since: dict[tuple[str, str], tuple[int, float]] = {}
    while pending:
        for t in list(pending):
            pid, state = _active_since(c, t[0], t[1], old[t])
            if pid and since.get(t, (0, 0.0))[0] != pid:
                since[t] = (pid, time.monotonic())
            elif not pid:
                since.pop(t, None)
            if pid and time.monotonic() - since[t][1] >= STABLE_S:
                del pending[t]
                typer.echo(f"Unit {t[0]} restarted on {short_id(t[1], False)}")
            elif state.startswith("failed"):
                fail(f"unit {t[0]} on {t[1]} failed after restart (state {state}); "
                     "rollout stopped")
            else:
                pending[t] = state
        if not pending:
            break
        if time.monotonic() > deadline:
            for (name, mid), state in pending.items():
                typer.echo(f"Error: unit {name} on {mid} not active {wait_active_s:g}s after "
                           f"restart (state {state}); rollout stopped", err=True)
            raise typer.Exit(1)
        time.sleep(POLL_S)
