"""Machine maintenance on a real local cluster (real etcd, systemd --user managers, fleetd,
fleetctl): drain/undrain persist and show, a draining machine gets nothing new (and `why`
says so), `move` is make-before-break and refused with the check's reason, and a blocking
drain moves every movable unit and reports the pinned one. Ground truth is systemd itself."""

from __future__ import annotations

import json
import pathlib
import threading
from collections.abc import Iterator

import pytest

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import machines_running, unit_rows, wait_until

SLEEPER = "[Unit]\nDescription=sleeps\n[Service]\nExecStart=/bin/sleep 100000\n"


@pytest.fixture(autouse=True)
def _clean(cluster: LocalCluster) -> Iterator[None]:
    yield
    for m in cluster.machines:
        cluster.fleetctl("undrain", m.machine_id)
    r = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit")
    if r.stdout.split():
        cluster.fleetctl("destroy", *r.stdout.split())
    wait_until(lambda: not unit_rows(cluster), what="all units gone after test")


def write(tmp_path: pathlib.Path, name: str, extra: str = "") -> str:
    path = tmp_path / name
    path.write_text(SLEEPER + (f"[X-Fleet]\n{extra}\n" if extra else ""))
    return str(path)


def states(cluster: LocalCluster) -> dict[str, str]:
    rows = json.loads(cluster.fleetctl("list-machines", "-o", "json", "--fields",
                                       "machine,state", check=True).stdout)
    return {r["machine"]: r["state"] for r in rows}


def test_drain_shows_persists_and_keeps_new_units_off(cluster: LocalCluster,
                                                      tmp_path: pathlib.Path) -> None:
    m1 = cluster.machines[0]
    r = cluster.fleetctl("drain", "--no-block", m1.machine_id[:10])
    assert r.returncode == 0, r.stderr
    assert states(cluster)[m1.machine_id] == "draining"
    table = cluster.fleetctl("list-machines", "-l", check=True).stdout.splitlines()
    assert table[0].split() == ["MACHINE", "IP", "METADATA", "STATE"]
    assert any(line.startswith(m1.machine_id) and line.split()[-1] == "draining"
               for line in table)
    # Survives the machine's fleetd restarting (it is not on the lease).
    m1.restart_fleetd()
    cluster.wait_for_machines(3)
    assert states(cluster)[m1.machine_id] == "draining"
    names = [f"d{i}.service" for i in range(4)]
    r = cluster.fleetctl("start", *[write(tmp_path, n) for n in names])
    assert r.returncode == 0, r.stderr
    for n in names:
        assert m1.machine_id not in machines_running(cluster, n)
    pinned = write(tmp_path, "pin.service", f"MachineID={m1.machine_id}")
    assert cluster.fleetctl("start", "--no-block", pinned).returncode == 0
    why = wait_until(lambda: (w := cluster.fleetctl("why", "pin.service").stdout)
                     and "Draining" in w and w, what="why names the Draining check")
    assert "is draining" in why
    r = cluster.fleetctl("undrain", m1.ip)
    assert r.returncode == 0, r.stderr
    assert states(cluster)[m1.machine_id] == "active"
    wait_until(lambda: machines_running(cluster, "pin.service") == [m1.machine_id],
               what="the pinned unit starts once its machine is undrained")
    # Units do not move back.
    for n in names:
        assert m1.machine_id not in machines_running(cluster, n)


def test_bad_machine_references_are_refused(cluster: LocalCluster) -> None:
    r = cluster.fleetctl("drain", "--no-block", "no-such-machine")
    assert r.returncode != 0 and "no live machine matches" in r.stderr
    r = cluster.fleetctl("drain", "--no-block", "")
    assert r.returncode != 0
    assert set(states(cluster).values()) == {"active"}


