"""Fencing that holds when fleetd itself fails, on a real cluster (real etcd, real `systemd
--user` managers): the dead-man timer in systemd stops a machine's non-global units while its
fleetd is frozen or dead, before the engine starts them elsewhere.

Ground truth is systemd: a sampler asks every manager (`systemctl is-active`) every ~20 ms and
notes when it first saw the original inactive; the managers and the test share the host's
CLOCK_MONOTONIC, so the replacement's `ExecMainStartTimestampMonotonic` must come after that
(systemd garbage-collects an inactive unit's own timestamps, so they cannot be used).
"""

from __future__ import annotations

import datetime
import pathlib
import signal
import threading
import time

import pytest

from fleetd import fencing
from fleetd.fencing import FENCE_STOP_BOUND_S, engine_grace_s
from fleetd.localcluster import LocalCluster, LocalMachine
from tests.harness.tables import table_rows
from tests.integration.conftest import (
    FRESH_TTL_S,
    UNITS_DIR,
    fleetd_log,
    holder,
    machines_running,
    start_hello_and_monitor,
    unit_rows,
    wait_until,
)

TTL_S = FRESH_TTL_S

# Ignores SIGTERM (the shell and every child it forks), and its ExecStop takes 2 s: with the
# cap (2 s bound / (1 stop command + 2) = 0.67 s per phase) it is inactive ~2 s after the fence.
SLOW_UNIT = """[Unit]
Description=stops slowly: ExecStop sleeps, SIGTERM is ignored

[Service]
ExecStart=/bin/sh -c 'trap "" TERM; while :; do sleep 1; done'
ExecStop=/bin/sleep 2
"""

# States its own stop time: on SIGTERM it takes `secs` seconds to finish (a database flushing),
# then writes its mark and exits cleanly. TimeoutStopSec=6s: whole stop bound 12 s. The handler
# ignores TERM before it works: systemd signals the cgroup again until no new process shows up,
# and a `sleep` forked by the handler in that window was killed too (under load 1 stop in 15
# took 0.1 s, not 3: the cause of two failures of the stop-time test below).
_IDLE = "while :; do sleep 0.1 & wait; done"  # `wait` returns at once on a signal


def graceful_unit(mark: pathlib.Path, secs: float) -> str:
    handler = f'flush() {{ trap "" TERM; sleep {secs:g}; touch {mark}; exit 0; }}'
    return f"""[Unit]
Description=takes {secs:g} s to stop on SIGTERM, then writes its mark

[Service]
ExecStart=/bin/sh -c '{handler}; trap flush TERM; {_IDLE}'
TimeoutStopSec=6s
"""


# Ignores SIGTERM and states no stop time: SIGKILLed after the default cap (TimeoutStopSec=1s).
STUBBORN_UNIT = """[Service]
ExecStart=/bin/sh -c 'trap "" TERM; while :; do sleep 0.1; done'
"""


#: systemd states in which a unit may still have processes: a "deactivating" unit is running.
NOT_STOPPED = frozenset({"active", "activating", "deactivating", "reloading", "refreshing"})


def machines_not_stopped(c: LocalCluster, unit: str) -> list[str]:
    return [m.machine_id for m in c.machines if m.manager.pid is not None
            and m.systemctl("is-active", unit).stdout.strip() in NOT_STOPPED]


def monotonic_prop(m: LocalMachine, unit: str, prop: str) -> int:
    out = m.systemctl("show", "-p", prop, "--value", unit).stdout.strip()
    return int(out or 0)


