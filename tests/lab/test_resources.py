"""Resource-aware placement in the nspawn lab: each machine's fleetd publishes the capacity set
in its /etc/fleet/fleet.conf; units reserving more memory than a machine has free are refused
there, `fleetctl why` names the resource and the numbers, and a machine whose fleetd restarts
with another fleet.conf is picked up by the engine.

(pytest takes the lab lock in `running_lab`.)
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator

import pytest

from tests.lab.conftest import (
    fleetctl,
    is_active,
    lab,
    machine_ids,
    running_lab,
    wait_machines,
    wait_until,
)

NAMES = ("m1", "m2")
M = 1 << 20


def configure(name: str, *lines: str) -> None:
    """Replace the resource options of ``name``'s fleet.conf and restart its fleetd."""
    script = "sed -i '/^capacity_/d;/^reserved_/d' /etc/fleet/fleet.conf"
    for line in lines:
        script += f" && echo '{line}' >> /etc/fleet/fleet.conf"
    lab("exec", name, "--", "sh", "-c", script)
    lab("exec", name, "--", "systemctl", "restart", "fleetd")


def memory_of() -> dict[str, int | None]:
    r = fleetctl("list-machines", "-l", "--fields", "machine,memory", "-o", "json", check=False)
    if r.returncode != 0:
        return {}
    return {m["machine"]: m["memory"] for m in json.loads(r.stdout)}


@pytest.fixture(scope="module", autouse=True)
def _lab() -> Iterator[None]:
    with running_lab(2):
        wait_machines(2)
        ids = machine_ids()
        configure("m1", "capacity_memory=1280M", "reserved_memory=256M")
        configure("m2", "capacity_memory=512M")
        wait_until(lambda: memory_of() == {ids["m1"]: 1024 * M, ids["m2"]: 512 * M}, 60,
                   what="both machines publish their configured memory")
        yield


def big_unit(tmp: pathlib.Path, name: str) -> str:
    path = tmp / name
    path.write_text("[Unit]\nDescription=reserves 768M\n"
                    "[Service]\nExecStart=/bin/sleep infinity\nMemoryMax=768M\n")
    return str(path)


def test_memory_limits_refuse_placement_why_explains_and_capacity_changes_are_picked_up(
        tmp_path: pathlib.Path) -> None:
    ids = machine_ids()
    fleetctl("start", big_unit(tmp_path, "big1.service"))
    wait_until(lambda: is_active("m1", "big1.service"), 60, what="big1 active on m1")
    assert not is_active("m2", "big1.service")
    table = fleetctl("list-machines", "-l", "--no-legend", "--fields", "machine,memory,reserved")
    rows = {line.split()[0]: line.split()[1:] for line in table.stdout.splitlines()}
    assert rows[ids["m1"]] == ["1G", "768M"] and rows[ids["m2"]] == ["512M", "-"], table.stdout

    fleetctl("start", "--no-block", big_unit(tmp_path, "big2.service"))

    def why() -> str:
        out = fleetctl("why", "big2.service", check=False).stdout
        return out if "has 512M free of 512M" in out else ""

    out = wait_until(why, 60, what="why big2 names the memory shortfall")
    assert "needs 768M memory" in out and "has 256M free of 1G" in out, out
    assert not is_active("m1", "big2.service") and not is_active("m2", "big2.service")

    configure("m2", "capacity_memory=2G")
    wait_until(lambda: is_active("m2", "big2.service"), 90, what="big2 placed on the grown m2")
    assert memory_of()[ids["m2"]] == 2048 * M
    assert is_active("m1", "big1.service")
    fleetctl("destroy", "big1.service", "big2.service")


def reserving_unit(tmp: pathlib.Path, name: str, memory: str, xfleet: str = "") -> str:
    path = tmp / name
    path.write_text(f"[Unit]\nDescription=reserves {memory}\n"
                    f"[Service]\nExecStart=/bin/sleep infinity\nMemoryMax={memory}\n"
                    + (f"[X-Fleet]\n{xfleet}\n" if xfleet else ""))
    return str(path)


def test_a_machine_of_group_is_placed_only_where_all_of_it_fits(tmp_path: pathlib.Path) -> None:
    ids = machine_ids()
    configure("m2", "capacity_memory=512M")
    wait_until(lambda: memory_of().get(ids["m2"]) == 512 * M, 60, what="m2 publishes 512M")
    fleetctl("start", reserving_unit(tmp_path, "filler.service", "512M",
                                     f"MachineID={ids['m1']}"))
    # The sidekick first (unschedulable until its unit is placed), so the engine judges the
    # unit with it: alone (256M) it would fit on either machine, with it (768M) on none.
    fleetctl("start", "--no-block", reserving_unit(tmp_path, "side.service", "512M",
                                                   "MachineOf=app.service"))
    fleetctl("start", "--no-block", reserving_unit(tmp_path, "app.service", "256M"))

    def why() -> str:
        out = fleetctl("why", "app.service", check=False).stdout
        return out if "with its MachineOf followers" in out else ""

    out = wait_until(why, 60, what="why names the group's memory")
    assert "needs 768M memory with its MachineOf followers (side.service)" in out, out
    assert "has 512M free of 512M" in out and "has 512M free of 1G" in out, out
    for n in NAMES:
        assert not is_active(n, "app.service") and not is_active(n, "side.service")
    fleetctl("destroy", "filler.service")  # room for the whole group on m1
    wait_until(lambda: is_active("m1", "app.service") and is_active("m1", "side.service"),
               90, what="the group placed whole on m1")
    assert not is_active("m2", "app.service")
    fleetctl("destroy", "app.service", "side.service")
