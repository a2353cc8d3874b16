"""Host units are never overridden: the fixed set (ssh, dbus, systemd-*, fleetd...) is refused at
submit with the cluster unchanged, and a name systemd already loads from outside fleet's
directory on the target machine is refused by that machine's agent, which says so in the unit's
state and keeps running the machine's other units. Real etcd, fleetd and systemd --user."""

from __future__ import annotations

import pathlib
import tempfile

import pytest

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import UNITS_DIR, fleetd_log, machines_running, wait_until

# A unit every systemd --user manager here finds in /usr/lib/systemd/user, not in the fixed set.
HOST_USER_UNIT = "gpg-agent.service"


def unit_file(name: str, body: str = "") -> str:
    d = pathlib.Path(tempfile.mkdtemp(prefix="fhu-"))
    (d / name).write_text("[Service]\nExecStart=/bin/sleep 1000\n" + body)
    return str(d / name)


@pytest.mark.parametrize("name", ["ssh.service", "dbus.service", "systemd-journald.service",
                                  "getty@tty1.service", "fleetd.service"])
def test_submitting_a_host_unit_is_refused_and_changes_nothing(cluster: LocalCluster,
                                                               name: str) -> None:
    r = cluster.fleetctl("start", unit_file(name))
    assert r.returncode != 0
    assert name in r.stderr and "host's own units" in r.stderr, r.stderr
    files = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit")
    assert name not in files.stdout


def test_a_unit_the_host_already_has_is_refused_by_the_agent_and_others_still_run(
        cluster: LocalCluster) -> None:
    target = cluster.machines[0]
    pin = f"\n[X-Fleet]\nMachineID={target.machine_id}\n"
    cluster.fleetctl("start", "--no-block", unit_file(HOST_USER_UNIT, pin), check=True)
    cluster.fleetctl("start", str(UNITS_DIR / "hello.service"), check=True)
    try:
        def refused_row() -> str:
            r = cluster.fleetctl("list-units", "--no-legend", "-l",
                                 "--fields", "unit,machine,load,sub")
            return next((line for line in r.stdout.splitlines()
                         if line.startswith(HOST_USER_UNIT)), "")

        row = wait_until(lambda: (lambda x: x if "refused" in x else "")(refused_row()), 15,
                         what="the agent to report the refusal")
        assert target.machine_id in row and "error" in row, row
        assert not (target.manager.unit_dir / HOST_USER_UNIT).exists()
        assert not target.is_active(HOST_USER_UNIT)
        assert "refused, the host has its own" in fleetd_log(target)
        cluster.fleetctl("destroy", "hello.service", check=True)
        cluster.fleetctl("start", unit_file("other.service", pin), check=True)
        wait_until(lambda: machines_running(cluster, "other.service") == [target.machine_id],
                   what="another unit to start on the same machine")
    finally:
        cluster.fleetctl("destroy", HOST_USER_UNIT, "other.service", "hello.service")
