"""Blocking fleetctl commands wait on the Watch stream of a real cluster: a Watch limited to
some units carries nothing about the others, and start/stop/unload return once the agents
report the state (checked against systemd itself)."""

from __future__ import annotations

import pathlib
import urllib.request
from collections.abc import Iterator
from typing import Any

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


def _etcd_metric(cluster: LocalCluster, name: str) -> float:
    url = f"http://127.0.0.1:{cluster.etcd.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        lines = r.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if line.split("{", 1)[0].split(" ", 1)[0] == name)


def test_waiting_clients_cost_etcd_no_watch_and_no_read_of_the_cluster(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    # 2,000 units in the cluster (submitted only): a read of all of it is ~400 KB. Twelve
    # blocking fleetctls' streams are served from fleetd's one view: no etcd watch of their
    # own, a few hundred bytes from etcd each (the revision that proves the snapshot
    # current), however large the cluster.
    c = Client(cluster.machines[0].endpoint, timeout_s=60)
    streams: list[Any] = []
    try:
        text = SLEEPER + "# " + "x" * 100 + "\n"
        refused = [g for g in c.create_units((f"bulk{i:04d}.service", text, "", False)
                                             for i in range(2000)) if isinstance(g, Exception)]
        assert not refused, refused[:3]
        watchers = _etcd_metric(cluster, "etcd_debugging_mvcc_watcher_total")
        sent = _etcd_metric(cluster, "etcd_network_client_grpc_sent_bytes_total")
        for i in range(12):
            s = c.watch(units=True, states=True, names=[f"w{i}.service", "bulk0007.service"])
            streams.append(s)
            first = next(s)
            assert first.kind == K.SNAPSHOT
            assert [u.name for u in first.snapshot.units] == ["bulk0007.service"]
        assert _etcd_metric(cluster, "etcd_debugging_mvcc_watcher_total") == watchers
        per_stream = (_etcd_metric(cluster, "etcd_network_client_grpc_sent_bytes_total")
                      - sent) / 12
        assert per_stream < 4_000, per_stream  # (the lease keep-alives meanwhile count too)
        # ... and each still gets its own units' events.
        r = cluster.fleetctl("start", "--no-block", write(tmp_path, "w5.service"))
        assert r.returncode == 0, r.stderr
        ev = next(streams[5])
        assert ev.kind == K.UNIT_PUT and ev.unit.name == "w5.service"
    finally:
        for s in streams:
            s.cancel()
        c.close()


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
