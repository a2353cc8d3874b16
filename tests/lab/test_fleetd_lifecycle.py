"""fleetd's own lifecycle on the nspawn lab (system manager, real `systemctl`), through
`fleet-lab` and `fleetctl` only: a killed-and-stopped fleetd and a frozen one are fenced by
systemd's dead-man timer (the unit moves, never two copies); `systemctl stop fleetd` stops
the machine's units and takes it out of list-machines (outlasting fleetd.service's own stop
timeout for a unit whose stop is longer), `systemctl start fleetd` brings them back;
`systemctl restart fleetd` keeps them running with the same MainPID.

Ground truth: a sampler inside every machine prints `date +%s.%N` and `systemctl is-active`
every 50 ms (the containers share the host's clock); each machine's running intervals, widened
to the neighbouring samples that saw the unit stopped, must never overlap another machine's.
"""

from __future__ import annotations

import pathlib
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from fleetd.after_exit import HANDED_OVER_LOG
from fleetd.config import Config
from fleetd.fencing import HANDOVER_TTL_S, engine_grace_s, fence_point_s
from fleetd.systemd._manager import STOP_TIMEOUT_DROP_IN
from tests.lab.conftest import (
    BIN,
    active_on,
    fleetctl,
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

TTL_S = int(Config().agent_ttl)  # fleetd's default agent_ttl (the lab does not change it)
NOT_STOPPED = frozenset({"active", "activating", "deactivating", "reloading", "refreshing"})


class MachineSampler:
    """`systemctl is-active UNIT` every 50 ms inside every machine, timestamped there."""

    def __init__(self, unit: str) -> None:
        self.unit = unit
        self.samples: dict[str, list[tuple[float, bool]]] = {}
        self._procs: list[subprocess.Popen[str]] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> MachineSampler:
        script = (f"while :; do echo \"$(date +%s.%N) $(systemctl is-active {self.unit})\"; "
                  "sleep 0.05; done")
        exe = BIN / "fleet-lab"
        for m in machines():
            name = m["name"]
            self.samples[name] = []
            p = subprocess.Popen([str(exe), "exec", name, "--", "timeout", "300", "sh", "-c",
                                  script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 text=True)
            self._procs.append(p)
            t = threading.Thread(target=self._read, args=(name, p), daemon=True)
            t.start()
            self._threads.append(t)
        wait_until(lambda: all(self.samples.values()), 30, what="a sample from every machine")
        return self

    def _read(self, name: str, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            ts, _, state = line.strip().partition(" ")
            try:
                self.samples[name].append((float(ts), state in NOT_STOPPED))
            except ValueError:
                continue

    def __exit__(self, *exc: object) -> None:
        for p in self._procs:
            p.terminate()
        for p in self._procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        for t in self._threads:
            t.join(5)

    def intervals(self, name: str) -> list[tuple[float, float]]:
        """Where `unit` may have run on `name`: from the last stopped sample before a running
        stretch to the first stopped sample after it (or +inf while it still runs)."""
        out = []
        samples = self.samples[name]
        start: float | None = None
        prev_stopped = float("-inf")
        for ts, running in samples:
            if running and start is None:
                start = prev_stopped
            elif not running:
                if start is not None:
                    out.append((start, ts))
                    start = None
                prev_stopped = ts
        if start is not None:
            out.append((start, float("inf")))
        return out

    def overlaps(self) -> list[str]:
        found = []
        names = sorted(self.samples)
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                for s1, e1 in self.intervals(a):
                    for s2, e2 in self.intervals(b):
                        if s1 < e2 and s2 < e1:
                            found.append(f"{a} [{s1:.2f}, {e1:.2f}] and {b} [{s2:.2f}, {e2:.2f}]")
        return found

    def stopped_at(self, name: str) -> float:
        """Time of the first sample seeing the unit stopped after it last ran on `name`."""
        return self.intervals(name)[-1][1]

    def started_at(self, name: str) -> float:
        """Time of the first sample seeing it run on `name` (after its last stop there)."""
        last_stop = max((ts for ts, running in self.samples[name] if not running),
                        default=float("-inf"))
        return min(ts for ts, running in self.samples[name] if running and ts > last_stop)


def fleetd_pid(name: str) -> str:
    return lab("exec", name, "--", "systemctl", "show", "-p", "MainPID", "--value",
               "fleetd").stdout.strip()


def move_bound_s() -> float:
    return TTL_S + engine_grace_s(TTL_S) + 20


@pytest.mark.parametrize("fault", ["kill-and-stop", "freeze"])
def test_fleetd_down_or_frozen_the_unit_moves_and_never_runs_twice(
        units_dir: pathlib.Path, fault: str) -> None:
    unit = write_unit(units_dir, f"lab-{fault}.service")
    name = f"lab-{fault}.service"
    fleetctl("start", unit)
    victim = only_holder(name, 60)
    with MachineSampler(name) as sampler:
        t0 = time.time()
        if fault == "freeze":
            lab("exec", victim, "--", "systemctl", "kill", "-s", "STOP", "fleetd")
        else:
            # Killed, then stopped before Restart= brings it back: fleetd stays down.
            lab("exec", victim, "--", "sh", "-c",
                "systemctl kill -s KILL fleetd; systemctl stop fleetd")
            assert lab("exec", victim, "--", "systemctl", "is-active", "fleetd",
                       check=False).stdout.strip() != "active"
        # systemd's word, not fleetctl's: the lab's fleetctl endpoint may be the victim.
        new = wait_until(lambda: next((n for n in active_on(name) if n != victim), None),
                         move_bound_s(), what=f"{name} active on a machine other than {victim}")
        wait_until(lambda: sampler.samples[new] and sampler.samples[new][-1][1], 10,
                   what="the sampler inside the new holder sees it")
        # Not a synchronisation: the samplers watch one more second for a second copy.
        time.sleep(1)
    overlaps = sampler.overlaps()
    fenced_s = sampler.stopped_at(victim) - t0
    moved_s = sampler.started_at(new) - t0
    print(f"\n{fault}: {victim} fenced {fenced_s:.1f}s after the fault, {name} running on "
          f"{new} {moved_s:.1f}s after it ({sum(map(len, sampler.samples.values()))} samples)")
    assert not overlaps, "two copies at once: " + "; ".join(overlaps)
    assert not is_active(victim, name)
    # kill -9 runs fleetd.service's ExecStopPost= (fleetd --after-exit): unless the stop job
    # came first, it moved the machine to a restart lease, whose timer fences instead.
    assert fenced_s < (fence_point_s(HANDOVER_TTL_S) + 1 if fault == "kill-and-stop"
                       and TTL_S < HANDOVER_TTL_S else TTL_S)
    if fault == "freeze":
        lab("exec", victim, "--", "systemctl", "kill", "-s", "CONT", "fleetd")
        wait_machines(3)
        holds_for(lambda: not is_active(victim, name), 2,
                  what=f"the thawed {victim} not starting its old copy")
        assert only_holder(name, 30) == new


def started_unit(units_dir: pathlib.Path, name: str) -> tuple[str, Callable[[], str]]:
    """Start unit `name` (a sleeper) through fleetctl: its machine and a reader of its
    MainPID there (checked to be a process)."""
    fleetctl("start", write_unit(units_dir, name))
    holder = only_holder(name, 60)

    def main_pid() -> str:
        return lab("exec", holder, "--", "systemctl", "show", "-p", "MainPID", "--value",
                   name).stdout.strip()

    assert main_pid() not in ("", "0")
    return holder, main_pid


def test_kill_9_of_fleetd_and_its_restart_keep_the_unit_and_its_main_pid(
        units_dir: pathlib.Path) -> None:
    # A crash (SIGKILL, OOM) followed by systemd's Restart=on-failure: the next fleetd adopts
    # the unit. At the default 4 s the dead-man timer would fire 1.1-1.5 s after the kill,
    # before RestartSec=2s is over; fleetd.service's ExecStopPost= hands the machine over.
    holder, main_pid = started_unit(units_dir, "lab-crash.service")
    pid = main_pid()
    before = fleetd_pid(holder)
    since = lab("exec", holder, "--", "date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    lab("exec", holder, "--", "systemctl", "kill", "-s", "KILL", "fleetd")
    wait_until(lambda: fleetd_pid(holder) not in ("", "0", before), 30,
               what="fleetd restarted by systemd")
    holds_for(lambda: main_pid() == pid, max(TTL_S, HANDOVER_TTL_S) + 3,
              what="the adopted unit's process (past both leases' expiry)")
    assert only_holder("lab-crash.service", 10) == holder
    log = lab("exec", holder, "--", "journalctl", "-u", "fleetd", "-o", "cat", "--no-pager",
              "--since", since).stdout
    if TTL_S < HANDOVER_TTL_S:
        assert HANDED_OVER_LOG in log, log[-3000:]


def test_systemctl_stop_fleetd_stops_units_and_leaves_the_cluster_start_brings_them_back(
        units_dir: pathlib.Path) -> None:
    target = machines()[1]  # not the lab's fleetctl endpoint (m1): that one goes away here
    mid = target["machine_id"]
    pinned = write_unit(units_dir, "lab-pinned.service", xfleet=f"MachineID={mid}")
    monitor = write_unit(units_dir, "lab-monitor.service", xfleet="Global=true")
    fleetctl("start", pinned, monitor)
    name = target["name"]
    wait_until(lambda: is_active(name, "lab-pinned.service")
               and is_active(name, "lab-monitor.service"), 60, what="units on the machine")
    lab("exec", name, "--", "systemctl", "stop", "fleetd")
    # fleet's TestNodeShutdown: its units are stopped (and unloaded), it is gone from
    # list-machines at once (lease revoked, not left to lapse).
    for u in ("lab-pinned.service", "lab-monitor.service"):
        assert not is_active(name, u)
        load = lab("exec", name, "--", "systemctl", "show", "-p", "LoadState", "--value", u,
                   check=False).stdout.strip()
        assert load == "not-found", (u, load)
    listed = fleetctl("list-machines", "--no-legend", "-l").stdout
    assert mid not in listed
    lab("exec", name, "--", "systemctl", "start", "fleetd")
    wait_until(lambda: is_active(name, "lab-pinned.service")
               and is_active(name, "lab-monitor.service"), 60,
               what="units back after systemctl start fleetd")
    assert mid in fleetctl("list-machines", "--no-legend", "-l").stdout


def test_systemctl_stop_fleetd_outlasts_its_own_stop_timeout_for_a_unit_that_stops_slowly(
        units_dir: pathlib.Path) -> None:
    """A unit may claim a longer stop (its own TimeoutStopSec=) than fleetd.service gives
    fleetd to exit: fleetd extends its stop timeout for the units' stops, so it still stops
    and unloads every unit and leaves the cluster instead of being killed halfway. The unit
    has [Install] links, so the purge ends with a daemon-reload, which re-arms fleetd's own
    stop timer from TimeoutStopSec= (the extension forgotten): fleetd survives that too."""
    target = machines()[2]
    name, mid = target["name"], target["machine_id"]
    done = "/run/lab-slowstop.done"
    slow = units_dir / "lab-slowstop.service"
    slow.write_text("[Service]\nExecStart=/bin/sleep infinity\n"
                    f"ExecStop=/bin/sh -c 'sleep 4; touch {done}'\nTimeoutStopSec=6\n"
                    "\n[Install]\nWantedBy=multi-user.target\n"
                    f"\n[X-Fleet]\nMachineID={mid}\n")
    monitor = write_unit(units_dir, "lab-slowstop-monitor.service", xfleet="Global=true")
    units = ("lab-slowstop.service", "lab-slowstop-monitor.service")
    fleetctl("start", str(slow), monitor)
    wait_until(lambda: all(is_active(name, u) for u in units), 60, what="units on the machine")
    drop_in = "/run/systemd/system/fleetd.service.d/override.conf"  # as systemctl edit
    lab("exec", name, "--", "sh", "-c",
        f"mkdir -p {drop_in.rsplit('/', 1)[0]} && printf '[Service]\\nTimeoutStopSec=2s\\n' "
        f"> {drop_in} && rm -f {done} && systemctl daemon-reload")
    try:
        stopped = lab("exec", name, "--", "systemctl", "stop", "fleetd", check=False)
        result = lab("exec", name, "--", "systemctl", "show", "-p", "Result", "--value",
                     "fleetd", check=False).stdout.strip()
        assert stopped.returncode == 0 and result == "success", (stopped.stderr, result)
        assert lab("exec", name, "--", "test", "-e", done, check=False).returncode == 0, \
            "the unit's ExecStop= did not finish"
        for u in units:
            load = lab("exec", name, "--", "systemctl", "show", "-p", "LoadState", "--value",
                       u, check=False).stdout.strip()
            assert not is_active(name, u) and load == "not-found", (u, load)
        assert mid not in fleetctl("list-machines", "--no-legend", "-l").stdout
        own = f"/run/systemd/system/fleetd.service.d/{STOP_TIMEOUT_DROP_IN}"
        assert lab("exec", name, "--", "test", "-e", own, check=False).returncode != 0, \
            "fleetd left its stop-timeout drop-in behind"
    finally:
        lab("exec", name, "--", "sh", "-c", f"rm -f {drop_in} {done} && systemctl daemon-reload",
            check=False)
        lab("exec", name, "--", "systemctl", "start", "fleetd", check=False)
    # The engine holds the slow unit for its stop bound (3 x 6 s) after the machine left.
    wait_until(lambda: all(is_active(name, u) for u in units), 60,
               what="units back after systemctl start fleetd")


def test_systemctl_restart_fleetd_keeps_the_unit_and_its_main_pid(
        units_dir: pathlib.Path) -> None:
    holder, main_pid = started_unit(units_dir, "lab-upgrade.service")
    pid = main_pid()
    before = fleetd_pid(holder)
    lab("exec", holder, "--", "systemctl", "restart", "fleetd")
    assert fleetd_pid(holder) != before
    # Past the TTL and the engine's grace: neither the old lease lapsing nor the old dead-man
    # timer touches the adopted unit.
    holds_for(lambda: main_pid() == pid, max(TTL_S, HANDOVER_TTL_S) + 3,
              what="the adopted unit's process (past the restart lease's expiry too)")
    assert only_holder("lab-upgrade.service", 10) == holder
    assert main_pid() == pid
