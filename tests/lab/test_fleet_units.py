"""fleet's functional tests of unit actions, ported to the nspawn lab (coreos/fleet
functional/unit_action_test.go, install_test.go): submit/load/start of batches of
instances and their undo, --replace for each, cat, status, journal, sorted listings,
replace serialisation, [Install] sections. Through fleetctl, with each machine's systemd as
ground truth. Unit files: tests/lab/fixtures/units (instances have only their template on
disk, as in fleet's fixtures)."""

from __future__ import annotations

import json
import pathlib
import random

import pytest

from tests.lab.conftest import (
    FIXTURES,
    fixture,
    fleetctl,
    lab,
    module_lab,
    name_of,
    show,
    single,
    unit_files,
    wait_active,
    wait_unit_files,
    wait_units,
    wait_until,
)

_lab = module_lab(2)
pytestmark = pytest.mark.usefixtures("reset_after")


def instances(n: int) -> list[str]:
    return [f"hello@{i}.service" for i in range(1, n + 1)]


def paths(names: list[str]) -> list[str]:
    return [fixture(n) for n in names]


def no_error(r: object) -> None:
    """fleet's batch tests also fail on any "Error" on stderr of a successful command."""
    assert "Error" not in r.stderr, r.stderr  # type: ignore[attr-defined]


# --- TestUnitRunnable, TestUnitRestart ---------------------------------------------------

def test_unit_runnable_and_restart() -> None:
    no_error(fleetctl("start", fixture("hello.service")))
    where = single(wait_active(1))
    assert list(where) == ["hello.service"]
    machine = name_of(where["hello.service"])
    assert show(machine, "hello.service", "ActiveState") == "active"
    fleetctl("stop", "hello.service")
    wait_active(0)
    assert show(machine, "hello.service", "ActiveState") == "inactive"
    fleetctl("start", "hello.service")
    assert list(single(wait_active(1))) == ["hello.service"]


# --- TestUnitSubmit / TestUnitLoad / TestUnitStart (unitStartCommon) ----------------------

def test_unit_submit_batch_of_instances_destroy_and_submit_again() -> None:
    names = instances(9)
    for _ in range(2):
        no_error(fleetctl("submit", *paths(names)))
        assert sorted(wait_unit_files(9)) == sorted(names)
        for n in names:
            fleetctl("destroy", n)
        wait_unit_files(0)


def test_unit_load_batch_of_instances_unload_and_load_again() -> None:
    names = instances(6)
    for _ in range(2):
        no_error(fleetctl("load", *paths(names)))
        rows = wait_units(6)
        assert sorted(r["unit"] for r in rows) == sorted(names)
        for r in rows:  # loaded into systemd, not started
            assert show(name_of(r["machine"]), r["unit"], "LoadState") == "loaded"
            assert show(name_of(r["machine"]), r["unit"], "ActiveState") == "inactive"
        for n in names:
            fleetctl("unload", n)
        wait_units(0)
        assert {u["dstate"] for u in unit_files().values()} == {"inactive"}


def test_unit_start_batch_of_instances_stop_and_start_again() -> None:
    names = instances(3)
    for _ in range(2):
        no_error(fleetctl("start", *paths(names)))
        where = single(wait_active(3))
        assert sorted(where) == sorted(names)
        for unit, mid in where.items():
            assert show(name_of(mid), unit, "ActiveState") == "active"
        for n in names:
            fleetctl("stop", n)
        wait_active(0)
        for unit, mid in where.items():
            assert show(name_of(mid), unit, "ActiveState") == "inactive"


# --- TestUnitSubmitReplace / TestUnitLoadReplace / TestUnitStartReplace -------------------

@pytest.mark.parametrize("command,count", [("submit", 9), ("load", 6), ("start", 3)])
def test_unit_replace(command: str, count: int, tmp_path: pathlib.Path) -> None:
    names = instances(count)
    no_error(fleetctl(command, *paths(names)))
    if command == "submit":
        wait_unit_files(count)
    elif command == "load":
        wait_units(count)
    else:
        wait_active(count)
    before = {n: fleetctl("cat", n).stdout for n in names}
    template = (FIXTURES / "hello@.service").read_text()
    for n in names:
        new = tmp_path / n
        new.write_text(template.replace("sleep 1", "sleep 2"))
        no_error(fleetctl(command, "--replace", str(new)))
        after = fleetctl("cat", n).stdout
        assert after != before[n], f"{command} --replace left {n} unchanged"
        assert "sleep 2" in after
    if command == "submit":
        assert sorted(wait_unit_files(count)) == sorted(names)
        return
    rows = wait_units(count) if command == "load" else None
    where = ({r["unit"]: r["machine"] for r in rows} if rows is not None
             else single(wait_active(count)))
    for unit, mid in where.items():
        machine = name_of(mid)
        # the machine's systemd has the new file; a started unit runs the new version
        wait_until(lambda m=machine, u=unit: "sleep 2" in show(m, u, "ExecStart")
                   and show(m, u, "NeedDaemonReload") == "no", 30,
                   what=f"{unit} replaced on {machine}")
        expect = "active" if command == "start" else "inactive"
        assert show(machine, unit, "ActiveState") == expect


