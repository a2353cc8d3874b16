"""Agent.apply and the fence, on the simulation's fake systemd and etcd model
(tests/harness/sim_rig.py): the fence is serialised with reconcile and a start planned before
it never runs after it; one failing unit does not stop the others; no lease, no start."""

from __future__ import annotations

import asyncio

from fleetd import clock, fencing
from fleetd.agent.tasks import DaemonReload, StartUnit, WriteUnitFile
from fleetd.fencing import FENCE_TARGET
from fleetd.registry import UnitRecord
from fleetd.systemd import UnitStatus
from tests.harness.sim_rig import record, sim_rig, unit_text

WEB = record("web.service", unit_text("web"))
MON = record("global-mon.service", unit_text("monitor", "Global=true"))


def test_a_start_planned_before_the_fence_never_runs_after_it() -> None:
    with sim_rig() as rig:
        async def go() -> None:
            await rig.schedule("m1", WEB, "launched")
            await rig.schedule("m1", MON, "launched", is_global=True)
            agent, sd = await rig.agent("m1")
            conn = agent.systemd
            calls: list[str] = []
            gate, reloading = asyncio.Event(), asyncio.Event()
            check, fence = conn.not_loaded_as_written, conn.fence

            async def gated_check(names: list[str]) -> list[str]:
                # hold the step between the writes and the starts (new files: no reload, the
                # agent checks systemd loaded them): the plan is half applied
                reloading.set()
                await gate.wait()
                calls.append("reload")
                return await check(names)

            async def recorded_fence(timeout_s: float) -> bool:
                calls.append("fence")
                return await fence(timeout_s)
            conn.not_loaded_as_written, conn.fence = gated_check, recorded_fence  # type: ignore
            reconcile = asyncio.ensure_future(agent.reconcile())  # writes, load check, starts
            await reloading.wait()
            lost = asyncio.ensure_future(agent.session.lose("test: lease lost"))
            await asyncio.sleep(0.5)
            assert not lost.done()  # the fence waits for the apply in progress (one lock)
            gate.set()
            await asyncio.gather(reconcile, lost)
            await asyncio.sleep(1)
            assert sd.units.get("web.service") is None or sd.units["web.service"].starts == 0
            assert sd.active_state("global-mon.service") == "active"  # global units run on
            assert calls.index("fence") > calls.index("reload")
        rig.run(go())


def test_one_unit_that_cannot_be_written_does_not_stop_the_others() -> None:
    a, bad, c = (record(n, unit_text(n)) for n in ("a.service", "bad.service", "c.service"))
    with sim_rig() as rig:
        async def go() -> None:
            for rec in (a, bad, c):
                await rig.schedule("m1", rec, "launched")
            agent, sd = await rig.agent("m1")
            sd.host_units["bad.service"] = "[Service]\nExecStart=/bin/true\n"
            await agent.reconcile()
            await asyncio.sleep(1)
            assert sd.active_state("a.service") == sd.active_state("c.service") == "active"
            assert sd.active_state("bad.service") == "inactive"
            assert "not written by fleet" in agent.errors["bad.service"]
            rec = agent.state_record("bad.service")
            assert rec is not None and rec.load_state == "error"
            ok = agent.state_record("a.service")
            assert ok is not None and ok.load_state == "loaded"
        rig.run(go())


def test_no_lease_no_start_even_if_planned() -> None:
    with sim_rig() as rig:
        async def go() -> None:
            await rig.schedule("m1", WEB, "launched")
            agent, sd = await rig.agent("m1")
            agent.session.lease = 0  # as between losing a lease and fencing
            await agent.apply([WriteUnitFile("web.service", WEB.text), DaemonReload(),
                               StartUnit("web.service")])
            await asyncio.sleep(1)
            assert "web.service" in sd.files
            assert sd.active_state("web.service") == "inactive"
        rig.run(go())


def test_a_lease_id_past_its_fence_deadline_starts_nothing() -> None:
    """A VM paused past its lease resumes with `session.lease` still set (the watchdog has not
    run yet): the start is refused on the deadline, not on the lease id (sim seed 10)."""
    with sim_rig() as rig:
        async def go() -> None:
            await rig.schedule("m1", WEB, "launched")
            await rig.schedule("m1", MON, "launched", is_global=True)
            agent, sd = await rig.agent("m1")
            rig.loop.freeze("session:m1")  # no renewal, no watchdog: the paused VM
            # the last renewal was sent exactly the fence point ago: the fence is due now
            agent.session._last_renewed = clock.now() - fencing.fence_point_s(
                agent.session.ttl_s)
            assert agent.session.lease and not agent.fenced
            await agent.reconcile()
            await rig.until(lambda: sd.active_state("global-mon.service") == "active")
            assert "web.service" in sd.files  # written, never started
            assert sd.units.get("web.service") is None or sd.units["web.service"].starts == 0
            assert sd.active_state("web.service") == "inactive"
        rig.run(go())


