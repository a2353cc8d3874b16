"""Duplicate machine ids on the nspawn lab (fleet's TestDetectMachineId), as an operator sees it.

m3's fleetd is restarted with m1's machine id (a cloned image's /etc/machine-id, copied into the
file fleetd reads): it must refuse to take over m1's registration, say why in its journal
(naming the id and m1's address) and exit non-zero, while m1 stays in `fleetctl list-machines`
with its unit running. With its own id again, m3 rejoins.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.lab.conftest import (
    fleetctl,
    is_active,
    lab,
    list_units,
    machines,
    reset_cluster,
    wait_until,
    write_unit,
)

pytestmark = pytest.mark.usefixtures("lab_up")


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    lab("exec", "m3", "--", "systemctl", "unset-environment", "FLEET_MACHINE_ID_FILE",
        check=False)
    reset_cluster()


def listed() -> dict[str, str]:
    """machine id -> IP as `fleetctl list-machines -l` shows them."""
    r = fleetctl("list-machines", "--no-legend", "-l", "--fields", "machine,ip", check=False)
    return dict(line.split()[:2] for line in r.stdout.splitlines() if line.strip())


def journal(name: str) -> str:
    return lab("exec", name, "--", "journalctl", "-u", "fleetd", "-o", "cat", "--no-pager",
               check=False).stdout


def test_fleetd_with_another_live_machines_id_is_refused_and_exits_non_zero(
        units_dir: pathlib.Path) -> None:
    by_name = {m["name"]: m for m in machines()}
    m1, m3 = by_name["m1"], by_name["m3"]
    fleetctl("start", write_unit(units_dir, "owned.service",
                                 xfleet=f"MachineID={m1['machine_id']}"))
    wait_until(lambda: is_active("m1", "owned.service"), 30, what="owned.service on m1")
    # m3 gets m1's machine id, as a cloned image would
    lab("exec", "m3", "--", "sh", "-c",
        f"echo {m1['machine_id']} > /run/cloned-machine-id && "
        "systemctl set-environment FLEET_MACHINE_ID_FILE=/run/cloned-machine-id && "
        "systemctl restart --no-block fleetd")
    refusal = f"machine id {m1['machine_id']} is already registered by another live machine"
    wait_until(lambda: refusal in journal("m3"), 60, what="m3's fleetd to refuse the id")
    log = journal("m3")
    assert f"ip {m1['ip']}" in log and "hostname m1" in log, log[-2000:]
    wait_until(lambda: "status=1/FAILURE" in journal("m3"), 30,
               what="m3's fleetd to exit with status 1")
    # m3's old registration lapses with the lease of the fleetd that stopped
    seen = wait_until(lambda: (lambda s: s if m3["machine_id"] not in s else None)(listed()),
                      60, what="m3's old registration to lapse")
    assert seen.get(m1["machine_id"]) == m1["ip"], seen
    rows = [(r["unit"], r["machine"], r["active"]) for r in list_units(fail_on_double=False)]
    assert rows == [("owned.service", m1["machine_id"], "active")], rows
    assert is_active("m1", "owned.service")
    # its own id again: m3 rejoins, m1 untouched
    lab("exec", "m3", "--", "sh", "-c", "systemctl unset-environment FLEET_MACHINE_ID_FILE && "
        "systemctl reset-failed fleetd; systemctl restart fleetd")
    wait_until(lambda: listed().get(m3["machine_id"]) == m3["ip"], 60, what="m3 back")
    assert listed().get(m1["machine_id"]) == m1["ip"]
    assert is_active("m1", "owned.service")