class Sampler:
    """Polls every machine's systemd for `unit`; `most` is the largest number of machines seen
    where it is not stopped (active, activating, deactivating...) at once."""

    def __init__(self, c: LocalCluster, unit: str) -> None:
        self.c, self.unit = c, unit
        self.most = 0
        self.samples = 0
        self.seen_active: set[str] = set()
        self.stopped_at: dict[str, float] = {}  # machine -> first sample seeing it inactive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            running = machines_not_stopped(self.c, self.unit)
            now = time.monotonic()
            self.most = max(self.most, len(running))
            self.samples += 1
            for mid in running:
                self.seen_active.add(mid)
                self.stopped_at.pop(mid, None)
            for mid in self.seen_active - set(running):
                self.stopped_at.setdefault(mid, now)
            time.sleep(0.02)

    def __enter__(self) -> Sampler:
        self._thread.start()
        wait_until(lambda: self.samples > 0, 5, what="the sampler's first sample")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def assert_moved_after_stop(c: LocalCluster, first: LocalMachine, unit: str,
                            timeout_s: float, sampler: Sampler) -> tuple[LocalMachine, float]:
    """Wait until `unit` runs on another machine; assert the original was inactive before the
    replacement's process started. Returns the new holder and the gap in seconds."""
    mid = wait_until(lambda: next((m for m in machines_running(c, unit)
                                   if m != first.machine_id), None), timeout_s,
                     what=f"{unit} started on another machine")
    second = c.machine(mid)
    started = monotonic_prop(second, unit, "ExecMainStartTimestampMonotonic") / 1e6
    assert started > 0
    assert first.machine_id not in machines_not_stopped(c, unit)
    stopped = sampler.stopped_at.get(first.machine_id)
    assert first.machine_id in sampler.seen_active and stopped is not None
    assert stopped < started, f"replacement started {stopped - started:.3f}s early"
    return second, started - stopped


def expiry_seen_to_start_s(c: LocalCluster, gone: LocalMachine, new: LocalMachine,
                           unit: str) -> float:
    """From the engine's log line noting `gone`'s key vanished to `unit`'s process start on
    `new` (systemd's monotonic timestamp, turned into wall time like the log's)."""
    seen = []
    for m in c.machines:
        for line in fleetd_log(m).splitlines():
            if f"machine {gone.machine_id} left" in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                seen.append(stamp.timestamp())
    assert seen, "no engine noticed the machine leave"
    mono = monotonic_prop(new, unit, "ExecMainStartTimestampMonotonic") / 1e6
    started = time.time() - (time.monotonic() - mono)
    return started - min(seen)


@pytest.mark.parametrize("fault", ["freeze", "kill"])
def test_dead_man_timer_fences_a_frozen_or_dead_fleetd_before_the_unit_moves(
        fresh_cluster: LocalCluster, fault: str) -> None:
    c = fresh_cluster
    first = start_hello_and_monitor(c)
    monitor_pid = first.main_pid("monitor.service")
    with Sampler(c, "hello.service") as sampler:
        t0 = time.monotonic()
        if fault == "freeze":
            first.freeze_fleetd()
        else:
            first.stop_fleetd(signal.SIGKILL)  # and it stays down
        # Nothing in fleetd runs now: only systemd's timer can stop the unit.
        wait_until(lambda: not first.is_active("hello.service"), TTL_S + 2,
                   what="hello.service fenced by systemd's timer")
        fenced_after = time.monotonic() - t0
        second, gap = assert_moved_after_stop(c, first, "hello.service",
                                              TTL_S + engine_grace_s(TTL_S) + 15, sampler)
        moved_after = time.monotonic() - t0
        # The global unit is not fenced: same process all along.
        assert first.main_pid("monitor.service") == monitor_pid
        if fault == "freeze":
            first.thaw_fleetd()
            # Thawed, it finds its deadline passed, comes back through a new lease and does
            # not start its old copy again.
            c.wait_for_machines(3)
            wait_until(lambda: any(r["machine"] == first.machine_id for r in unit_rows(c)
                                   if r["unit"] == "monitor.service"), 15,
                       what="thawed machine republished its states")
            # Not a synchronisation: the sampler watches a window for a second copy.
            time.sleep(1)
    expiry_to_start = expiry_seen_to_start_s(c, first, second, "hello.service")
    print(f"\n{fault}: fenced {fenced_after:.1f}s after the fault, moved after "
          f"{moved_after:.1f}s, gap original inactive -> replacement start {gap:.1f}s, "
          f"lease expiry seen by the engine -> replacement start {expiry_to_start:.2f}s "
          f"(grace {engine_grace_s(TTL_S):.2f}s); {sampler.samples} samples")
    assert expiry_to_start >= engine_grace_s(TTL_S)
    assert sampler.most == 1, "hello.service ran on two machines at once"
    assert machines_running(c, "hello.service") == [second.machine_id]



