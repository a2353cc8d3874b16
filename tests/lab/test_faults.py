"""Fault tests on the nspawn lab, through `fleetctl` and `fleet-lab` only: power cut,
partition, engine leader loss, fleetd restart, sidekick failover, global unit on a late
joiner. Each test leaves every machine running and destroys its units."""

from __future__ import annotations

import pathlib
import time

import pytest

from tests.lab.conftest import (
    active_on,
    fleetctl,
    holders,
    holds_for,
    is_active,
    lab,
    machines,
    only_holder,
    wait_machines,
    wait_until,
    write_unit,
)

pytestmark = pytest.mark.usefixtures("lab_up", "reset_after")


def start_then_fault(units_dir: pathlib.Path, name: str, fault: str) -> tuple[str, str, float]:
    """Start unit `name`, apply `fleet-lab <fault>` to the machine running it, and wait until
    it runs on exactly one other machine: (that victim, the new machine, fault time)."""
    fleetctl("start", write_unit(units_dir, name))
    victim = only_holder(name)
    t0 = time.monotonic()
    lab(fault, victim)
    new = only_holder(name, exclude=victim)
    print(f"{fault} of {victim}: {name} active on {new} after {time.monotonic() - t0:.2f}s")
    return victim, new, t0


def test_power_cut_unit_comes_back_elsewhere_and_not_twice(units_dir: pathlib.Path) -> None:
    victim, new, _ = start_then_fault(units_dir, "lab-power.service", "stop")
    lab("start", victim)
    # the returning machine comes back clean and does not start a second copy
    holds_for(lambda: active_on("lab-power.service") == [new], 8,
              what="lab-power.service on the new machine only")
    assert holders("lab-power.service") == [new]


def test_partition_reschedules_and_the_cut_off_machine_fences_itself(
        units_dir: pathlib.Path) -> None:
    victim, new, t0 = start_then_fault(units_dir, "lab-part.service", "partition")
    # once its lease is gone the cut-off machine stops its own copy
    wait_until(lambda: not is_active(victim, "lab-part.service"), 60,
               what=f"{victim} to stop its copy of lab-part.service")
    print(f"partition of {victim}: fenced after {time.monotonic() - t0:.2f}s")
    lab("heal", victim)
    wait_machines(3)
    holds_for(lambda: active_on("lab-part.service") == [new], 8,
              what="lab-part.service on the new machine only")


def _engine_leader() -> str:
    """The machine whose fleetd last logged taking the engine lead (from its journal)."""
    leaders = []
    for m in machines():
        if m["state"] != "running":
            continue
        log = lab("exec", m["name"], "--", "journalctl", "-u", "fleetd", "-o", "cat",
                  "--no-pager", check=False).stdout
        events = [ln for ln in log.splitlines() if "is now the leader" in ln
                  or "no longer leader" in ln]
        if events and "is now the leader" in events[-1]:
            leaders.append(m["name"])
    assert len(leaders) == 1, leaders
    return leaders[0]


def test_engine_leader_loss_new_units_still_get_scheduled(units_dir: pathlib.Path) -> None:
    leader = wait_until(lambda: _engine_leader(), 30, what="an engine leader")
    lab("stop", leader)
    unit = write_unit(units_dir, "lab-after-leader.service")
    fleetctl("start", "--no-block", unit)
    t0 = time.monotonic()
    where = only_holder("lab-after-leader.service", timeout_s=90, exclude=leader)
    print(f"leader {leader} stopped: new unit active on {where} after "
          f"{time.monotonic() - t0:.2f}s")
    assert _engine_leader() != leader


def test_fleetd_restart_keeps_units_running_with_the_same_pid(units_dir: pathlib.Path) -> None:
    unit = write_unit(units_dir, "lab-keep.service")
    fleetctl("start", unit)
    holder = only_holder("lab-keep.service")

    def main_pid() -> str:
        return lab("exec", holder, "--", "systemctl", "show", "-p", "MainPID", "--value",
                   "lab-keep.service").stdout.strip()

    pid = main_pid()
    assert pid not in ("", "0")
    fleetd_pid = lab("exec", holder, "--", "systemctl", "show", "-p", "MainPID", "--value",
                     "fleetd").stdout.strip()
    lab("exec", holder, "--", "systemctl", "restart", "fleetd")
    assert lab("exec", holder, "--", "systemctl", "show", "-p", "MainPID", "--value",
               "fleetd").stdout.strip() != fleetd_pid
    # past the agent TTL (10 s): the state published by the earlier fleetd has lapsed with
    # its lease, so what fleetctl shows now comes from the restarted one
    holds_for(lambda: main_pid() == pid and holders("lab-keep.service") in ([holder], []), 12,
              what="the same process of lab-keep.service, on its machine only")
    assert only_holder("lab-keep.service", timeout_s=5) == holder
    assert main_pid() == pid


def test_sidekick_follows_its_target_when_the_machine_dies(units_dir: pathlib.Path) -> None:
    target = write_unit(units_dir, "lab-app.service")
    sidekick = write_unit(units_dir, "lab-app-sidekick.service",
                          "BindsTo=lab-app.service\nAfter=lab-app.service\n",
                          "MachineOf=lab-app.service")
    fleetctl("start", target, sidekick)
    victim = only_holder("lab-app.service")
    assert only_holder("lab-app-sidekick.service") == victim
    lab("stop", victim)
    new = only_holder("lab-app.service", exclude=victim)
    assert only_holder("lab-app-sidekick.service", exclude=victim) == new


def test_global_unit_comes_up_on_a_machine_that_joins_later(units_dir: pathlib.Path) -> None:
    lab("stop", "m3")
    unit = write_unit(units_dir, "lab-global.service", xfleet="Global=true")
    fleetctl("start", unit)
    wait_until(lambda: sorted(holders("lab-global.service")) == ["m1", "m2"], 30,
               what="global unit on m1 and m2")
    lab("start", "m3")
    wait_until(lambda: sorted(holders("lab-global.service")) == ["m1", "m2", "m3"], 30,
               what="global unit on the late joiner m3")
    assert is_active("m3", "lab-global.service")
