"""Table-driven tests of the engine's pure scheduler (fleetd.engine.scheduler)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

import pytest

from fleetd.engine.scheduler import (
    CHECK_NAMES,
    Assign,
    ClusterSnapshot,
    Decision,
    JobView,
    MachineView,
    TargetState,
    Unassign,
    Unschedulable,
    explain,
    place_new,
    reconcile,
    synthetic_snapshot,
)
from fleetd.unit import XFleet

Schedule = dict[str, set[str]]


def M(mid: str, **metadata: str) -> MachineView:
    return MachineView(mid, dict(metadata))


def J(name: str, state: TargetState = "launched", **options: Any) -> JobView:
    if "metadata" in options:
        options["metadata"] = tuple(
            (key, tuple(values)) for key, values in sorted(options["metadata"].items())
        )
    for key in ("machine_of", "conflicts", "replaces"):
        if key in options and isinstance(options[key], str):
            options[key] = (options[key],)
    if options.pop("glob", False):
        options["global_"] = True
    return JobView(name, state, XFleet(**options))


def snap(
    machines: Iterable[MachineView | str],
    jobs: Iterable[JobView],
    schedule: Mapping[str, Iterable[str]] | None = None,
) -> ClusterSnapshot:
    views = [M(m) if isinstance(m, str) else m for m in machines]
    return ClusterSnapshot(
        {m.id: m for m in views},
        {j.name: j for j in jobs},
        {u: frozenset(ms) for u, ms in (schedule or {}).items()},
    )


def apply(snapshot: ClusterSnapshot, decisions: list[Decision]) -> ClusterSnapshot:
    schedule: Schedule = {u: set(ms) for u, ms in snapshot.schedule.items()}
    for d in decisions:
        if isinstance(d, Unassign):
            schedule.get(d.unit, set()).discard(d.machine_id)
        elif isinstance(d, Assign):
            schedule.setdefault(d.unit, set()).add(d.machine_id)
    clean = {u: frozenset(ms) for u, ms in schedule.items() if ms}
    return ClusterSnapshot(snapshot.machines, snapshot.jobs, clean)


def unschedulable(decisions: list[Decision]) -> dict[str, Unschedulable]:
    return {d.unit: d for d in decisions if isinstance(d, Unschedulable)}


def n_units(prefix: str, count: int) -> list[JobView]:
    return [J(f"{prefix}{i}.service") for i in range(count)]


# (id, machines, jobs, schedule, expected schedule after applying, {unit: reason substring})
CASES: list[tuple[str, list[Any], list[JobView], dict[str, set[str]], Schedule, dict[str, str]]] = [
    ("tie-break by machine id", ["m2", "m1"], [J("a.service")], {}, {"a.service": {"m1"}}, {}),
    (
        "least loaded first",
        ["m1", "m2", "m3"],
        [*n_units("x", 3), J("a.service")],
        {"x0.service": {"m1"}, "x1.service": {"m1"}, "x2.service": {"m2"}},
        {
            "x0.service": {"m1"},
            "x1.service": {"m1"},
            "x2.service": {"m2"},
            "a.service": {"m3"},
        },
        {},
    ),
    (
        "new units spread over machines",
        ["m1", "m2"],
        n_units("x", 4),
        {},
        {
            "x0.service": {"m1"},
            "x1.service": {"m2"},
            "x2.service": {"m1"},
            "x3.service": {"m2"},
        },
        {},
    ),
    (
        "globals count toward load",
        [M("m1", role="web"), M("m2", role="db")],
        [J("g.service", glob=True, metadata={"role": ["web"]}), J("a.service")],
        {"g.service": {"m1"}},
        {"g.service": {"m1"}, "a.service": {"m2"}},
        {},
    ),
    (
        "MachineID alone",
        ["m1", "m2", "m3"],
        [J("a.service", machine_id="m2")],
        {},
        {"a.service": {"m2"}},
        {},
    ),
    (
        "MachineID of a dead machine",
        ["m1", "m2"],
        [J("a.service", machine_id="m9")],
        {},
        {},
        {"a.service": "2 filtered by MachineID (requires m9, not live)"},
    ),
    (
        "MachineMetadata alone",
        [M("m1", region="us"), M("m2", region="eu")],
        [J("a.service", metadata={"region": ["eu"]})],
        {},
        {"a.service": {"m2"}},
        {},
    ),
    (
        "MachineMetadata OR within a key",
        [M("m1", region="us"), M("m2", region="eu"), M("m3", region="ap")],
        [
            J("a.service", metadata={"region": ["ap", "eu"]}),
            J("b.service", metadata={"region": ["ap", "eu"]}),
        ],
        {},
        {"a.service": {"m2"}, "b.service": {"m3"}},
        {},
    ),
    (
        "MachineMetadata AND across keys",
        [M("m1", region="eu", disk="hdd"), M("m2", region="eu", disk="ssd"), M("m3", disk="ssd")],
        [J("a.service", metadata={"region": ["eu"], "disk": ["ssd"]})],
        {},
        {"a.service": {"m2"}},
        {},
    ),
    (
        "MachineMetadata matches nothing",
        [M("m1", region="us"), M("m2")],
        [J("a.service", metadata={"region": ["eu"]})],
        {},
        {},
        {"a.service": "2 filtered by MachineMetadata (region=eu)"},
    ),
    (
        "MachineID and MachineMetadata disagree",
        [M("m1", region="us"), M("m2", region="eu")],
        [J("a.service", machine_id="m1", metadata={"region": ["eu"]})],
        {},
        {},
        {"a.service": "1 filtered by MachineID (requires m1), 1 filtered by MachineMetadata"},
    ),
    (
        "MachineOf alone",
        ["m1", "m2"],
        [J("db.service"), J("app.service", machine_of="db.service")],
        {"db.service": {"m2"}},
        {"db.service": {"m2"}, "app.service": {"m2"}},
        {},
    ),
    (
        "MachineOf placed in the same pass as its target",
        ["m1", "m2"],
        [J("x0.service"), J("a.service", machine_of="z.service"), J("z.service")],
        {"x0.service": {"m1"}},
        {"x0.service": {"m1"}, "z.service": {"m2"}, "a.service": {"m2"}},
        {},
    ),
    (
        "MachineOf target inactive",
        ["m1"],
        [J("db.service", "inactive"), J("app.service", machine_of="db.service")],
        {},
        {},
        {"app.service": "1 filtered by MachineOf (follows db.service, which is not scheduled)"},
    ),
    (
        "MachineOf target missing from the registry",
        ["m1"],
        [J("app.service", machine_of="db.service")],
        {},
        {},
        {"app.service": "follows db.service, which does not exist"},
    ),
    (
        "MachineOf target unschedulable",
        ["m1"],
        [J("db.service", machine_id="m9"), J("app.service", machine_of="db.service")],
        {},
        {},
        {"db.service": "MachineID", "app.service": "not scheduled"},
    ),
    (
        "MachineOf cycle",
        ["m1", "m2"],
        [
            J("a.service", machine_of="b.service"),
            J("b.service", machine_of="a.service"),
            J("c.service", machine_of="a.service"),
        ],
        {"a.service": {"m1"}, "b.service": {"m1"}},
        {},
        {
            "a.service": "cycle: a.service -> b.service -> a.service",
            "b.service": "cycle: b.service -> a.service -> b.service",
            "c.service": "follows a.service, which is not scheduled",
        },
    ),
    (
        "MachineOf (through another unit) a unit it Replaces: placed nowhere, not beside it",
        ["m1", "m2"],
        [
            J("db.service"),
            J("proxy.service", machine_of="db.service"),
            J("app.service", machine_of="proxy.service", replaces="db.service"),
        ],
        {},
        {"db.service": {"m1"}, "proxy.service": {"m1"}},
        {"app.service": "follows db.service (MachineOf), which it Replaces"},
    ),
    (
        "MachineOf self loop",
        ["m1"],
        [J("a.service", machine_of="a.service")],
        {},
        {},
        {"a.service": "cycle: a.service -> a.service"},
    ),
    (
        "MachineOf two targets on different machines",
        ["m1", "m2"],
        [J("a.service"), J("b.service"), J("c.service", machine_of=("a.service", "b.service"))],
        {"a.service": {"m1"}, "b.service": {"m2"}},
        {"a.service": {"m1"}, "b.service": {"m2"}},
        {"c.service": "2 filtered by MachineOf (follows a.service on m1, b.service on m2)"},
    ),
    (
        "several followers land with their target",
        ["m1", "m2", "m3"],
        [J("db.service"), *(J(f"f{i}.service", machine_of="db.service") for i in range(3))],
        {"db.service": {"m3"}},
        {
            "db.service": {"m3"},
            "f0.service": {"m3"},
            "f1.service": {"m3"},
            "f2.service": {"m3"},
        },
        {},
    ),
    (
        "Conflicts: the new unit names the placed one",
        ["m1", "m2"],
        [J("a.service", conflicts="b.service"), J("b.service")],
        {"b.service": {"m1"}},
        {"a.service": {"m2"}, "b.service": {"m1"}},
        {},
    ),
    (
        "Conflicts: the placed unit names the new one",
        ["m1", "m2"],
        [J("a.service"), J("b.service", conflicts="a.service")],
        {"b.service": {"m1"}},
        {"a.service": {"m2"}, "b.service": {"m1"}},
        {},
    ),
    (
        "Conflicts with a glob",
        ["m1", "m2", "m3"],
        [J("web1.service"), J("web2.service"), J("web3.service", conflicts="web*.service")],
        {"web1.service": {"m1"}, "web2.service": {"m2"}},
        {"web1.service": {"m1"}, "web2.service": {"m2"}, "web3.service": {"m3"}},
        {},
    ),
    (
        "a unit never conflicts with itself",
        ["m1"],
        [J("web1.service", conflicts="web*.service")],
        {"web1.service": {"m1"}},
        {"web1.service": {"m1"}},
        {},
    ),
    (
        "Conflicts leave no room",
        ["m1", "m2"],
        [J(f"web{i}.service", conflicts="web*.service") for i in range(3)],
        {},
        {"web0.service": {"m1"}, "web1.service": {"m2"}},
        {"web2.service": "no machine fits: 2 filtered by Conflicts (web*.service)"},
    ),
    (
        "Conflicts: reverse direction only, in the summary",
        ["m1"],
        [J("a.service", conflicts="b.service"), J("b.service")],
        {"a.service": {"m1"}},
        {"a.service": {"m1"}},
        {"b.service": "1 filtered by Conflicts (conflicted by a.service)"},
    ),
    (
        "Conflicts and MachineOf: follower cannot join its target",
        ["m1", "m2"],
        [
            J("db.service"),
            J("x.service"),
            J("app.service", machine_of="db.service", conflicts="x.service"),
        ],
        {"db.service": {"m1"}, "x.service": {"m1"}},
        {"db.service": {"m1"}, "x.service": {"m1"}},
        {
            "app.service": "1 filtered by MachineOf (follows db.service on m1), "
            "1 filtered by Conflicts (x.service)"
        },
    ),
    (
        "keep a feasible assignment even when unbalanced",
        ["m1", "m2"],
        n_units("x", 3),
        {"x0.service": {"m1"}, "x1.service": {"m1"}, "x2.service": {"m1"}},
        {"x0.service": {"m1"}, "x1.service": {"m1"}, "x2.service": {"m1"}},
        {},
    ),
    (
        "dead machine: rescheduled elsewhere",
        ["m1", "m2"],
        [J("a.service"), J("x.service")],
        {"a.service": {"m9"}, "x.service": {"m1"}},
        {"a.service": {"m2"}, "x.service": {"m1"}},
        {},
    ),
    (
        "destroyed unit unassigned",
        ["m1"],
        [],
        {"gone.service": {"m1", "m9"}},
        {},
        {},
    ),
    (
        "inactive unit unassigned everywhere",
        ["m1", "m2"],
        [J("a.service", "inactive")],
        {"a.service": {"m1", "m2"}},
        {},
        {},
    ),
    ("inactive unit never placed", ["m1"], [J("a.service", "inactive")], {}, {}, {}),
    (
        "loaded units are placed too",
        ["m1"],
        [J("a.service", "loaded")],
        {},
        {"a.service": {"m1"}},
        {},
    ),
    (
        "duplicate assignment of a non-global unit",
        ["m1", "m2"],
        [J("a.service")],
        {"a.service": {"m1", "m2"}},
        {"a.service": {"m1"}},
        {},
    ),
    (
        "existing assignment made infeasible by metadata",
        [M("m1", region="us"), M("m2", region="eu")],
        [J("a.service", metadata={"region": ["eu"]})],
        {"a.service": {"m1"}},
        {"a.service": {"m2"}},
        {},
    ),
    (
        "existing co-located conflict: one moves",
        ["m1", "m2"],
        [J("a.service", conflicts="b.service"), J("b.service")],
        {"a.service": {"m1"}, "b.service": {"m1"}},
        {"a.service": {"m2"}, "b.service": {"m1"}},
        {},
    ),
    (
        "follower follows its target when the target moves",
        [M("m1", region="us"), M("m2", region="eu")],
        [J("db.service", metadata={"region": ["eu"]}), J("app.service", machine_of="db.service")],
        {"db.service": {"m1"}, "app.service": {"m1"}},
        {"db.service": {"m2"}, "app.service": {"m2"}},
        {},
    ),
    (
        "follower follows its target off a dead machine",
        ["m1", "m2"],
        [J("db.service"), J("app.service", machine_of="db.service"), J("x.service")],
        {"db.service": {"m9"}, "app.service": {"m9"}, "x.service": {"m1"}},
        {"db.service": {"m2"}, "app.service": {"m2"}, "x.service": {"m1"}},
        {},
    ),
    (
        "Replaces: the replaced unit moves off the replacer's machine",
        ["m1", "m2"],
        [J("old.service"), J("new.service", machine_id="m1", replaces="old.service")],
        {"old.service": {"m1"}},
        {"old.service": {"m2"}, "new.service": {"m1"}},
        {},
    ),
    (
        "Replaces overrides Conflicts for the replacer",
        ["m1", "m2"],
        [
            J("old.service", conflicts="new.service"),
            J("new.service", machine_id="m1", replaces="old.service", conflicts="old.service"),
        ],
        {"old.service": {"m1"}},
        {"old.service": {"m2"}, "new.service": {"m1"}},
        {},
    ),
    (
        "Replaces: the replaced unit has nowhere else to go",
        ["m1"],
        [J("old.service"), J("new.service", replaces="old.service")],
        {"old.service": {"m1"}},
        {"new.service": {"m1"}},
        {"old.service": "1 filtered by Replaces (replaced by new.service)"},
    ),
    (
        "mutual Replaces: the placed unit keeps running, its rival runs nowhere",
        ["m1", "m2", "m3"],
        [J("a.service", replaces="b.service"), J("b.service", replaces="a.service")],
        {"b.service": {"m2"}},
        {"b.service": {"m2"}},
        {"a.service": "3 filtered by Replaces (replaced by b.service, which it Replaces too: "
                      "only one of them runs)"},
    ),
    (
        "mutual Replaces, neither placed: the first by name runs",
        ["m1", "m2"],
        [J("b.service", replaces="a.service"), J("a.service", replaces="b.service")],
        {},
        {"a.service": {"m1"}},
        {"b.service": "2 filtered by Replaces (replaced by a.service, which it Replaces too: "
                      "only one of them runs)"},
    ),
    (
        "mutual Replaces, both placed: one is unscheduled",
        ["m1", "m2"],
        [J("a.service", replaces="b.service"), J("b.service", replaces="a.service")],
        {"a.service": {"m1"}, "b.service": {"m2"}},
        {"b.service": {"m2"}},
        {"a.service": "2 filtered by Replaces (replaced by b.service, which it Replaces too: "
                      "only one of them runs)"},
    ),
    (
        "mutual Replaces by glob, beside a one-way replacer",
        ["m1", "m2"],
        [
            J("r.0.service", replaces="r.*.service"),
            J("r.1.service", replaces="r.0.service"),
            J("x.service", machine_id="m1", replaces="r.1.service"),
        ],
        {"r.1.service": {"m1"}},
        {"r.1.service": {"m2"}, "x.service": {"m1"}},
        {"r.0.service": "2 filtered by Replaces (replaced by r.1.service, which it Replaces "
                        "too: only one of them runs)"},
    ),
    (
        "Replaces: followers of the replaced unit move with it",
        ["m1", "m2"],
        [
            J("old.service"),
            J("f.service", machine_of="old.service"),
            J("new.service", machine_id="m1", replaces="old.service"),
        ],
        {"old.service": {"m1"}, "f.service": {"m1"}},
        {"old.service": {"m2"}, "f.service": {"m2"}, "new.service": {"m1"}},
        {},
    ),
    (
        "global on every machine",
        ["m1", "m2", "m3"],
        [J("g.service", glob=True)],
        {},
        {"g.service": {"m1", "m2", "m3"}},
        {},
    ),
    (
        "global with metadata",
        [M("m1", role="web"), M("m2", role="db"), M("m3", role="web")],
        [J("g.service", glob=True, metadata={"role": ["web"]})],
        {"g.service": {"m2"}},
        {"g.service": {"m1", "m3"}},
        {},
    ),
    (
        "global skips machines hosting a conflicting unit",
        ["m1", "m2", "m3"],
        [J("g.service", glob=True, conflicts="db*"), J("db1.service", machine_id="m2")],
        {"db1.service": {"m2"}},
        {"g.service": {"m1", "m3"}, "db1.service": {"m2"}},
        {},
    ),
    (
        "a global conflicting with a running global runs nowhere (TestScheduleGlobalConflicts)",
        ["m1", "m2", "m3"],
        [
            J("conflict-global.1.service", glob=True, conflicts="conflict-global.*.service"),
            J("conflict-global.2.service", glob=True, conflicts="conflict-global.*.service"),
        ],
        {"conflict-global.1.service": {"m1", "m2", "m3"}},
        {"conflict-global.1.service": {"m1", "m2", "m3"}},
        {"conflict-global.2.service": "3 filtered by Conflicts (conflict-global.*.service)"},
    ),
    (
        "running global keeps its machines even when a conflicting global sorts first",
        ["m1", "m2"],
        [J("a-g.service", glob=True, conflicts="*-g.service"), J("b-g.service", glob=True)],
        {"b-g.service": {"m1", "m2"}},
        {"b-g.service": {"m1", "m2"}},
        {"a-g.service": "2 filtered by Conflicts (*-g.service)"},
    ),
    (
        "global matching its own Conflicts pattern still runs everywhere",
        ["m1", "m2"],
        [J("conflict-global.1.service", glob=True, conflicts="conflict-global.*.service")],
        {},
        {"conflict-global.1.service": {"m1", "m2"}},
        {},
    ),
    (
        "normal unit avoids machines of a conflicting global",
        [M("m1", role="web"), M("m2", role="db")],
        [
            J("g.service", glob=True, metadata={"role": ["web"]}),
            J("a.service", conflicts="g.service"),
        ],
        {"g.service": {"m1"}},
        {"g.service": {"m1"}, "a.service": {"m2"}},
        {},
    ),
    (
        "global matching no machine",
        [M("m1", role="db")],
        [J("g.service", glob=True, metadata={"role": ["web"]})],
        {},
        {},
        {"g.service": "1 filtered by MachineMetadata (role=web)"},
    ),
    (
        "follower of a global",
        [M("m1", role="web"), M("m2", role="db"), M("m3", role="web")],
        [
            J("g.service", glob=True, metadata={"role": ["web"]}),
            J("a.service", machine_of="g.service"),
            J("b.service", machine_of="g.service"),
        ],
        {},
        {"g.service": {"m1", "m3"}, "a.service": {"m1"}, "b.service": {"m3"}},
        {},
    ),
    (
        "no live machines",
        [],
        [J("a.service")],
        {"a.service": {"m1"}},
        {},
        {"a.service": "no live machines"},
    ),
]


@pytest.mark.parametrize(
    ("machines", "jobs", "schedule", "expected", "unplaced"),
    [pytest.param(*row[1:], id=row[0]) for row in CASES],
)
def test_reconcile_table(
    machines: list[Any],
    jobs: list[JobView],
    schedule: dict[str, set[str]],
    expected: Schedule,
    unplaced: dict[str, str],
) -> None:
    snapshot = snap(machines, jobs, schedule)
    decisions = reconcile(snapshot)
    after = apply(snapshot, decisions)
    assert {u: set(ms) for u, ms in after.schedule.items()} == expected
    found = unschedulable(decisions)
    assert set(found) == set(unplaced)
    for unit, fragment in unplaced.items():
        assert fragment in found[unit].reason
        assert found[unit].filtered == tuple(
            (name, n) for name, n in found[unit].filtered if name in CHECK_NAMES and n > 0
        )
    # Unassign before Assign for every unit, no redundant operations.
    seen_assign: set[str] = set()
    for d in decisions:
        if isinstance(d, Assign):
            seen_assign.add(d.unit)
            assert d.machine_id not in snapshot.schedule.get(d.unit, frozenset())
        elif isinstance(d, Unassign):
            assert d.unit not in seen_assign
            assert d.machine_id in snapshot.schedule[d.unit]
    # Idempotent: applying and reconciling again yields the same Unschedulable and nothing else.
    again = reconcile(after)
    assert [d for d in again if not isinstance(d, Unschedulable)] == []
    assert again == [d for d in decisions if isinstance(d, Unschedulable)]
    assert reconcile(snapshot) == decisions


# (id, snapshot, expected decisions, exactly)
REASONS: list[tuple[str, ClusterSnapshot, list[Decision]]] = [
    (
        "lease expired",
        snap(["m1"], [J("a.service")], {"a.service": {"m9"}}),
        [
            Unassign("a.service", "m9", "machine m9 lease expired"),
            Assign(
                "a.service", "m1", "target state launched; least loaded feasible machine (0 units)"
            ),
        ],
    ),
    (
        "destroyed and inactive",
        snap(["m1"], [J("b.service", "inactive")], {"a.service": {"m1"}, "b.service": {"m1"}}),
        [
            Unassign("a.service", "m1", "unit destroyed"),
            Unassign("b.service", "m1", "target state inactive"),
        ],
    ),
    (
        "conflict",
        snap(
            ["m1", "m2"],
            [J("a.service", conflicts="web*.service"), J("web1.service")],
            {"a.service": {"m2"}, "web1.service": {"m2"}},
        ),
        [
            Unassign("a.service", "m2", "conflicts with web1.service on m2"),
            Assign(
                "a.service", "m1", "target state launched; least loaded feasible machine (0 units)"
            ),
        ],
    ),
    (
        "follower",
        snap(
            [M("m1", r="a"), M("m2", r="b")],
            [J("db.service", metadata={"r": ["b"]}), J("app.service", machine_of="db.service")],
            {"db.service": {"m1"}, "app.service": {"m1"}},
        ),
        [
            Unassign("app.service", "m1", "follows db.service on m2"),
            Unassign("db.service", "m1", "metadata of m1 does not match r=b"),
            Assign(
                "db.service", "m2", "target state launched; least loaded feasible machine (0 units)"
            ),
            Assign("app.service", "m2", "follows db.service"),
        ],
    ),
    (
        "replaced",
        snap(
            ["m1", "m2"],
            [J("old.service"), J("new.service", machine_id="m1", replaces="old.service")],
            {"old.service": {"m1"}},
        ),
        [
            Unassign("old.service", "m1", "replaced by new.service"),
            Assign(
                "new.service",
                "m1",
                "target state launched; least loaded feasible machine (1 units)",
            ),
            Assign(
                "old.service",
                "m2",
                "target state launched; least loaded feasible machine (0 units)",
            ),
        ],
    ),
    (
        "unschedulable with counts",
        snap(
            [M("m1", r="a"), M("m2", r="b"), M("m3", r="b")],
            [
                J("a.service", metadata={"r": ["b"]}, conflicts="web*.service"),
                J("web1.service"),
                J("web2.service"),
            ],
            {"web1.service": {"m2"}, "web2.service": {"m3"}},
        ),
        [
            Unschedulable(
                "a.service",
                "no machine fits: 1 filtered by MachineMetadata (r=b), "
                "2 filtered by Conflicts (web*.service)",
                (("MachineMetadata", 1), ("Conflicts", 2)),
            )
        ],
    ),
    (
        "cycle",
        snap(["m1"], [J("a.service", machine_of="a.service")]),
        [
            Unschedulable(
                "a.service",
                "no machine fits: 1 filtered by MachineOf "
                "(MachineOf cycle: a.service -> a.service)",
                (("MachineOf", 1),),
            )
        ],
    ),
]


@pytest.mark.parametrize(("snapshot", "expected"), [pytest.param(*r[1:], id=r[0]) for r in REASONS])
def test_reconcile_reasons(snapshot: ClusterSnapshot, expected: list[Decision]) -> None:
    assert reconcile(snapshot) == expected


def test_global_counts_and_assign_reason() -> None:
    snapshot = snap(["m1", "m2"], [J("g.service", glob=True)], {"g.service": {"m2"}})
    assert reconcile(snapshot) == [Assign("g.service", "m1", "global unit; m1 fits")]


def test_global_unassigned_when_metadata_changes() -> None:
    snapshot = snap(
        [M("m1", role="web"), M("m2", role="db")],
        [J("g.service", glob=True, metadata={"role": ["web"]})],
        {"g.service": {"m1", "m2"}},
    )
    assert reconcile(snapshot) == [
        Unassign("g.service", "m2", "metadata of m2 does not match role=web")
    ]


# (id, snapshot, unit, expected explanation fields)
EXPLAIN: list[tuple[str, ClusterSnapshot, str, tuple[Any, ...]]] = [
    (
        "each machine's first rejecting check",
        snap(
            [M("m1", r="a"), M("m2", r="b"), M("m3", r="b"), M("m4", r="b")],
            [
                J("a.service", metadata={"r": ["b"]}, conflicts="x.service"),
                J("x.service", machine_id="m2"),
            ],
            {"x.service": {"m2"}, "a.service": {"m3"}},
        ),
        "a.service",
        (
            ("m3",),
            (
                ("m1", "MachineMetadata", "metadata of m1 does not match r=b"),
                ("m2", "Conflicts", "conflicts with x.service on m2"),
            ),
            ("m3", "m4"),
        ),
    ),
    (
        "MachineID and MachineOf",
        snap(
            ["m1", "m2", "m3"],
            [J("db.service", machine_id="m2"), J("app.service", machine_of="db.service")],
        ),
        "app.service",
        (
            ("m2",),
            (
                ("m1", "MachineOf", "follows db.service on m2"),
                ("m3", "MachineOf", "follows db.service on m2"),
            ),
            ("m2",),
        ),
    ),
    (
        "replaced unit",
        snap(
            ["m1", "m2"],
            [J("old.service"), J("new.service", machine_id="m1", replaces="old.service")],
            {"old.service": {"m1"}, "new.service": {"m1"}},
        ),
        "old.service",
        (("m2",), (("m1", "Replaces", "replaced by new.service"),), ("m2",)),
    ),
    (
        "unknown unit",
        snap(["m1"], []),
        "nope.service",
        ((), (), ()),
    ),
    (
        "MachineID names a dead machine",
        snap(["m1"], [J("a.service", machine_id="m9")]),
        "a.service",
        ((), (("m1", "MachineID", "MachineID requires m9, which is not live"),), ()),
    ),
]


@pytest.mark.parametrize(
    ("snapshot", "unit", "expected"), [pytest.param(*r[1:], id=r[0]) for r in EXPLAIN]
)
def test_explain(snapshot: ClusterSnapshot, unit: str, expected: tuple[Any, ...]) -> None:
    result = explain(snapshot, unit)
    assert result.unit == unit
    assert (result.scheduled_on, result.rejected, result.feasible) == expected


def test_check_names_in_pipeline_order() -> None:
    assert CHECK_NAMES == ("MachineID", "MachineMetadata", "MachineOf", "Conflicts", "Replaces",
                           "Departed", "Held", "Draining", "Resources")


def test_synthetic_snapshot_converges_quickly() -> None:
    snapshot = synthetic_snapshot(200, 2000, seed=3)
    start = time.perf_counter()
    decisions = reconcile(snapshot)
    assert time.perf_counter() - start < 5
    after = apply(snapshot, decisions)
    assert all(isinstance(d, Unschedulable) for d in reconcile(after))
    assert synthetic_snapshot(200, 2000, seed=3) == snapshot


# -- the engine's grace: departed machines and held units -------------------------------------


def grace(
    machines: Iterable[MachineView | str],
    jobs: Iterable[JobView],
    schedule: Mapping[str, Iterable[str]],
    departed: Iterable[str],
    held: Iterable[str] = (),
) -> ClusterSnapshot:
    base = snap(machines, jobs, schedule)
    return ClusterSnapshot(base.machines, base.jobs, base.schedule, frozenset(departed),
                           frozenset(held))


def test_a_departed_machine_keeps_its_units_and_new_ones_go_elsewhere_at_once() -> None:
    # m1 left (in its grace) with a.service; m2 is busier but live. The engine used to pick m1
    # for b.service (least loaded), drop that Assign after the fact and leave b unplaced for
    # the whole grace; the Departed check now sends it to m2 in the same pass.
    snapshot = grace(
        ["m1", "m2"],
        [J("a.service"), J("b.service"), J("c.service"), J("d.service")],
        {"a.service": {"m1"}, "c.service": {"m2"}, "d.service": {"m2"}},
        departed=["m1"], held=["a.service"],
    )
    assert reconcile(snapshot) == [
        Assign("b.service", "m2", "target state launched; least loaded feasible machine (2 units)")
    ]
    assert place_new(snapshot, ["b.service"]) == reconcile(snapshot)
    ex = explain(snapshot, "b.service")
    assert ex.rejected == (("m1", "Departed", "m1 left the cluster: in its grace it gets no new "
                            "units"),)


def test_a_held_unit_is_placed_nowhere_else_during_the_grace() -> None:
    # a.service ran on m1, which left; it was destroyed and started again (so it has no
    # assignment), but m1 may still run the old copy: no machine may take it yet.
    snapshot = grace(["m1", "m2"], [J("a.service")], {}, departed=["m1"], held=["a.service"])
    reason = ("no machine fits: 1 filtered by Departed (left the cluster, in their grace), "
              "1 filtered by Held (may still run on a machine in its grace)")
    assert reconcile(snapshot) == [
        Unschedulable("a.service", reason, (("Departed", 1), ("Held", 1)))
    ]
    assert place_new(snapshot, ["a.service"]) == reconcile(snapshot)


def test_a_global_unit_keeps_a_departed_machine_and_goes_to_new_ones() -> None:
    snapshot = grace(["m1", "m2", "m3"], [J("g.service", glob=True)],
                     {"g.service": {"m1", "m2"}}, departed=["m1"], held=["g.service"])
    assert reconcile(snapshot) == [Assign("g.service", "m3", "global unit; m3 fits")]
    departed_only = grace(["m1", "m2"], [J("g.service", glob=True)], {}, departed=["m1"])
    assert reconcile(departed_only) == [Assign("g.service", "m2", "global unit; m2 fits")]


def test_a_follower_of_a_unit_on_a_departed_machine_waits() -> None:
    snapshot = grace(
        ["m1", "m2"], [J("db.service"), J("app.service", machine_of="db.service")],
        {"db.service": {"m1"}}, departed=["m1"], held=["db.service"],
    )
    (d,) = reconcile(snapshot)
    assert isinstance(d, Unschedulable) and d.unit == "app.service"
    assert d.filtered == (("MachineOf", 1), ("Departed", 1))


# -- place_new: the engine's fast path, the same pipeline as reconcile --------------------------

PLACE_NEW: list[tuple[str, ClusterSnapshot, list[str], list[Decision] | None]] = [
    (
        "least loaded",
        snap(["m1", "m2"], [J("a.service"), J("new.service")], {"a.service": {"m1"}}),
        ["new.service"],
        [Assign("new.service", "m2",
                "target state launched; least loaded feasible machine (0 units)")],
    ),
    (
        "followers come along, targets first",
        snap(
            ["m1", "m2"],
            [J("z.service"), J("app.service", machine_of="z.service"),
             J("side.service", machine_of="app.service"), J("x.service")],
            {"x.service": {"m1"}},
        ),
        ["z.service"],
        [Assign("z.service", "m2", "target state launched; least loaded feasible machine "
                "(0 units)"),
         Assign("app.service", "m2", "follows z.service"),
         Assign("side.service", "m2", "follows app.service")],
    ),
    (
        "nothing fits: reconcile's reason",
        snap([M("m1", r="a")], [J("a.service", metadata={"r": ["b"]})]),
        ["a.service"],
        [Unschedulable("a.service", "no machine fits: 1 filtered by MachineMetadata (r=b)",
                       (("MachineMetadata", 1),))],
    ),
    (
        "conflicts with what runs",
        snap(["m1", "m2"], [J("web1.service"), J("web2.service", conflicts="web*.service")],
             {"web1.service": {"m1"}}),
        ["web2.service"],
        [Assign("web2.service", "m2",
                "target state launched; least loaded feasible machine (0 units)")],
    ),
    ("nothing to do", snap(["m1"], []), [], []),
    ("global: full pass", snap(["m1"], [J("g.service", glob=True)]), ["g.service"], None),
    ("Replaces: full pass", snap(["m1"], [J("a.service", replaces="b.service"), J("b.service")]),
     ["a.service"], None),
    ("replaced by another: full pass",
     snap(["m1"], [J("a.service", replaces="b.service"), J("b.service")]), ["b.service"], None),
    ("already assigned: full pass", snap(["m1"], [J("a.service")], {"a.service": {"m1"}}),
     ["a.service"], None),
    ("inactive: full pass", snap(["m1"], [J("a.service", "inactive")]), ["a.service"], None),
    ("unknown: full pass", snap(["m1"], []), ["a.service"], None),
    (
        "MachineOf cycle through a placed unit: full pass",
        snap(["m1"], [J("a.service", machine_of="b.service"),
                      J("b.service", machine_of="a.service")], {"b.service": {"m1"}}),
        ["a.service"],
        None,
    ),
]


@pytest.mark.parametrize(
    ("snapshot", "units", "expected"), [pytest.param(*r[1:], id=r[0]) for r in PLACE_NEW]
)
def test_place_new(snapshot: ClusterSnapshot, units: list[str],
                   expected: list[Decision] | None) -> None:
    decisions = place_new(snapshot, units)
    assert decisions == expected
    if decisions is not None:
        # The full pass makes the same decisions here, and keeps them once applied.
        assert reconcile(snapshot) == decisions
        after = apply(snapshot, decisions)
        assert reconcile(after) == [d for d in decisions if isinstance(d, Unschedulable)]


# -- ranking and the pipeline's extension points ------------------------------------------------


def test_explain_ranks_the_feasible_machines_best_first() -> None:
    snapshot = snap(["m1", "m2", "m3"], [J("a.service"), J("b.service"), J("new.service")],
                    {"a.service": {"m1"}, "b.service": {"m1"}})
    ex = explain(snapshot, "new.service")
    assert ex.feasible == ("m1", "m2", "m3")
    assert [(mid, round(score, 3), detail) for mid, score, detail in ex.scores] == [
        ("m2", 1.0, "LeastLoaded 1 (0 units)"),
        ("m3", 1.0, "LeastLoaded 1 (0 units)"),
        ("m1", 0.333, "LeastLoaded 0.333 (2 units)"),
    ]
    # The engine's choice is the top of the ranking.
    assert reconcile(snapshot)[0] == Assign(
        "new.service", "m2", "target state launched; least loaded feasible machine (0 units)")


def test_a_check_and_a_ranker_plug_into_the_pipeline() -> None:
    """What a resource checker and a spread ranker will be: one Check and one Ranker."""
    from fleetd.engine._feasibility import CHECKS, Candidates, Check, WorkingState
    from fleetd.engine._ranking import Ranker
    from fleetd.engine.scheduler import Pipeline

    class NotOdd(Check):
        name = "NotOdd"

        def filter(self, state: WorkingState, job: JobView, candidates: Candidates
                   ) -> Candidates:
            pool = state.machine_ids if candidates is None else candidates
            return {mid for mid in pool if int(mid[1:]) % 2 == 0}

        def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
            return f"{machine_id} is odd"

    class MostLoaded(Ranker):
        name = "MostLoaded"

        def score(self, state: WorkingState, job: JobView, machine_id: str) -> float:
            return 1 - 1 / (1 + state.load(machine_id))

        def detail(self, state: WorkingState, job: JobView, machine_id: str) -> str:
            return f"{state.load(machine_id)} units"

    pipeline = Pipeline((*CHECKS, NotOdd()), (MostLoaded(),))
    snapshot = snap(["m1", "m2", "m3", "m4"], [J("a.service"), J("new.service")],
                    {"a.service": {"m4"}})
    assert reconcile(snapshot, pipeline) == [
        Assign("new.service", "m4", "target state launched; best MostLoaded (1 units)")]
    assert place_new(snapshot, ["new.service"], pipeline) == reconcile(snapshot, pipeline)
    ex = explain(snapshot, "new.service", pipeline)
    assert [r[:2] for r in ex.rejected] == [("m1", "NotOdd"), ("m3", "NotOdd")]
    assert [s[0] for s in ex.scores] == ["m4", "m2"]
    nothing = snap(["m1"], [J("new.service")])
    (d,) = reconcile(nothing, pipeline)
    assert isinstance(d, Unschedulable) and d.filtered == (("NotOdd", 1),)
