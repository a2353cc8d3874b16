"""Agent.apply, table-driven: the real Agent, leased through a real MachineSession, its schedule
read from the in-memory etcd model, applying task lists to the fake systemd on the virtual clock
(tests/harness/sim_rig.py). Each case runs in milliseconds."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from fleetd.agent.tasks import (
    DaemonReload,
    LoadNew,
    RemoveUnitFile,
    StartUnit,
    StopUnit,
    Task,
    WriteUnitFile,
    plan,
)
from fleetd.registry import ScheduleEntry
from tests.harness.sim_rig import record, sim_rig, unit_text

WEB = record("web.service", unit_text("web"))
CFG = record("cfg.service", unit_text("config"))
MON = record("mon.service", unit_text("monitor", "Global=true"))
DB = record("db.service", unit_text("db"))
#: name -> (record, target state, global) scheduled on the agent's machine
SCHEDULE = {"web.service": (WEB, "launched", False), "cfg.service": (CFG, "loaded", False),
            "mon.service": (MON, "launched", True), "db.service": (DB, "launched", False)}


def write(rec: object) -> WriteUnitFile:
    return WriteUnitFile(rec.name, rec.text)  # type: ignore[attr-defined]


STARTED = [write(WEB), DaemonReload(), StartUnit("web.service")]


@dataclass
class Case:
    tasks: list[Task]
    #: unit -> (file on disk, systemd ActiveState, agent's applied state or None)
    expect: dict[str, tuple[bool, str, str | None]]
    setup: list[Task] = field(default_factory=list)
    fenced: bool = False
    #: units whose file systemd already loads from elsewhere (a write of them fails)
    host_units: tuple[str, ...] = ()
    errors: dict[str, str] = field(default_factory=dict)  # unit -> part of its error
    reloads: int | None = None  # daemon-reloads the tasks caused, when it matters


CASES = [
    pytest.param(Case(STARTED, {"web.service": (True, "active", "launched")}),
                 id="new_launched_unit_is_written_reloaded_and_started"),
    pytest.param(Case([write(CFG), DaemonReload()], {"cfg.service": (True, "inactive", "loaded")},
                      reloads=1),
                 id="loaded_unit_is_written_and_not_started"),
    pytest.param(Case([StopUnit("web.service")], {"web.service": (True, "inactive", "loaded")},
                      setup=STARTED),
                 id="stop_keeps_the_file_and_leaves_the_unit_loaded"),
    pytest.param(Case([StopUnit("web.service"), RemoveUnitFile("web.service"), DaemonReload()],
                      {"web.service": (False, "inactive", None)}, setup=STARTED),
                 id="unload_stops_removes_the_file_and_forgets_the_unit"),
    pytest.param(Case([StartUnit("web.service"), StartUnit("mon.service")],
                      {"web.service": (True, "inactive", "loaded"),
                       "mon.service": (True, "active", "launched")},
                      setup=[write(WEB), write(MON), DaemonReload()], fenced=True),
                 id="fenced_agent_starts_only_global_units"),
    pytest.param(Case([write(WEB), DaemonReload(), StartUnit("db.service"),
                       StartUnit("web.service")],
                      {"db.service": (False, "inactive", None),
                       "web.service": (True, "active", "launched")},
                      errors={"db.service": "not found"}),
                 id="a_start_systemd_refuses_fails_only_its_unit"),
    pytest.param(Case([write(DB), DaemonReload(), StartUnit("db.service")],
                      {"db.service": (False, "inactive", None)}, host_units=("db.service",),
                      errors={"db.service": "not written by fleet"}, reloads=0),
                 id="no_reload_when_every_file_write_failed"),
    pytest.param(Case([StartUnit("ghost.service")], {"ghost.service": (False, "inactive", None)}),
                 id="a_start_of_a_unit_not_scheduled_here_is_skipped"),
]


@pytest.mark.parametrize("case", CASES)
def test_agent_apply(case: Case) -> None:
    with sim_rig() as rig:
        async def go() -> None:
            for rec, state, is_global in SCHEDULE.values():
                await rig.schedule("m1", rec, state, is_global)
            agent, sd = await rig.agent("m1")
            assert set(agent.desired()) == set(SCHEDULE)  # read from etcd on its first lease
            if case.setup:
                await agent.apply(case.setup)
            for name in case.host_units:
                sd.host_units[name] = "[Service]\nExecStart=/bin/true\n"
            agent.fenced = case.fenced
            reloads = sd.reloads
            await agent.apply(case.tasks)
            await asyncio.sleep(1)  # virtual: every start and stop job has finished
            for name, (has_file, active, applied) in case.expect.items():
                assert (name in sd.files, sd.active_state(name), agent.applied.get(name)) == \
                    (has_file, active, applied), name
            assert agent.errors.keys() == case.errors.keys()
            for name, part in case.errors.items():
                assert part in agent.errors[name]
                st = agent.state_record(name)
                assert st is not None and st.load_state == "error"
            if case.reloads is not None:
                assert sd.reloads - reloads == case.reloads
        rig.run(go())


def test_a_replaced_unit_is_stopped_rewritten_and_started_in_order() -> None:
    """The plan for a running unit whose hash changed: apply stops the old process, writes the
    new file, reloads and starts a new process, and records the new hash."""
    new = record("web.service", unit_text("web, version 2"))
    with sim_rig() as rig:
        async def go() -> None:
            await rig.schedule("m1", WEB, "launched")
            agent, sd = await rig.agent("m1")
            await agent.apply(STARTED)
            await asyncio.sleep(1)
            pid = sd.units["web.service"].pid
            agent.texts["web.service"] = (new.hash, new.text)
            agent.schedule["web.service"] = ScheduleEntry("web.service", "m1", "launched",
                                                          new.hash, False)
            await agent.apply([StopUnit("web.service"), write(new), DaemonReload(),
                               StartUnit("web.service")])
            await asyncio.sleep(1)
            assert sd.files["web.service"] == new.text
            assert sd.active_state("web.service") == "active"
            assert sd.units["web.service"].pid != pid
            assert agent.file_hashes["web.service"] == new.hash
        rig.run(go())


def test_a_destroyed_unit_goes_without_a_reload_and_a_new_file_of_its_name_loads_as_written(
        ) -> None:
    """Removing the file of a unit without [Install] links needs no daemon-reload (systemd
    forgets the stopped unit by itself); the next file of that name is loaded as written."""
    new = record("web.service", unit_text("web, version 2"))
    with sim_rig() as rig:
        async def go() -> None:
            await rig.schedule("m1", WEB, "launched")
            agent, sd = await rig.agent("m1")
            await agent.apply(plan(agent.desired(), agent.current()))
            await asyncio.sleep(1)
            assert sd.active_state("web.service") == "active"
            reloads = sd.reloads
            tasks = plan({}, agent.current())
            assert tasks == [StopUnit("web.service"), RemoveUnitFile("web.service")]
            await agent.apply(tasks)
            await asyncio.sleep(1)
            assert sd.active_state("web.service") == "inactive"
            assert "web.service" not in sd.files and "web.service" not in sd.loaded
            agent.texts["web.service"] = (new.hash, new.text)
            agent.schedule["web.service"] = ScheduleEntry("web.service", "m1", "launched",
                                                          new.hash, False)
            tasks = plan(agent.desired(), agent.current())
            assert tasks == [write(new), LoadNew(("web.service",)), StartUnit("web.service")]
            await agent.apply(tasks)
            await asyncio.sleep(1)
            assert sd.active_state("web.service") == "active"
            assert sd.loaded["web.service"].startswith(new.text)
            assert sd.reloads == reloads
        rig.run(go())


def test_removing_a_file_with_install_links_reloads() -> None:
    """[Install] links are other units' dependencies: the agent reloads when such a file goes,
    also for a file it found on disk at start (adopted)."""
    text = unit_text("linked") + "\n[Install]\nWantedBy=default.target\n"
    linked = record("linked.service", text)
    with sim_rig() as rig:
        async def go() -> None:
            await rig.schedule("m1", linked, "launched")
            agent, _ = await rig.agent("m1")
            await agent.apply(plan(agent.desired(), agent.current()))
            await asyncio.sleep(1)
            assert agent.current()["linked.service"].links
            assert plan({}, agent.current())[-1] == DaemonReload()
            agent.with_links.clear()
            agent.adopt_existing()  # what a restarted fleetd learns from the disk
            assert agent.current()["linked.service"].links
            assert plan({}, agent.current())[-1] == DaemonReload()
        rig.run(go())