class Sampler:
    """Samples where systemd runs `unit` until stopped; every sample is kept. One sample asks
    the machines one after the other, the unit's old machine first: asked the other way round
    a make-before-break hand-over could look like a gap (new one asked just before it
    started, old one just after it stopped)."""

    def __init__(self, cluster: LocalCluster, unit: str, first: str) -> None:
        self.cluster, self.unit = cluster, unit
        self.order = sorted(cluster.machines, key=lambda m: m.machine_id != first)
        self.samples: list[frozenset[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(frozenset(m.machine_id for m in self.order
                                          if m.is_active(self.unit)))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def test_move_to_a_named_machine_is_make_before_break(cluster: LocalCluster,
                                                      tmp_path: pathlib.Path) -> None:
    assert cluster.fleetctl("start", write(tmp_path, "mv.service")).returncode == 0
    [source] = machines_running(cluster, "mv.service")
    target = next(m for m in cluster.machines if m.machine_id != source)
    with Sampler(cluster, "mv.service", source) as s:
        r = cluster.fleetctl("move", "mv.service", target.machine_id[:12], timeout_s=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert machines_running(cluster, "mv.service") == [target.machine_id]
    assert s.samples and all(s.samples), "the unit was down everywhere during the move"
    rows = [r for r in unit_rows(cluster) if r["unit"] == "mv.service"]
    assert [r["machine"] for r in rows] == [target.machine_id]


def test_move_is_refused_with_the_checks_reason(cluster: LocalCluster,
                                                tmp_path: pathlib.Path) -> None:
    # m2 is the only us-west machine: a us-east unit cannot go there.
    unit = write(tmp_path, "east.service", "MachineMetadata=region=us-east")
    assert cluster.fleetctl("start", unit).returncode == 0
    before = machines_running(cluster, "east.service")
    west = cluster.machines[1]
    r = cluster.fleetctl("move", "east.service", west.machine_id)
    assert r.returncode != 0
    assert "MachineMetadata" in r.stderr, r.stderr
    assert machines_running(cluster, "east.service") == before
    r = cluster.fleetctl("move", "nosuch.service")
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_blocking_drain_moves_every_movable_unit_and_reports_the_pinned(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    m3 = cluster.machines[2]
    names = [f"w{i}.service" for i in range(3)]
    files = [write(tmp_path, n) for n in names]
    assert cluster.fleetctl("start", *files).returncode == 0
    # Put all three on m3 by moving them there.
    for n in names:
        if machines_running(cluster, n) != [m3.machine_id]:
            r = cluster.fleetctl("move", n, m3.machine_id, timeout_s=90)
            assert r.returncode == 0, r.stdout + r.stderr
    pinned = write(tmp_path, "stay.service", f"MachineID={m3.machine_id}")
    assert cluster.fleetctl("start", pinned).returncode == 0
    nostop = tmp_path / "once.service"
    nostop.write_text(SLEEPER + "[X-Fleet]\nMoveBeforeStop=false\n")
    assert cluster.fleetctl("start", str(nostop)).returncode == 0
    if machines_running(cluster, "once.service") != [m3.machine_id]:
        assert cluster.fleetctl("move", "once.service", m3.machine_id,
                                timeout_s=90).returncode == 0
    r = cluster.fleetctl("drain", "--deadline", "60", m3.machine_id, timeout_s=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "stay.service stays on" in r.stdout and "pinned" in r.stdout
    for n in [*names, "once.service"]:
        where = machines_running(cluster, n)
        assert len(where) == 1 and where != [m3.machine_id], (n, where)
    assert machines_running(cluster, "stay.service") == [m3.machine_id]


def test_http_v1_and_grpc_show_a_draining_machine(cluster: LocalCluster) -> None:
    from fleetctl.client import Client
    from tests.integration.test_http_api import machines as http_machines

    m2 = cluster.machines[1]
    assert "state" not in http_machines(cluster)[m2.machine_id]  # fleet's entity, unchanged
    assert cluster.fleetctl("drain", "--no-block", m2.machine_id).returncode == 0
    assert http_machines(cluster)[m2.machine_id]["state"] == "draining"
    c = Client(cluster.machines[0].endpoint)
    try:
        got = {m.id: m.state for m in c.list_machines()}
    finally:
        c.close()
    assert got[m2.machine_id] == "draining"
    assert {s for mid, s in got.items() if mid != m2.machine_id} == {"active"}


def test_global_units_stay_on_a_draining_machine_unless_included(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    m1 = cluster.machines[0]
    g = write(tmp_path, "g.service", "Global=true")
    assert cluster.fleetctl("start", g).returncode == 0
    wait_until(lambda: len(machines_running(cluster, "g.service")) == 3,
               what="the global unit everywhere")
    r = cluster.fleetctl("drain", "--deadline", "30", m1.machine_id, timeout_s=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert m1.machine_id in machines_running(cluster, "g.service")
    r = cluster.fleetctl("drain", "--include-global", "--deadline", "30", m1.machine_id,
                         timeout_s=60)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: m1.machine_id not in machines_running(cluster, "g.service"),
               what="the global unit off the drained machine")
    assert len(machines_running(cluster, "g.service")) == 2


def test_a_machine_of_group_moves_together_and_its_follower_not_alone(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    m3 = cluster.machines[2]
    app = write(tmp_path, "app.service")
    side = write(tmp_path, "side.service", "MachineOf=app.service")
    assert cluster.fleetctl("start", app, side).returncode == 0
    wait_until(lambda: machines_running(cluster, "side.service")
               == machines_running(cluster, "app.service") != [],
               what="the sidekick beside its unit")
    r = cluster.fleetctl("move", "side.service", m3.machine_id)
    assert r.returncode != 0 and "follows app.service (MachineOf): move app.service" in \
        r.stderr, r.stderr
    if machines_running(cluster, "app.service") != [m3.machine_id]:
        r = cluster.fleetctl("move", "app.service", m3.machine_id, timeout_s=90)
        assert r.returncode == 0, r.stdout + r.stderr
        # `move` returns once the leader is there; the group's old copies stopped together.
        wait_until(lambda: machines_running(cluster, "side.service") == [m3.machine_id],
                   what="the sidekick moved with its unit")
    assert machines_running(cluster, "app.service") == [m3.machine_id]
    with Sampler(cluster, "app.service", m3.machine_id) as a, \
            Sampler(cluster, "side.service", m3.machine_id) as b:
        r = cluster.fleetctl("drain", "--deadline", "60", m3.machine_id, timeout_s=90)
    assert r.returncode == 0, r.stdout + r.stderr
    where = machines_running(cluster, "app.service")
    assert len(where) == 1 and where != [m3.machine_id], where
    assert machines_running(cluster, "side.service") == where
    assert a.samples and all(a.samples), "the unit was down everywhere during the drain"
    assert b.samples and all(b.samples), "the sidekick was down everywhere during the drain"
