"""fleet's scheduling functional tests, ported to the nspawn lab (coreos/fleet
functional/scheduling_test.go, metadata_test.go, the first smoke_test.go's TestCluster):
MachineOf, Conflicts (globs, lists, one-way), Replaces, MachineID, Global (with Conflicts),
specifiers in [X-Fleet] metadata, and MachineOf cycles (issue 9 item 9). Three machines,
each with metadata hostname=<its name>; systemd inside the machines is the ground truth."""

from __future__ import annotations

import pathlib

import pytest

from tests.lab.conftest import (
    FIXTURES,
    active_units,
    fixture,
    fleetctl,
    is_active,
    lab,
    machine_ids,
    module_lab,
    name_of,
    single,
    unit_files,
    wait_active,
    wait_machines,
    wait_unit_files,
    wait_until,
    write_unit,
)

NAMES = ["m1", "m2", "m3"]


_lab = module_lab(3, {n: f"hostname={n}" for n in NAMES})
pytestmark = pytest.mark.usefixtures("reset_after")


def systemd_holders(unit: str) -> list[str]:
    return [n for n in NAMES if is_active(n, unit)]


# --- TestScheduleMachineOf ---------------------------------------------------------------

def test_machineof_pairs_share_a_machine_and_move_together() -> None:
    for i in range(3):
        fleetctl("start", "--no-block", fixture(f"ping.{i}.service"),
                 fixture(f"pong.{i}.service"))
    assert len(unit_files()) == 6  # visible at once
    where = single(wait_active(6))
    for i in range(3):
        assert where[f"ping.{i}.service"] == where[f"pong.{i}.service"]
    # fleet moved pair 1; here the first pair not on m1, the machine fleetctl talks to
    i = next(i for i in range(3) if where[f"ping.{i}.service"] != machine_ids()["m1"])
    ping, pong = f"ping.{i}.service", f"pong.{i}.service"
    old = name_of(where[ping])
    # fleet stops fleet on that machine (systemctl stop fleet): the pair moves together
    lab("exec", old, "--", "systemctl", "stop", "fleetd")
    wait_machines(2)

    def migrated() -> dict[str, list[str]] | None:
        a = active_units()
        ok = sum(map(len, a.values())) == 6 and a.get(ping) not in (None, [where[ping]])
        return a if ok else None
    now = single(wait_until(migrated, 60, what=f"{ping} active on another machine"))
    assert now[pong] == now[ping] != where[ping]
    # ground truth: nothing of the pair still runs on the machine whose fleetd stopped
    assert not is_active(old, ping) and not is_active(old, pong)
    assert systemd_holders(ping) == [name_of(now[ping])]


# --- TestScheduleConflicts, and the first smoke test's TestCluster ------------------------

def test_conflicting_units_spread_and_wait_for_a_machine_to_join() -> None:
    lab("stop", "m3")
    wait_machines(2)
    for i in range(5):
        fleetctl("start", "--no-block", fixture(f"conflict.{i}.service"))
    assert len(wait_unit_files(5)) == 5
    where = single(wait_active(2))
    assert len(set(where.values())) == 2
    lab("start", "m3")
    wait_machines(3)
    where = single(wait_active(3))
    assert len(set(where.values())) == 3
    for unit, mid in where.items():
        assert systemd_holders(unit) == [name_of(mid)]
    # the other two stay unscheduled: nowhere left that does not conflict
    states = unit_files()
    waiting = [u for u in states if u not in where]
    assert len(waiting) == 2 and all(states[u]["target"] == "-" for u in waiting), states


# --- TestScheduleMultipleConflicts ---------------------------------------------------------

def test_conflicts_listed_on_one_line_or_many_are_all_honoured() -> None:
    fleetctl("start", fixture("conflict.0.service"), fixture("conflict.1.service"))
    first = single(wait_active(2))
    fleetctl("start", "--no-block", fixture("conflict.multiple.1.service"),
             fixture("conflict.multiple.2.service"))
    where = single(wait_active(4))
    free = (set(machine_ids().values()) - set(first.values())).pop()
    assert where["conflict.multiple.1.service"] == free
    assert where["conflict.multiple.2.service"] == free


# --- TestScheduleOneWayConflict -----------------------------------------------------------

def test_one_way_conflict(tmp_path: pathlib.Path) -> None:
    """fleet ran this on one machine; here both units are held to m1 by metadata."""
    c = write_unit(tmp_path, "conflicts-with-hello.service",
                   xfleet="Conflicts=hello.service\nMachineMetadata=hostname=m1")
    h = write_unit(tmp_path, "hello.service", xfleet="MachineMetadata=hostname=m1")
    fleetctl("start", "--no-block", c)
    assert list(single(wait_active(1))) == ["conflicts-with-hello.service"]
    fleetctl("start", "--no-block", h)
    assert len(unit_files()) == 2
    # hello.service has no Conflicts, but the other unit refuses to share m1 with it
    for _ in range(10):
        assert list(single(wait_active(1))) == ["conflicts-with-hello.service"]
    assert not is_active("m1", "hello.service")
    fleetctl("destroy", "conflicts-with-hello.service")
    where = wait_until(lambda: (lambda a: a if list(a) == ["hello.service"] else None)(
        active_units()), 60, what="hello.service active once the conflicting unit is gone")
    assert single(where)["hello.service"] == machine_ids()["m1"]
    assert systemd_holders("hello.service") == ["m1"]


