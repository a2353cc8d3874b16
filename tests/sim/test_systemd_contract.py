"""The fake systemd behaves as a real one where fleet-py relies on it: the same contracts run
against a real `systemd --user` manager through `SystemdManager` and against `FakeSystemd`
through `FakeSystemdConnection` (on the virtual clock)."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from fleetd import clock
from fleetd.systemd import SystemdError, SystemdManager, UnitManager, UnitStatus
from tests.harness import UserManager
from tests.sim.fake_systemd import FakeSystemd
from tests.sim.loop import VirtualLoop

SLEEPER = "[Unit]\nDescription=contract {n}\n{extra}\n[Service]\nExecStart=/bin/sleep 1000\n{svc}"
Contract = Callable[[UnitManager, str], Awaitable[None]]


def _unit(n: str, extra: str = "", svc: str = "") -> str:
    return SLEEPER.format(n=n, extra=extra, svc=svc)


async def _until(sd: UnitManager, name: str, *active: str, timeout_s: float = 10.0
                 ) -> UnitStatus:
    deadline = clock.now() + timeout_s
    while True:
        st = await sd.unit_status(name)
        if st.active_state in active:
            return st
        assert clock.now() < deadline, f"{name} stayed {st.active_state}, wanted {active}"
        await asyncio.sleep(0.05)


async def start_stop_and_signals(sd: UnitManager, tag: str) -> None:
    name = f"c-{tag}-a.service"
    seen: list[str] = []
    sd.watch(lambda: {name}, lambda st: seen.append(st.active_state))
    sd.write_unit_file(name, _unit("a"))
    assert name in sd.read_unit_files()
    await sd.daemon_reload()
    await sd.start_unit(name)  # returns once queued
    st = await _until(sd, name, "active")
    assert st.load_state == "loaded" and st.main_pid > 0
    assert (await sd.list_units([name]))[name].active_state == "active"
    await sd.stop_unit(name)
    await _until(sd, name, "inactive")
    await asyncio.sleep(0.2)
    assert "active" in seen and seen[-1] == "inactive"
    sd.remove_unit_file(name)
    await sd.daemon_reload()
    assert name not in sd.read_unit_files()
    assert (await sd.unit_status(name)).load_state == "not-found"


async def a_stop_takes_as_long_as_exec_stop_and_is_capped_by_timeout(sd: UnitManager,
                                                                     tag: str) -> None:
    slow, capped = f"c-{tag}-slow.service", f"c-{tag}-capped.service"
    sd.write_unit_file(slow, _unit("slow", svc="ExecStop=/bin/sleep 1\n"))
    sd.write_unit_file(capped, _unit("capped", svc="ExecStop=/bin/sleep 30\nTimeoutStopSec=1s\n"))
    await sd.daemon_reload()
    for n in (slow, capped):
        await sd.start_unit(n)
        await _until(sd, n, "active")
    t0 = clock.now()
    await sd.stop_unit(slow)
    await sd.stop_unit(capped)
    assert (await sd.unit_status(slow)).active_state == "deactivating"
    await _until(sd, slow, "inactive")
    st = await _until(sd, capped, "inactive", "failed")
    assert st.active_state == "failed", "a stop that ran into TimeoutStopSec= ends failed"
    assert 0.9 <= clock.now() - t0 < 5


async def conflicts_stop_the_other_unit(sd: UnitManager, tag: str) -> None:
    a, b = f"c-{tag}-x.service", f"c-{tag}-y.service"
    sd.write_unit_file(a, _unit("x"))
    sd.write_unit_file(b, _unit("y", extra=f"Conflicts={a}\n"))
    await sd.daemon_reload()
    await sd.start_unit(a)
    await _until(sd, a, "active")
    await sd.start_unit(b)
    await _until(sd, b, "active")
    await _until(sd, a, "inactive")


async def unknown_units_are_not_errors(sd: UnitManager, tag: str) -> None:
    name = f"c-{tag}-never.service"
    await sd.stop_unit(name)
    await sd.reset_failed_unit(name)
    st = await sd.unit_status(name)
    assert (st.load_state, st.active_state) == ("not-found", "inactive")


async def the_dead_man_timer_stops_non_global_units_to_inactive(sd: UnitManager,
                                                              tag: str) -> None:
    from fleetd import fencing

    fenced, kept = f"c-{tag}-fenced.service", f"c-{tag}-global.service"
    sd.install_fence()
    sd.write_unit_file(fenced, _unit("fenced", svc="ExecStop=/bin/sleep 1\n"),
                       fencing.fence_drop_in(fenced, None, False))
    sd.write_unit_file(kept, _unit("global"), None)
    assert sd.has_drop_in(fenced) and not sd.has_drop_in(kept)
    await sd.daemon_reload()
    for n in (fenced, kept):
        await sd.start_unit(n)
        await _until(sd, n, "active")
    timer = f"{fencing.FENCE_TIMER_PREFIX}{tag}.timer"
    await sd.arm_fence_timer(timer, 0.5)
    assert timer in await sd.list_fence_timers()
    t0 = clock.now()
    await _until(sd, fencing.FENCE_TARGET, "active")
    assert (await sd.unit_status(fenced)).active_state in ("inactive", "failed"), \
        "the target is active only once the fenced unit is down (Before=)"
    assert clock.now() - t0 >= 0.9
    assert (await sd.unit_status(kept)).active_state == "active"
    assert await sd.timer_fired(timer)
    await sd.stop_unit(timer)
    assert timer not in await sd.list_fence_timers()
    await sd.start_unit(fenced)  # Conflicts= the other way: the target stops
    await _until(sd, fenced, "active")
    await _until(sd, fencing.FENCE_TARGET, "inactive")


async def a_new_unit_file_loads_with_its_fence_without_daemon_reload(sd: UnitManager,
                                                                    tag: str) -> None:
    # The agent starts units whose files are new here without a daemon-reload (`LoadNew`):
    # systemd must load them on demand, fence drop-in included, and say when it has not.
    from fleetd import fencing

    name = f"c-{tag}-fresh.service"
    sd.install_fence()
    await sd.daemon_reload()
    # A not-found stub first, as the agent's status reads leave one.
    assert (await sd.unit_status(name)).load_state == "not-found"
    # Past the clock tick of that cache build (a write within it goes unseen: the agent then
    # reloads, which is what `not_loaded_as_written` is for).
    await asyncio.sleep(0.05)
    sd.write_unit_file(name, _unit("fresh"), fencing.fence_drop_in(name, None, False))
    assert await sd.not_loaded_as_written([name]) == []
    await sd.start_unit(name)
    await _until(sd, name, "active")
    await sd.start_unit(fencing.FENCE_TARGET)  # the drop-in's Conflicts= is in effect
    await _until(sd, name, "inactive", "failed")
    await sd.start_unit(name)  # and the other way: the target stops
    await _until(sd, name, "active")
    await asyncio.sleep(0.05)
    # Rewritten while loaded (running: not garbage-collected): systemd keeps the old one.
    sd.write_unit_file(name, _unit("fresh, rewritten"), fencing.fence_drop_in(name, None, False))
    assert await sd.not_loaded_as_written([name]) == [name], "a rewrite needs a reload"
    await sd.daemon_reload()
    assert await sd.not_loaded_as_written([name]) == []
    await sd.stop_unit(name)
    await _until(sd, name, "inactive", "failed")
    sd.remove_unit_file(name)
    await sd.daemon_reload()


async def a_removed_unit_file_needs_no_daemon_reload(sd: UnitManager, tag: str) -> None:
    # The agent removes the file of a unit it stops without a daemon-reload (no [Install]
    # links): systemd must forget the unit once it is inactive, so that a new file of that
    # name loads as written, and it must not start the old one again.
    from fleetd import fencing

    name = f"c-{tag}-gone.service"
    sd.install_fence()
    sd.write_unit_file(name, _unit("first"), fencing.fence_drop_in(name, None, False))
    await sd.daemon_reload()
    await sd.start_unit(name)
    await _until(sd, name, "active")
    await sd.stop_unit(name)  # queued: the file goes before the stop is done, as in the agent
    sd.remove_unit_file(name)
    await _until(sd, name, "inactive")
    for _ in range(100):  # systemd collects it on its next pass
        if (await sd.unit_status(name)).load_state == "not-found":
            break
        await asyncio.sleep(0.02)
    assert (await sd.unit_status(name)).load_state == "not-found"
    with pytest.raises(SystemdError):
        await sd.start_unit(name)
    await asyncio.sleep(0.05)  # past the clock tick of the cache build that found no file
    sd.write_unit_file(name, _unit("second"), fencing.fence_drop_in(name, None, False))
    assert await sd.not_loaded_as_written([name]) == []
    await sd.start_unit(name)
    await _until(sd, name, "active")
    await sd.stop_unit(name)
    await _until(sd, name, "inactive", "failed")
    sd.remove_unit_file(name)


async def _new_process(sd: UnitManager, name: str, old_pid: int) -> None:
    """Wait until `name` is active with a main PID other than `old_pid`."""
    deadline = clock.now() + 10
    while True:
        st = await sd.unit_status(name)
        if st.active_state == "active" and st.main_pid not in (0, old_pid):
            return
        assert clock.now() < deadline, f"{name} has no new process: {st}"
        await asyncio.sleep(0.05)


async def a_restart_gives_a_running_unit_a_new_process_and_starts_a_stopped_one(
        sd: UnitManager, tag: str) -> None:
    # The agent restarts a unit whose file it replaced (StopUnit, the new file, reload,
    # RestartUnit): whatever the stop got to by then, the unit ends running a new process.
    name, slow = f"c-{tag}-r.service", f"c-{tag}-rs.service"
    sd.write_unit_file(name, _unit("r"))
    sd.write_unit_file(slow, _unit("rs", svc="ExecStop=/bin/sleep 1\n"))
    await sd.daemon_reload()
    await sd.restart_unit(name)  # inactive: a start
    first = (await _until(sd, name, "active")).main_pid
    assert first > 0
    await sd.restart_unit(name)  # active: a new main process
    await _new_process(sd, name, first)
    await sd.start_unit(slow)
    old = (await _until(sd, slow, "active")).main_pid
    t0 = clock.now()
    # StopUnit returns once the job is queued (it may still read active); its ExecStop=
    # takes a second, so the unit is seen deactivating before the new file comes.
    await sd.stop_unit(slow)
    await _until(sd, slow, "deactivating")
    sd.write_unit_file(slow, _unit("rs2"))
    await sd.daemon_reload()
    await sd.restart_unit(slow)
    await _new_process(sd, slow, old)
    assert clock.now() - t0 >= 0.9, "the stop's ExecStop= was carried out before the start"
    for n in (name, slow):
        await sd.stop_unit(n)
        await _until(sd, n, "inactive", "failed")
        sd.remove_unit_file(n)
    await sd.daemon_reload()


CONTRACTS = [the_dead_man_timer_stops_non_global_units_to_inactive, start_stop_and_signals,
             a_stop_takes_as_long_as_exec_stop_and_is_capped_by_timeout,
             conflicts_stop_the_other_unit, unknown_units_are_not_errors,
             a_new_unit_file_loads_with_its_fence_without_daemon_reload,
             a_removed_unit_file_needs_no_daemon_reload,
             a_restart_gives_a_running_unit_a_new_process_and_starts_a_stopped_one]


@pytest.fixture
def um() -> Iterator[UserManager]:
    root = pathlib.Path(tempfile.mkdtemp(prefix="fsc-", dir="/tmp"))
    m = UserManager(root)
    m.start()
    try:
        yield m
    finally:
        m.kill()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.integration
@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda f: f.__name__)
async def test_contract_on_a_real_systemd(contract: Contract, um: UserManager) -> None:
    sd = await SystemdManager.connect(user=True, bus_address=um.bus_address,
                                      unit_dir=str(um.unit_dir))
    try:
        await contract(sd, str(int(time.time() * 1000) % 100000))
    finally:
        await sd.close()


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda f: f.__name__)
def test_contract_on_the_fake_systemd(contract: Contract) -> None:
    loop = VirtualLoop()
    conn = FakeSystemd(loop, "m1").connect("fleetd:m1#1")
    clock.use(loop.time)
    try:
        loop.run_until_complete(loop.spawn("fleetd:m1#1", contract(conn, "f")))
    finally:
        clock.use(None)
        loop.close()
