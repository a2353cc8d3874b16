"""The fault soak (`fleet-lab soak`) on the nspawn lab, with a fixed seed: random power cuts,
partitions, fleetd kill -9 / restart / stop / freeze while units are started, stopped and
destroyed; it fails on any unit running on two machines at once (a lock shared by every
machine, and samplers inside every machine), any lost desired-state change, or a restart of a
unit that should have been adopted. `python -m bench --soak` runs a longer one."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.lab.conftest import BIN, lab, machines, wait_until

pytestmark = pytest.mark.usefixtures("lab_up")

SEED = 20261201
STEPS = 20


def test_the_double_run_detector_sees_two_copies() -> None:
    """The soak's evidence can fail: the same soak unit started by hand on two machines
    (outside fleet) is caught by the shared lock."""
    shared = "/run/fleet-lab-shared"
    m1, m2 = (m["name"] for m in machines()[:2])
    script = ("d=/run/fleet-lab-shared; mkdir -p $d/locks; exec 9>>$d/locks/probe.lock; "
              "flock -n 9 || { echo twice >> $d/probe-violations; exit 97; }; "
              "exec sleep infinity")
    for m in (m1, m2):
        lab("exec", m, "--", "systemd-run", "--quiet", "--collect", "--unit=soak-probe",
            "/bin/sh", "-c", script)
    try:
        out = wait_until(lambda: lab("exec", m1, "--", "cat", f"{shared}/probe-violations",
                                     check=False).stdout, 10, what="the lock refusing a copy")
        assert out.split() == ["twice"]
    finally:
        for m in (m1, m2):
            lab("exec", m, "--", "systemctl", "stop", "soak-probe", check=False)
            lab("exec", m, "--", "rm", "-f", f"{shared}/probe-violations", check=False)


def test_fault_soak_never_runs_a_unit_twice_and_loses_nothing() -> None:
    exe = BIN / "fleet-lab"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fleetd.lab"]
    r = subprocess.run([*cmd, "soak", "--seed", str(SEED), "--steps", str(STEPS), "--json"],
                       capture_output=True, text=True, timeout=900)
    print(r.stderr)
    report = json.loads(r.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in report.items() if k != "trace"}))
    assert report["faults_injected"] >= STEPS // 3, report["faults"]
    assert report["double_runs"] == []
    assert report["lost_changes"] == []
    assert report["adoption_failures"] == []
    assert r.returncode == 0