# --- TestScheduleReplace, TestScheduleCircularReplace --------------------------------------

def _on(tmp: pathlib.Path, name: str, xfleet: str) -> str:
    return write_unit(tmp, name, xfleet=xfleet)


def test_replacing_unit_never_shares_the_machine_of_the_replaced_one(
        tmp_path: pathlib.Path) -> None:
    """fleet: two machines, replace.1 (Replaces=replace.0) lands elsewhere. Here the
    least-loaded choice would be replace.0's machine, so only Replaces can separate them."""
    two = "MachineMetadata=hostname=m1\nMachineMetadata=hostname=m2"
    for i in range(2):  # load m2 so that m1 is the least loaded of the two
        fleetctl("start", _on(tmp_path, f"ballast.{i}.service", "MachineMetadata=hostname=m2"))
    fleetctl("start", _on(tmp_path, "replace.0.service", two))
    assert single(wait_active(3))["replace.0.service"] == machine_ids()["m1"]
    body = (FIXTURES / "replace.1.service").read_text().replace(
        "[X-Fleet]\n", f"[X-Fleet]\n{two}\n")
    (tmp_path / "replace.1.service").write_text(body)
    fleetctl("start", "--no-block", str(tmp_path / "replace.1.service"))
    assert len(wait_unit_files(4)) == 4
    where = single(wait_active(4))
    assert where["replace.0.service"] != where["replace.1.service"]


def test_circular_replaces_leave_one_unit_launched(tmp_path: pathlib.Path) -> None:
    zero = tmp_path / "replace.0.service"
    zero.write_text((FIXTURES / "replace.1.service").read_text().replace(
        "Replaces=replace.0.service", "Replaces=replace.1.service"))
    fleetctl("start", "--no-block", str(zero))
    assert list(wait_unit_files(1)) == ["replace.0.service"]
    wait_active(1)
    fleetctl("start", "--no-block", fixture("replace.1.service"))
    states = wait_unit_files(2)
    assert len(states) == 2
    active = single(wait_active(1))
    for _ in range(10):  # and it stays that way
        states = unit_files()
        assert [u for u, s in states.items() if s["state"] == "launched"] == list(active)
        assert single(wait_active(1)) == active


# --- TestScheduleConditionMachineID --------------------------------------------------------

def test_machine_id_pins_each_unit_to_its_machine(tmp_path: pathlib.Path) -> None:
    ids = machine_ids()
    for n, mid in ids.items():
        fleetctl("start", write_unit(tmp_path, f"pinned-{n}.service", xfleet=f"MachineID={mid}"))
    where = single(wait_active(3))
    for n, mid in ids.items():
        assert where[f"pinned-{n}.service"] == mid
        assert systemd_holders(f"pinned-{n}.service") == [n]


# --- TestScheduleGlobalUnits, TestScheduleGlobalConflicts ----------------------------------

def test_global_unit_runs_on_every_machine_beside_others() -> None:
    fleetctl("start", "--no-block", fixture("hello.service"), fixture("goodbye.service"))
    wait_active(2)
    fleetctl("start", "--no-block", fixture("global.service"))
    active = wait_active(5)
    assert sorted(active["global.service"]) == sorted(machine_ids().values())
    assert systemd_holders("global.service") == NAMES


def test_global_unit_conflicting_with_a_global_unit_runs_nowhere() -> None:
    """issue 9 item 3: Global=true with Conflicts= is accepted."""
    fleetctl("start", fixture("conflict-global.0.service"))
    active = wait_active(3)
    assert sorted(active["conflict-global.0.service"]) == sorted(machine_ids().values())
    fleetctl("start", "--no-block", fixture("conflict-global.1.service"))
    assert len(wait_unit_files(2)) == 2
    for _ in range(10):
        active = wait_active(3)
        assert list(active) == ["conflict-global.0.service"]
    assert systemd_holders("conflict-global.1.service") == []


# --- TestTemplatesWithSpecifiersInMetadata --------------------------------------------------

def test_specifiers_in_template_metadata_place_each_instance() -> None:
    """issue 9 item 2: MachineMetadata=hostname=%i in a template."""
    fleetctl("submit", fixture("metadata@.service"))
    for n in reversed(NAMES):
        fleetctl("start", fixture(f"metadata@{n}.service"))
    where = single(wait_active(3))
    ids = machine_ids()
    for n in NAMES:
        assert where[f"metadata@{n}.service"] == ids[n]
        assert systemd_holders(f"metadata@{n}.service") == [n]
    r = fleetctl("start", "--block-attempts=20", fixture("metadata@invalid.service"),
                 check=False)
    assert r.returncode != 0, r.stdout + r.stderr


# --- issue 9 item 9: MachineOf cycles --------------------------------------------------------

def test_machineof_cycle_is_refused_and_the_cluster_unchanged(tmp_path: pathlib.Path) -> None:
    a = write_unit(tmp_path, "cycle-a.service", xfleet="MachineOf=cycle-b.service")
    fleetctl("submit", a)
    b = write_unit(tmp_path, "cycle-b.service", xfleet="MachineOf=cycle-a.service")
    for command in ("submit", "start"):
        r = fleetctl(command, b, check=False)
        assert r.returncode != 0, r.stdout
        assert "cycle" in r.stderr.lower() and "cycle-a.service" in r.stderr, r.stderr
        assert list(unit_files()) == ["cycle-a.service"]