def test_units_a_stale_dead_man_timer_stopped_are_started_again_while_the_lease_is_good(
) -> None:
    # An older timer generation fires just as the agent re-arms: the fence target stops the
    # non-global units, but the lease was renewed in time. The agent must start them again
    # (the plan alone would not: it never restarts a unit that merely exited).
    with sim_rig() as rig:
        async def go() -> None:
            await rig.schedule("m1", WEB, "launched")
            await rig.schedule("m1", MON, "launched", is_global=True)
            agent, sd = await rig.agent("m1")
            await agent.reconcile()
            await rig.until(lambda: sd.active_state("web.service") == "active")
            lease = agent.session.lease
            await agent.systemd.fence(0)  # what a stale timer's fleet-fence@ service does
            await rig.until(lambda: sd.active_state("web.service") == "inactive")
            # the signals the agent's loop would deliver (the rig does not run its loops)
            agent._on_systemd_change(UnitStatus("web.service", "loaded", "inactive", "dead"))
            agent._on_systemd_change(UnitStatus(FENCE_TARGET, "loaded", "active", "active"))
            assert agent._wake.is_set()
            await agent.reconcile()  # the pass the agent's wake-up runs
            await rig.until(lambda: sd.active_state("web.service") == "active")
            assert agent.session.lease == lease  # not taken for a fence of ours
            assert sd.active_state("global-mon.service") == "active"
        rig.run(go())


def test_a_purge_waits_for_a_unit_that_states_a_long_stop() -> None:
    """`systemctl stop fleetd` with a unit that takes 5 s to stop (it states TimeoutStopSec=,
    so it keeps that): the purge waits for it (not the default 2 s bound), so the units are
    known inactive and the lease may be revoked."""
    slow = record("db.service", unit_text("db").replace(
        "ExecStart=/bin/sleep infinity\n",
        "ExecStart=/bin/sleep infinity\nExecStop=/bin/sleep 5\nTimeoutStopSec=10s\n"))
    with sim_rig() as rig:
        async def go() -> None:
            await rig.schedule("m1", slow, "launched")
            agent, sd = await rig.agent("m1")
            await agent.reconcile()
            await rig.until(lambda: sd.active_state("db.service") == "active")
            t0 = clock.now()
            assert await agent.purge()
            assert clock.now() - t0 >= 5.0
            assert sd.active_state("db.service") == "inactive"
        rig.run(go())


def test_a_purge_reloads_only_for_files_with_install_links_between_its_callbacks() -> None:
    """A purge removes the files; systemd forgets a stopped unit whose file is gone, so only
    files with [Install] links need a daemon-reload, and fleetd's callbacks (its own stop
    timeout across the reload) run right before and right after it."""
    linked = record("linked.service", unit_text("linked")
                    + "\n[Install]\nWantedBy=multi-user.target\n")
    for units, reloads in (([WEB, MON], 0), ([WEB, linked], 1)):
        with sim_rig() as rig:
            async def go(units: list[UnitRecord] = units, reloads: int = reloads) -> None:
                for u in units:
                    await rig.schedule("m1", u, "launched", is_global=u is MON)
                agent, sd = await rig.agent("m1")
                await agent.reconcile()
                await rig.until(lambda: all(sd.active_state(u.name) == "active"
                                            for u in units))
                calls: list[str] = []
                reload = agent.systemd.daemon_reload

                async def recorded_reload() -> None:
                    calls.append("reload")
                    await reload()

                agent.systemd.daemon_reload = recorded_reload  # type: ignore[method-assign]
                assert await agent.purge(before_reload=lambda: calls.append("before"),
                                         after_reload=lambda: calls.append("after"))
                assert calls == ["before", "reload", "after"] * reloads, calls
                assert agent.systemd.read_unit_files() == {}
                assert all(sd.active_state(u.name) == "inactive" for u in units)
            rig.run(go())


def test_each_daemon_reload_is_preceded_by_a_fresh_dead_man_timer() -> None:
    """systemd answers nothing while it reloads: a renewal's re-arm queued behind two reloads
    could come after the armed deadline (the timer then fires on a good lease). The agent
    re-arms from the latest renewal right before each reload, one generation at a time."""
    with sim_rig() as rig:
        async def go() -> None:
            await rig.schedule("m1", WEB, "launched")
            agent, sd = await rig.agent("m1")
            rig.loop.freeze("session:m1")  # no renewal re-arms: only the reload's
            calls: list[str] = []
            arm, reload = agent.systemd.arm_fence_timer, agent.systemd.daemon_reload

            async def recorded_arm(name: str, delay_s: float) -> None:
                calls.append(f"arm until {clock.now() + delay_s:.3f}")
                await arm(name, delay_s)

            async def recorded_reload() -> None:
                calls.append("reload")
                await reload()
            agent.systemd.arm_fence_timer = recorded_arm  # type: ignore[method-assign]
            agent.systemd.daemon_reload = recorded_reload  # type: ignore[method-assign]
            await agent.apply([WriteUnitFile("web.service", WEB.text), DaemonReload(),
                               StartUnit("web.service")])
            # armed for the latest renewal's fence deadline, right before the reload
            assert calls[-2:] == [f"arm until {agent.session.fence_deadline:.3f}", "reload"], calls
            assert list(sd.timers) == [agent._armed]  # exactly one generation armed
        rig.run(go())
