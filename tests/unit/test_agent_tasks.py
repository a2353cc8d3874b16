"""Table-driven tests of the agent's pure core: fleetd.agent.tasks.plan and fence."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.agent.tasks import (
    LOAD_NEW_MAX,
    CurrentUnit,
    DaemonReload,
    DesiredUnit,
    LoadNew,
    RemoveUnitFile,
    StartUnit,
    StopUnit,
    Task,
    WriteUnitFile,
    fence,
    plan,
)

TEXT_A = "[Service]\nExecStart=/bin/sleep 1000\n"
TEXT_B = "[Service]\nExecStart=/bin/sleep 2000\n"


def want(name: str, state: str = "launched", hash: str = "h1", text: str = TEXT_A,
         is_global: bool = False) -> DesiredUnit:
    return DesiredUnit(name, state, hash, text, is_global)  # type: ignore[arg-type]


def have(name: str, hash: str | None = "h1", applied: str | None = "launched",
         running: bool = True, links: bool = True) -> CurrentUnit:
    return CurrentUnit(name, hash, applied, running, links)  # type: ignore[arg-type]


def by_name(*units: Any) -> dict[str, Any]:
    return {u.name: u for u in units}


CASES = [
    pytest.param(
        by_name(want("a.service")), by_name(have("a.service")), [],
        id="running_with_same_hash_is_adopted_untouched"),
    pytest.param(
        {}, {}, [],
        id="nothing_desired_nothing_present"),
    pytest.param(
        by_name(want("a.service", "launched")), {},
        [WriteUnitFile("a.service", TEXT_A), LoadNew(("a.service",)), StartUnit("a.service")],
        id="new_launched_unit_is_written_load_checked_started_without_reload"),
    pytest.param(
        by_name(want("a.service", "loaded")), {},
        [WriteUnitFile("a.service", TEXT_A), LoadNew(("a.service",))],
        id="new_loaded_unit_is_written_and_load_checked_not_started"),
    pytest.param(
        by_name(want("a.service"),
                want("b.service", text=TEXT_B + "[Install]\nWantedBy=a.service\n")),
        {},
        [WriteUnitFile("a.service", TEXT_A),
         WriteUnitFile("b.service", TEXT_B + "[Install]\nWantedBy=a.service\n"), DaemonReload(),
         StartUnit("a.service"), StartUnit("b.service")],
        id="a_new_unit_with_install_links_changes_others_dependencies_so_reloads"),
    pytest.param(
        by_name(*(want(f"u{i:03d}.service") for i in range(LOAD_NEW_MAX + 1))), {},
        [*(WriteUnitFile(f"u{i:03d}.service", TEXT_A) for i in range(LOAD_NEW_MAX + 1)),
         DaemonReload(), *(StartUnit(f"u{i:03d}.service") for i in range(LOAD_NEW_MAX + 1))],
        id="more_new_files_than_checking_one_by_one_is_worth_reload_once"),
    pytest.param(
        by_name(want("a.service"), want("b.service", hash="h2", text=TEXT_B)),
        by_name(have("b.service", "h1")),
        [StopUnit("b.service"), WriteUnitFile("a.service", TEXT_A),
         WriteUnitFile("b.service", TEXT_B), DaemonReload(), StartUnit("a.service"),
         StartUnit("b.service", restart=True)],
        id="a_new_file_beside_a_rewritten_one_reloads_once_for_both"),
    pytest.param(
        by_name(want("a.service")), by_name(have("b.service", running=False, applied="loaded")),
        [RemoveUnitFile("b.service"), WriteUnitFile("a.service", TEXT_A), DaemonReload(),
         StartUnit("a.service")],
        id="a_new_file_beside_a_removed_one_reloads"),
    pytest.param(
        by_name(want("a.service", "loaded")), by_name(have("a.service")),
        [StopUnit("a.service")],
        id="launched_to_loaded_only_stops"),
    pytest.param(
        by_name(want("a.service", "loaded")), by_name(have("a.service", applied="loaded")),
        [],
        id="loaded_unit_started_by_a_dependency_is_left_running"),
    pytest.param(
        {}, by_name(have("a.service")),
        [StopUnit("a.service"), RemoveUnitFile("a.service"), DaemonReload()],
        id="unscheduled_running_unit_is_stopped_removed_reloaded"),
    pytest.param(
        {}, by_name(have("a.service", running=False, applied="loaded")),
        [RemoveUnitFile("a.service"), DaemonReload()],
        id="unscheduled_stopped_unit_is_only_removed"),
    pytest.param(
        {}, by_name(have("a.service", links=False), have("b.service", links=False)),
        [StopUnit("a.service"), StopUnit("b.service"), RemoveUnitFile("a.service"),
         RemoveUnitFile("b.service")],
        id="removing_files_without_install_links_needs_no_reload"),
    pytest.param(
        {}, by_name(have("a.service", links=False), have("b.service")),
        [StopUnit("a.service"), StopUnit("b.service"), RemoveUnitFile("a.service"),
         RemoveUnitFile("b.service"), DaemonReload()],
        id="removing_a_file_with_install_links_reloads"),
    pytest.param(
        by_name(want("n.service")), by_name(have("a.service", links=False)),
        [StopUnit("a.service"), RemoveUnitFile("a.service"), WriteUnitFile("n.service", TEXT_A),
         LoadNew(("n.service",)), StartUnit("n.service")],
        id="a_new_file_beside_a_quiet_removal_is_checked_not_reloaded"),
    pytest.param(
        {}, by_name(have("a.service", hash=None, applied=None, running=True)),
        [StopUnit("a.service")],
        id="unscheduled_running_unit_without_fleet_file_is_stopped_only"),
    pytest.param(
        by_name(want("a.service", hash="h2", text=TEXT_B)), by_name(have("a.service", "h1")),
        [StopUnit("a.service"), WriteUnitFile("a.service", TEXT_B), DaemonReload(),
         StartUnit("a.service", restart=True)],
        id="hash_change_while_running_replaces"),
    pytest.param(
        by_name(want("a.service", hash="h2", text=TEXT_B)),
        by_name(have("a.service", "h1", applied="launched", running=False)),
        [StopUnit("a.service"), WriteUnitFile("a.service", TEXT_B), DaemonReload(),
         StartUnit("a.service", restart=True)],
        id="hash_change_of_a_launched_unit_not_seen_running_yet_still_restarts_it"),
    pytest.param(
        by_name(want("a.service", hash="h2", text=TEXT_B)),
        by_name(have("a.service", "h1", applied="loaded", running=False)),
        [WriteUnitFile("a.service", TEXT_B), DaemonReload(), StartUnit("a.service")],
        id="hash_change_of_a_stopped_unit_desired_launched_starts_it"),
    pytest.param(
        by_name(want("a.service", "loaded", hash="h2", text=TEXT_B)),
        by_name(have("a.service", "h1")),
        [StopUnit("a.service"), WriteUnitFile("a.service", TEXT_B), DaemonReload()],
        id="hash_change_of_a_running_unit_desired_loaded_stops_and_rewrites"),
    pytest.param(
        by_name(want("a.service", "loaded", hash="h2", text=TEXT_B)),
        by_name(have("a.service", "h1", applied="loaded", running=False)),
        [WriteUnitFile("a.service", TEXT_B), DaemonReload()],
        id="hash_change_of_loaded_unit_rewrites_without_start"),
    pytest.param(
        by_name(want("a.service", "launched")),
        by_name(have("a.service", applied="launched", running=False)),
        [],
        id="launched_unit_that_exited_is_not_restarted"),
    pytest.param(
        by_name(want("a.service", "launched")),
        by_name(have("a.service", applied="loaded", running=False)),
        [StartUnit("a.service")],
        id="loaded_unit_desired_launched_is_started_without_file_ops"),
    pytest.param(
        by_name(want("a.service", "launched")),
        by_name(have("a.service", applied=None, running=False)),
        [StartUnit("a.service")],
        id="file_present_but_never_applied_is_started"),
    pytest.param(
        by_name(want("a.service", "loaded")),
        by_name(have("a.service", applied="loaded", running=False)),
        [],
        id="loaded_and_stopped_is_left_alone"),
]


@pytest.mark.parametrize(("desired", "current", "expected"), CASES)
def test_plan_produces_expected_tasks(desired: dict[str, DesiredUnit],
                                      current: dict[str, CurrentUnit],
                                      expected: list[Task]) -> None:
    assert plan(desired, current) == expected


def test_plan_issues_exactly_one_daemon_reload_for_many_units() -> None:
    desired = by_name(*(want(f"new{i}.service") for i in range(10)),
                      want("changed.service", hash="h2", text=TEXT_B))
    current = by_name(*(have(f"old{i}.service") for i in range(10)),
                      have("changed.service", "h1"))
    tasks = plan(desired, current)
    assert sum(isinstance(t, DaemonReload) for t in tasks) == 1
    assert sum(isinstance(t, WriteUnitFile) for t in tasks) == 11
    assert sum(isinstance(t, RemoveUnitFile) for t in tasks) == 10
    assert sum(isinstance(t, StartUnit) for t in tasks) == 11
    assert sum(isinstance(t, StopUnit) for t in tasks) == 11


def test_plan_of_mixed_batch_orders_stops_files_reload_starts() -> None:
    desired = by_name(want("new.service"), want("repl.service", hash="h2", text=TEXT_B),
                      want("down.service", "loaded"))
    current = by_name(have("gone.service"), have("repl.service", "h1"),
                      have("down.service"))
    assert plan(desired, current) == [
        StopUnit("gone.service"), StopUnit("down.service"), StopUnit("repl.service"),
        RemoveUnitFile("gone.service"), WriteUnitFile("new.service", TEXT_A),
        WriteUnitFile("repl.service", TEXT_B),
        DaemonReload(),
        StartUnit("new.service"), StartUnit("repl.service", restart=True),
    ]


def test_plan_does_not_mutate_its_inputs() -> None:
    desired = by_name(want("a.service"))
    current = by_name(have("b.service"))
    snapshot = (dict(desired), dict(current))
    plan(desired, current)
    assert (desired, current) == snapshot


# --- property: ordering and convergence over random maps -----------------------------------

NAMES = [f"u{i}.service" for i in range(6)]
HASHES = ["h1", "h2"]


@st.composite
def states(draw: Any) -> tuple[dict[str, DesiredUnit], dict[str, CurrentUnit]]:
    desired = {}
    for n in draw(st.lists(st.sampled_from(NAMES), unique=True)):
        h = draw(st.sampled_from(HASHES))
        desired[n] = want(n, draw(st.sampled_from(["loaded", "launched"])), h, "text-" + h,
                          draw(st.booleans()))
    current = {}
    for n in draw(st.lists(st.sampled_from(NAMES), unique=True)):
        current[n] = have(n, draw(st.sampled_from([None, *HASHES])),
                          draw(st.sampled_from([None, "loaded", "launched"])), draw(st.booleans()),
                          draw(st.booleans()))
    return desired, current


PHASE = {StopUnit: 0, WriteUnitFile: 1, RemoveUnitFile: 1, DaemonReload: 2, LoadNew: 2,
         StartUnit: 3}


@settings(max_examples=300, deadline=None)
@given(states())
def test_plan_orders_stops_then_file_ops_then_one_reload_then_starts(
        s: tuple[dict[str, DesiredUnit], dict[str, CurrentUnit]]) -> None:
    desired, current = s
    tasks = plan(desired, current)
    phases = [PHASE[type(t)] for t in tasks]
    assert phases == sorted(phases), tasks
    file_ops = [t for t in tasks if isinstance(t, WriteUnitFile | RemoveUnitFile)]
    reloads = [t for t in tasks if isinstance(t, DaemonReload | LoadNew)]
    assert len(reloads) <= (1 if file_ops else 0)
    # no daemon-reload only when every write is of a file new here and every removal is of a
    # file without [Install] links; the new files are then checked (LoadNew)
    writes = [t for t in file_ops if isinstance(t, WriteUnitFile)]
    quiet = all(current.get(t.name, have(t.name, None)).file_hash is None
                and "[Install]" not in t.text for t in writes) and len(writes) <= LOAD_NEW_MAX \
        and all(not current[t.name].links for t in file_ops if isinstance(t, RemoveUnitFile))
    assert any(isinstance(t, DaemonReload) for t in reloads) == (bool(file_ops) and not quiet)
    if reloads and isinstance(reloads[0], LoadNew):
        assert list(reloads[0].names) == [t.name for t in writes] and writes
    elif file_ops and quiet:
        assert not writes and not reloads  # removals only
    # every unit gets at most one task of each kind
    keyed = [(type(t), t.name) for t in tasks if not isinstance(t, DaemonReload | LoadNew)]
    assert len(keyed) == len(set(keyed)), tasks


@settings(max_examples=300, deadline=None)
@given(states())
def test_plan_only_touches_units_in_a_consistent_way(
        s: tuple[dict[str, DesiredUnit], dict[str, CurrentUnit]]) -> None:
    desired, current = s
    tasks = plan(desired, current)
    for t in tasks:
        if isinstance(t, StartUnit):
            assert desired[t.name].target_state == "launched"
        elif isinstance(t, WriteUnitFile):
            assert t.text == desired[t.name].text
            assert current.get(t.name) is None or current[t.name].file_hash != desired[t.name].hash
        elif isinstance(t, RemoveUnitFile):
            assert t.name not in desired and current[t.name].file_hash is not None
        elif isinstance(t, StopUnit):
            # running, or launched by the agent and no longer wanted here or replaced (its
            # start job may still be queued: systemd says inactive until it runs)
            cur = current[t.name]
            assert cur.running or (cur.applied == "launched" and (
                t.name not in desired or desired[t.name].hash != cur.file_hash))
    for t in tasks:  # a restart only for what the plan stopped first
        if isinstance(t, StartUnit) and t.restart:
            assert StopUnit(t.name) in tasks


@settings(max_examples=300, deadline=None)
@given(states())
def test_plan_converges_after_applying_it(
        s: tuple[dict[str, DesiredUnit], dict[str, CurrentUnit]]) -> None:
    """Simulate the tasks on `current`; planning again from the result must yield nothing."""
    desired, current = s
    sim = {n: [c.file_hash, c.applied, c.running] for n, c in current.items()}
    for t in plan(desired, current):
        if isinstance(t, StopUnit):
            sim[t.name][2] = False
            if t.name in desired:
                sim[t.name][1] = "loaded"
        elif isinstance(t, WriteUnitFile):
            sim.setdefault(t.name, [None, None, False])[0] = desired[t.name].hash
            sim[t.name][1] = "loaded"
        elif isinstance(t, RemoveUnitFile):
            del sim[t.name]
        elif isinstance(t, StartUnit):
            sim[t.name][1:] = ["launched", True]
    after = {n: have(n, h, a, r) for n, (h, a, r) in sim.items()
             if h is not None or r}
    assert plan(desired, after) == []


# --- fence -------------------------------------------------------------------------------


@pytest.mark.parametrize(("desired", "kept"), [
    pytest.param({}, set(), id="empty"),
    pytest.param(by_name(want("a.service")), set(), id="non_global_dropped"),
    pytest.param(by_name(want("g.service", is_global=True)), {"g.service"}, id="global_kept"),
    pytest.param(by_name(want("a.service"), want("g.service", is_global=True),
                         want("h.service", "loaded", is_global=True)),
                 {"g.service", "h.service"}, id="mixed_keeps_only_globals"),
])
def test_fence_keeps_only_global_units(desired: dict[str, DesiredUnit], kept: set[str]) -> None:
    fenced = fence(desired)
    assert set(fenced) == kept
    assert all(fenced[n] is desired[n] for n in kept)


def test_fenced_plan_stops_and_removes_non_global_units() -> None:
    desired = by_name(want("a.service"), want("g.service", is_global=True))
    current = by_name(have("a.service"), have("g.service"))
    assert plan(fence(desired), current) == [
        StopUnit("a.service"), RemoveUnitFile("a.service"), DaemonReload()]


def test_a_unit_launched_then_unscheduled_is_stopped_even_if_it_does_not_look_running_yet() -> None:
    """StartUnit returns once the job is queued; if the unit is destroyed before systemd runs
    the job, it still reads inactive. The plan stops it anyway (cancelling the job): otherwise it
    would start after its file was removed, with no agent watching it (CI: a destroyed unit
    stayed running under 20 concurrent clients)."""
    current = {"a.service": CurrentUnit("a.service", "h1", "launched", False)}
    assert plan({}, current) == [StopUnit("a.service"), RemoveUnitFile("a.service"),
                                 DaemonReload()]
    loaded = {"a.service": CurrentUnit("a.service", "h1", "loaded", False)}
    assert plan({}, loaded) == [RemoveUnitFile("a.service"), DaemonReload()]

