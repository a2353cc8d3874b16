"""Blocking fleetctl commands wait on the Watch stream of a real cluster: a Watch limited to
some units carries nothing about the others, and start/stop/unload return once the agents
report the state (checked against systemd itself)."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from fleetctl.client import Client
from fleetd.api.pb import fleet_pb2 as pb
from fleetd.localcluster import LocalCluster
from tests.integration.conftest import machines_running, unit_rows, wait_until

K = pb.WatchEvent
SLEEPER = "[Unit]\nDescription=sleeps\n[Service]\nExecStart=/bin/sleep 100000\n"


@pytest.fixture(autouse=True)
def _clean(cluster: LocalCluster) -> Iterator[None]:
    yield
    r = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit")
    if r.stdout.split():
        cluster.fleetctl("destroy", *r.stdout.split())
    wait_until(lambda: not unit_rows(cluster), what="all units gone after test")


def write(tmp_path: pathlib.Path, name: str) -> str:
    path = tmp_path / name
    path.write_text(SLEEPER)
    return str(path)


def test_a_watch_limited_to_names_carries_only_those_units(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    assert cluster.fleetctl("start", write(tmp_path, "other.service")).returncode == 0
    c = Client(cluster.machines[0].endpoint)
    try:
        with c.watch(units=True, states=True, names=["mine.service"]) as events:
            first = next(events)
            assert first.kind == K.SNAPSHOT
            assert list(first.snapshot.units) == [] and list(first.snapshot.states) == []
            # other.service changes first (destroyed), then mine.service starts: in revision
            # order, so by mine's launched report any event about other would have come.
            assert cluster.fleetctl("destroy", "other.service").returncode == 0
            r = cluster.fleetctl("start", "--no-block", write(tmp_path, "mine.service"))
            assert r.returncode == 0, r.stderr
            names = []
            for ev in events:
                names.append(ev.unit.name or ev.state.name or ev.name)
                if ev.kind == K.STATE_PUT and ev.state.state == "launched":
                    break
    finally:
        c.close()
    assert names and set(names) == {"mine.service"}, names


def test_blocking_start_stop_unload_return_once_the_agent_reports(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    r = cluster.fleetctl("start", write(tmp_path, "blk.service"))
    assert r.returncode == 0, r.stderr
    [mid] = machines_running(cluster, "blk.service")  # active in systemd on return
    ip = cluster.machine(mid).ip
    assert r.stdout == f"Unit blk.service launched on {mid[:8]}.../{ip}\n"

    r = cluster.fleetctl("stop", "blk.service")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"Unit blk.service loaded on {mid[:8]}.../{ip}\n"
    assert machines_running(cluster, "blk.service") == []

    r = cluster.fleetctl("unload", "blk.service")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Unit blk.service inactive\n"
    assert [row for row in unit_rows(cluster) if row["unit"] == "blk.service"] == []


def test_blocking_load_of_several_units_reports_each(cluster: LocalCluster,
                                                     tmp_path: pathlib.Path) -> None:
    paths = [write(tmp_path, f"l{i}.service") for i in range(3)]
    r = cluster.fleetctl("load", *paths)
    assert r.returncode == 0, r.stderr
    lines = sorted(r.stdout.splitlines())
    assert [line.split(" on ")[0] for line in lines] == [
        f"Unit l{i}.service loaded" for i in range(3)]