def test_a_fence_that_came_early_keeps_the_lease_and_starts_the_unit_again_in_place(
        fresh_cluster: LocalCluster) -> None:
    """fleetd frozen past its fence point and thawed before etcd may expire its lease (the
    fence completes `fence_margin_s` ahead of the earliest expiry): systemd's timer stopped the
    unit, as it must, but the lease never expired, so the machine never left and no engine
    moved the unit. The thawed fleetd finds etcd still renewing its lease, keeps it, and starts
    the unit again where it was; at no time does a second copy run."""
    c = fresh_cluster
    first = start_hello_and_monitor(c)
    monitor_pid = first.main_pid("monitor.service")
    hello_pid = first.main_pid("hello.service")
    with Sampler(c, "hello.service") as sampler:
        first.freeze_fleetd()
        t0 = time.monotonic()
        wait_until(lambda: not first.is_active("hello.service"), TTL_S + 2,
                   what="hello.service fenced by systemd's timer")
        first.thaw_fleetd()  # at most the fence point (1.5 s at 4 s) plus the stop: lease alive
        thawed_after = time.monotonic() - t0
        wait_until(lambda: first.is_active("hello.service")
                   and first.main_pid("hello.service") not in (0, hello_pid), 15,
                   what="hello.service started again on the same machine")
        back_after = time.monotonic() - t0
        # Not a synchronisation: the sampler watches a window for a second copy.
        time.sleep(1)
    print(f"\nthawed {thawed_after:.2f}s after the freeze, unit back in place "
          f"{back_after:.2f}s after it")
    assert sampler.most == 1, "hello.service ran on two machines at once"
    assert machines_running(c, "hello.service") == [first.machine_id]
    assert first.main_pid("monitor.service") == monitor_pid  # global: never fenced
    assert "is still alive in etcd" in fleetd_log(first)
    for m in c.machines:  # the machine never left: no engine saw its key vanish
        assert f"machine {first.machine_id} left" not in fleetd_log(m)
    rows = table_rows(c.fleetctl("list-machines", "--no-legend", "-l", "--fields", "machine",
                                 check=True).stdout, ["machine"])
    assert first.machine_id in {r["machine"] for r in rows}