# --- TestUnitSSHActions (status and journal; fleet-py forwards them over gRPC) -----------

def test_unit_status_and_journal_of_a_running_unit() -> None:
    fleetctl("start", "--no-block", fixture("hello.service"))
    assert list(single(wait_active(1))) == ["hello.service"]
    r = fleetctl("status", "hello.service")
    assert "Active: active" in r.stdout, r.stdout
    wait_until(lambda: "Hello, World!" in fleetctl("journal", "hello.service").stdout, 20,
               what="hello.service's output in fleetctl journal")


# --- TestUnitCat, TestUnitStatus --------------------------------------------------------

def test_unit_cat_returns_the_submitted_body() -> None:
    fleetctl("submit", fixture("hello.service"))
    wait_unit_files(1)
    body = fleetctl("cat", "hello.service").stdout
    assert body.strip() == (FIXTURES / "hello.service").read_text().strip()


def test_unit_status_of_a_loaded_unit() -> None:
    fleetctl("load", fixture("hello.service"))
    wait_units(1)
    r = fleetctl("status", "hello.service", check=False)
    assert "Loaded: loaded" in r.stdout, r.stdout + r.stderr


# --- TestListUnitFilesOrder, and list-units ordering -----------------------------------

def test_list_unit_files_is_sorted() -> None:
    names = [f"hello@{i:02d}.service" for i in range(1, 21)]
    for n in names:
        fleetctl("submit", fixture(n))
    wait_unit_files(20)
    out = fleetctl("list-unit-files", "--no-legend", "--fields", "unit").stdout.split()
    assert out == sorted(names)


def test_list_units_of_instances_is_sorted() -> None:
    names = [f"hello@{i}.service" for i in range(1, 13)]
    shuffled = random.Random(9).sample(names, len(names))
    fleetctl("start", "--no-block", *paths(shuffled))
    wait_active(12)
    out = fleetctl("list-units", "--no-legend", "--fields", "unit").stdout.split()
    assert out == sorted(names)
    out = fleetctl("list-unit-files", "--no-legend", "--fields", "unit").stdout.split()
    assert out == sorted(names)


def test_list_unit_files_json_names_the_target_machine() -> None:
    """issue 9 item 8: -o json carries the machine the table shows in TARGET."""
    fleetctl("start", fixture("hello.service"))
    mid = single(wait_active(1))["hello.service"]
    rows = json.loads(fleetctl("list-unit-files", "-o", "json").stdout)
    assert [r["unit"] for r in rows] == ["hello.service"]
    assert mid in json.dumps(rows[0]["target"]), rows
    assert unit_files()["hello.service"]["target"] == mid


# --- TestReplaceSerialization ------------------------------------------------------------

def test_replace_runs_the_new_version_after_the_old_one_stopped(tmp_path: pathlib.Path
                                                                 ) -> None:
    fleetctl("start", fixture("replace-sync.service"))
    machine = name_of(single(wait_active(1))["replace-sync.service"])
    lab("exec", machine, "--", "rm", "-f", "/tmp/fleet-replace-sync.done")
    new = tmp_path / "replace-sync.service"
    # the new version starts only if the old one's ExecStopPost (sleep 1; touch) has run.
    # fleet's fixture slept 3 s: fleet-py caps each stop command (TimeoutStopSec=2.5s for a
    # unit with two stop commands) so that fencing stops every unit within its bound.
    new.write_text((FIXTURES / "replace-sync.service").read_text().replace(
        'ExecStartPre=/bin/sh -c "echo sync"',
        "ExecStartPre=/usr/bin/test -f /tmp/fleet-replace-sync.done"))
    fleetctl("start", "--replace", str(new))
    wait_until(lambda: lab("exec", machine, "--", "test", "-f", "/tmp/fleet-replace-sync.done",
                           check=False).returncode == 0, 30, what="the old version's mark")
    wait_until(lambda: show(machine, "replace-sync.service", "ActiveState") == "active"
               and "test -f" in show(machine, "replace-sync.service", "ExecStartPre"), 30,
               what="the new version active")
    assert show(machine, "replace-sync.service", "Result") == "success"
    assert list(single(wait_active(1))) == ["replace-sync.service"]


# --- TestInstallUnit ---------------------------------------------------------------------

def test_install_section_starts_and_stops_with_its_target() -> None:
    fleetctl("load", fixture("hello.service"), fixture("discovery.service"))
    rows = wait_units(2)
    where = {r["unit"]: r["machine"] for r in rows}
    assert where["discovery.service"] == where["hello.service"]
    machine = name_of(where["discovery.service"])
    wait_until(lambda: show(machine, "discovery.service", "LoadState") == "loaded", 30,
               what="discovery.service loaded")
    assert show(machine, "discovery.service", "ActiveState") == "inactive"
    fleetctl("start", fixture("hello.service"))
    wait_until(lambda: show(machine, "discovery.service", "ActiveState") == "active", 30,
               what="discovery.service started with hello.service (WantedBy)")
    fleetctl("stop", fixture("hello.service"))
    wait_until(lambda: show(machine, "discovery.service", "ActiveState") == "inactive", 30,
               what="discovery.service stopped with hello.service (BindsTo)")