def test_slow_stopping_unit_is_inactive_before_its_replacement_starts(
        fresh_cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    c = fresh_cluster
    unit = tmp_path / "slow.service"
    unit.write_text(SLOW_UNIT)
    c.fleetctl("start", str(unit), check=True)
    first = holder(c, "slow.service")
    with Sampler(c, "slow.service") as sampler:
        first.stop_fleetd(signal.SIGKILL)
        second, gap = assert_moved_after_stop(c, first, "slow.service",
                                              TTL_S + engine_grace_s(TTL_S) + 20, sampler)
    print(f"\nslow unit: replacement started {gap:.1f}s after the original was inactive")
    assert sampler.most == 1
    assert machines_running(c, "slow.service") == [second.machine_id]


def test_one_unit_that_cannot_be_written_does_not_wedge_the_others(
        fresh_cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    c = fresh_cluster
    m = c.machines[0]
    # Not written by fleet: the agent refuses to replace it.
    (m.manager.unit_dir / "blocked.service").write_text(
        "[Service]\nExecStart=/bin/sleep 1000\n")
    names = []
    for name in ("blocked.service", "ok1.service", "ok2.service"):
        (tmp_path / name).write_text(
            f"[Service]\nExecStart=/bin/sleep 1000\n\n[X-Fleet]\nMachineID={m.machine_id}\n")
        names.append(str(tmp_path / name))
    c.fleetctl("start", "--no-block", *names, check=True)
    wait_until(lambda: m.is_active("ok1.service") and m.is_active("ok2.service"), 20,
               what="the other units started")
    rows = wait_until(lambda: (lambda rs: rs if rs and rs[0]["load"] == "error" else None)(
        [r for r in _rows_with_load(c) if r["unit"] == "blocked.service"]), 20,
        what="blocked.service reported with LoadState error")
    assert rows[0]["machine"] == m.machine_id
    assert not m.is_active("blocked.service")
    log = fleetd_log(m)
    # The agent meets the foreign file first as a host unit (fleet's directory holds a file
    # fleet did not write) and refuses the unit before planning any task for it.
    assert "blocked.service: refused, the host has its own" in log


def _rows_with_load(c: LocalCluster) -> list[dict[str, str]]:
    r = c.fleetctl("list-units", "--no-legend", "-l", "--fields", "unit,machine,load,active")
    assert r.returncode == 0, r.stderr
    return table_rows(r.stdout, ["unit", "machine", "load", "active"])


def test_fleetd_stop_purges_and_deregisters_and_start_brings_units_back(
        fresh_cluster: LocalCluster) -> None:
    c = fresh_cluster
    m = start_hello_and_monitor(c)
    with Sampler(c, "hello.service") as sampler:
        t0 = time.monotonic()
        m.stop_fleetd()  # SIGTERM, as `systemctl stop fleetd` outside a restart
        stopped_in = time.monotonic() - t0
        # fleet's TestNodeShutdown: the machine's units are stopped and unloaded, and the
        # machine has left at once (its lease revoked, not lapsed).
        assert not m.is_active("hello.service") and not m.is_active("monitor.service")
        assert m.systemctl("show", "-p", "LoadState", "--value",
                           "hello.service").stdout.strip() == "not-found"
        ids = c.fleetctl("list-machines", "--no-legend", "-l", check=True).stdout
        assert m.machine_id not in ids
        assert_moved_after_stop(c, m, "hello.service", engine_grace_s(TTL_S) + 15, sampler)
    assert sampler.most == 1
    # Starting fleetd again brings its (global) units back.
    m.start_fleetd()
    c.wait_for_machines(3)
    wait_until(lambda: m.is_active("monitor.service"), 20, what="monitor back on the machine")
    print(f"\nfleetd stop took {stopped_in:.1f}s")


def test_restart_while_etcd_is_unreachable_is_fenced_and_comes_back_once(
        fresh_cluster: LocalCluster) -> None:
    c = fresh_cluster
    c.fleetctl("start", str(UNITS_DIR / "hello.service"), check=True)
    m = holder(c, "hello.service")
    pid = m.main_pid("hello.service")
    with Sampler(c, "hello.service") as sampler:
        c.etcd.stop()
        # An upgrade while etcd is away: the new fleetd never gets a lease, so it must never
        # start anything; the previous fleetd's timer in systemd fences the unit.
        m.restart_fleetd()
        wait_until(lambda: m.machine_id not in machines_not_stopped(c, "hello.service"),
                   TTL_S + 2, what="hello.service fenced while fleetd has no lease")
        c.etcd.start()
        wait_until(lambda: len(machines_running(c, "hello.service")) == 1, 60,
                   what="hello.service running once after etcd returned")
        # Not a synchronisation: the sampler watches a window for a second copy.
        time.sleep(1)
    assert sampler.most == 1
    [where] = machines_running(c, "hello.service")
    assert where != m.machine_id or m.main_pid("hello.service") != pid


def _stop_timeout_s(m: LocalMachine, unit: str) -> float | None:
    """The TimeoutStopSec= systemd applies to `unit` (its file and fleet's drop-in)."""
    return fencing.parse_timespan_s(
        m.systemctl("show", "-p", "TimeoutStopUSec", "--value", unit).stdout.strip())


def test_fleetctl_stop_gives_a_unit_its_own_stop_time_and_a_plain_unit_the_default_bound(
        fresh_cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    """The per-unit stop bound on a user's stop: a unit stating TimeoutStopSec= keeps its
    graceful stop (3 s of work after SIGTERM, then its mark), while one that states nothing
    and ignores SIGTERM is still killed within the default bound."""
    c = fresh_cluster
    mark = tmp_path / "flushed"
    (tmp_path / "flush.service").write_text(graceful_unit(mark, 3))
    (tmp_path / "stubborn.service").write_text(STUBBORN_UNIT)
    c.fleetctl("start", str(tmp_path / "flush.service"), str(tmp_path / "stubborn.service"),
               check=True)
    flush, stubborn = holder(c, "flush.service"), holder(c, "stubborn.service")
    assert _stop_timeout_s(flush, "flush.service") == 6.0  # the drop-in keeps it
    assert _stop_timeout_s(stubborn, "stubborn.service") == FENCE_STOP_BOUND_S / 2
    t0 = time.monotonic()
    r = c.fleetctl("stop", "--no-block", "stubborn.service", "flush.service")
    assert r.returncode == 0, r.stderr
    wait_until(lambda: stubborn.systemctl("is-active", "stubborn.service").stdout.strip()
               not in NOT_STOPPED, FENCE_STOP_BOUND_S + 3, interval_s=0.02,
               what="stubborn.service stopped")
    stubborn_s = time.monotonic() - t0
    wait_until(lambda: flush.systemctl("is-active", "flush.service").stdout.strip()
               not in NOT_STOPPED, 12 + 3, interval_s=0.02, what="flush.service stopped")
    flush_s = time.monotonic() - t0
    print(f"\nstop: stubborn (SIGTERM ignored) inactive after {stubborn_s:.2f}s, flush "
          f"(3 s of work on SIGTERM) after {flush_s:.2f}s")
    assert mark.exists(), "the unit's SIGTERM work was cut short"
    assert flush.systemctl("show", "-p", "Result", "--value",
                           "flush.service").stdout.strip() == "success"
    assert flush_s >= 3.0
    # stubborn: SIGTERM, 1 s, SIGKILL: within the bound (+ fleetctl's and D-Bus' latency)
    assert stubborn_s < FENCE_STOP_BOUND_S + 1.0


def test_a_unit_with_a_long_stop_moves_only_after_its_fenced_copy_finished_stopping(
        fresh_cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    """kill -9 of fleetd: the dead-man timer fences at the usual point; the unit's SIGTERM work
    (4 s) runs on past its machine's lease expiry, and the engine holds the unit (alone) for
    its own grace, so the replacement starts after the old copy wrote its mark."""
    c = fresh_cluster
    mark = tmp_path / "flushed"
    (tmp_path / "flush.service").write_text(graceful_unit(mark, 4))
    c.fleetctl("start", str(tmp_path / "flush.service"), check=True)
    first = holder(c, "flush.service")
    bound_s = 12.0  # TimeoutStopSec=6s: SIGTERM phase + SIGKILL phase
    grace_s = fencing.unit_grace_s(TTL_S, bound_s)
    with Sampler(c, "flush.service") as sampler:
        first.stop_fleetd(signal.SIGKILL)  # and it stays down
        # While it waits, `fleetctl why` says what for, and until when.
        why = wait_until(lambda: (lambda out: out if "may still be stopping on" in out
                                  else None)(c.fleetctl("why", "flush.service").stdout),
                         TTL_S + 8, interval_s=0.2, what="fleetctl why naming the long stop")
        assert first.machine_id in why and "placed elsewhere at" in why, why
        assert not [m for m in machines_running(c, "flush.service") if m != first.machine_id]
        second, gap = assert_moved_after_stop(c, first, "flush.service",
                                              TTL_S + grace_s + 15, sampler)
    expiry_to_start = expiry_seen_to_start_s(c, first, second, "flush.service")
    print(f"\nlong stop: replacement started {gap:.1f}s after the old copy was inactive, "
          f"{expiry_to_start:.2f}s after the engine saw the lease expire (unit grace "
          f"{grace_s:.2f}s)")
    assert mark.exists(), "the fence cut the unit's SIGTERM work short"
    assert expiry_to_start >= grace_s
    assert sampler.most == 1, "flush.service ran on two machines at once"
