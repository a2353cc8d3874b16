"""End-to-end behaviour of a 3-machine cluster through the real fleetctl CLI.

Real etcd, three real systemd --user managers, three fleetd processes. Each test cleans up the
units it started so the module can share one cluster.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import UNITS_DIR, machines_running, unit_rows, wait_until

pytestmark = pytest.mark.usefixtures("clean_units")


def unit(name: str) -> str:
    return str(UNITS_DIR / name)


def write_unit(tmp_path: pathlib.Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_start_stop_unload_destroy_round_trip(cluster: LocalCluster) -> None:
    r = cluster.fleetctl("start", unit("hello.service"))
    assert r.returncode == 0, r.stderr
    m = re.fullmatch(r"Unit hello\.service launched on ([0-9a-f]{8})\.\.\./(\S+)\n", r.stdout)
    assert m, r.stdout
    machine = cluster.machine(m.group(1))
    assert m.group(2) == machine.ip
    assert machine.is_active("hello.service")
    assert machines_running(cluster, "hello.service") == [machine.machine_id]
    assert unit_rows(cluster) == [{"unit": "hello.service", "machine": machine.machine_id,
                                   "ip": machine.ip, "active": "active", "sub": "running"}]
    files = cluster.fleetctl("list-unit-files", "--no-legend").stdout.split()
    assert files[0] == "hello.service" and files[2:4] == ["launched", "launched"]

    r = cluster.fleetctl("stop", "hello")  # no suffix means .service
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("Unit hello.service loaded on " + machine.machine_id[:8])
    assert not machine.is_active("hello.service")
    assert (machine.manager.unit_dir / "hello.service").exists()
    files = cluster.fleetctl("list-unit-files", "--no-legend").stdout.split()
    assert files[2:4] == ["loaded", "loaded"]

    r = cluster.fleetctl("unload", "hello.service")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "Unit hello.service inactive\n"
    assert not (machine.manager.unit_dir / "hello.service").exists()
    files = cluster.fleetctl("list-unit-files", "--no-legend").stdout.split()
    assert files[2:4] == ["inactive", "inactive"] and files[4] == "-"

    r = cluster.fleetctl("destroy", "hello.service")
    assert r.returncode == 0 and r.stdout == "Destroyed hello.service\n"
    assert cluster.fleetctl("list-unit-files", "--no-legend").stdout == ""


def test_destroy_stops_a_running_unit_everywhere(cluster: LocalCluster) -> None:
    assert cluster.fleetctl("start", unit("hello.service")).returncode == 0
    assert len(machines_running(cluster, "hello.service")) == 1
    assert cluster.fleetctl("destroy", "hello.service").returncode == 0
    wait_until(lambda: not machines_running(cluster, "hello.service"), 10,
               what="hello.service stopped after destroy")
    wait_until(lambda: not any((m.manager.unit_dir / "hello.service").exists()
                               for m in cluster.machines), 10, what="unit file removed")


def test_submit_load_start_move_through_fleet_states(cluster: LocalCluster) -> None:
    assert cluster.fleetctl("submit", unit("hello.service")).returncode == 0
    row = cluster.fleetctl("list-unit-files", "--no-legend").stdout.split()
    assert row[0] == "hello.service" and row[2:5] == ["inactive", "inactive", "-"]
    r = cluster.fleetctl("load", "hello.service")
    assert r.returncode == 0 and " loaded on " in r.stdout, r.stdout + r.stderr
    assert machines_running(cluster, "hello.service") == []
    r = cluster.fleetctl("start", "hello.service")
    assert r.returncode == 0 and " launched on " in r.stdout
    assert len(machines_running(cluster, "hello.service")) == 1


def test_no_block_returns_before_the_unit_runs_and_it_then_runs(cluster: LocalCluster) -> None:
    r = cluster.fleetctl("start", "--no-block", unit("hello.service"))
    assert r.returncode == 0 and r.stdout == ""
    wait_until(lambda: machines_running(cluster, "hello.service"), 10, what="unit active")


def test_list_units_follows_systemd_as_it_changes(cluster: LocalCluster) -> None:
    cluster.fleetctl("start", unit("hello.service"), check=True)
    [mid] = machines_running(cluster, "hello.service")
    machine = cluster.machine(mid)
    # Kill the service behind fleet's back: systemd's signal must reach list-units as it
    # happens, not at some later resync. The
    # bound is generous on purpose (each look is a whole fleetctl process on a busy host);
    # how fast it is lives in the benchmarks (`python -m bench`).
    machine.systemctl("kill", "--signal=KILL", "hello.service")
    wait_until(lambda: unit_rows(cluster)[0]["active"] in ("failed", "inactive"), 5.0,
               what="list-units to show hello.service no longer active")


def test_conflicting_units_never_share_a_machine(cluster: LocalCluster) -> None:
    r = cluster.fleetctl("start", unit("web1.service"), unit("web2.service"))
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.splitlines()) == 2
    on1, on2 = machines_running(cluster, "web1.service"), machines_running(cluster,
                                                                           "web2.service")
    assert len(on1) == 1 and len(on2) == 1 and on1 != on2


def test_template_instances_spread_by_their_conflicts(cluster: LocalCluster) -> None:
    assert cluster.fleetctl("submit", unit("hello@.service")).returncode == 0
    r = cluster.fleetctl("start", "hello@1.service", "hello@2.service", "hello@3.service")
    assert r.returncode == 0, r.stderr
    hosts = [machines_running(cluster, f"hello@{i}.service") for i in (1, 2, 3)]
    assert all(len(h) == 1 for h in hosts)
    assert len({h[0] for h in hosts}) == 3
    # A fourth instance has nowhere to go; fleetctl why says which check refused which machine.
    r = cluster.fleetctl("start", "--no-block", "hello@4.service")
    assert r.returncode == 0, r.stderr
    why = wait_until(lambda: "Not scheduled" in (out := cluster.fleetctl(
        "why", "hello@4.service").stdout) and out, 10, what="unschedulable reason")
    assert "Conflicts" in why and why.count("rejected by Conflicts") == 3


def test_sidekick_lands_with_its_target(cluster: LocalCluster) -> None:
    r = cluster.fleetctl("start", unit("hello.service"), unit("hello-discovery.service"))
    assert r.returncode == 0, r.stderr
    target = machines_running(cluster, "hello.service")
    assert len(target) == 1
    assert machines_running(cluster, "hello-discovery.service") == target


def test_metadata_restricts_placement(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    east = {m.machine_id for m in cluster.machines if m.metadata.get("region") == "us-east"}
    for i in range(3):
        path = write_unit(tmp_path, f"east{i}.service",
                          (UNITS_DIR / "east-only.service").read_text())
        assert cluster.fleetctl("start", path).returncode == 0
        assert set(machines_running(cluster, f"east{i}.service")) <= east
    # AND across keys: region=us-west has no ssd machine.
    path = write_unit(tmp_path, "westssd.service", "[Service]\nExecStart=/bin/sleep 1000\n"
                      "[X-Fleet]\nMachineMetadata=region=us-west\nMachineMetadata=disk=ssd\n")
    r = cluster.fleetctl("start", "--block-attempts=4", path)
    assert r.returncode != 0 and "westssd.service" in r.stderr
    assert machines_running(cluster, "westssd.service") == []
    why = cluster.fleetctl("why", "westssd.service").stdout
    assert "MachineMetadata" in why
    # OR within a key: us-west or ssd-region machines all qualify.
    path = write_unit(tmp_path, "anyregion.service", "[Service]\nExecStart=/bin/sleep 1000\n"
                      "[X-Fleet]\nMachineMetadata=region=us-west\n"
                      "MachineMetadata=region=us-east\n")
    assert cluster.fleetctl("start", path).returncode == 0


def test_why_ranks_every_feasible_machine_best_first(cluster: LocalCluster,
                                                      tmp_path: pathlib.Path) -> None:
    path = write_unit(tmp_path, "ranked.service", "[Service]\nExecStart=/bin/sleep 1000\n")
    assert cluster.fleetctl("start", path).returncode == 0
    out = cluster.fleetctl("why", "ranked.service").stdout
    feasible = out.split("Feasible machines: ", 1)[1].split("\n", 1)[0].split(", ")
    assert sorted(feasible) == sorted(m.machine_id for m in cluster.machines)
    ranking = out.split("Ranking of the feasible machines (best first):\n", 1)[1]
    rows = [re.fullmatch(r"  (\S+): score ([0-9.]+): (.+)", line) for line in
            ranking.splitlines()]
    assert all(rows) and len(rows) == len(feasible), out
    assert sorted(r[1] for r in rows if r) == sorted(feasible)
    scores = [float(r[2]) for r in rows if r]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert all("units" in r[3] for r in rows if r)  # what LeastLoaded saw
    # a unit nothing can take has no ranking
    path = write_unit(tmp_path, "nowhere.service", "[Service]\nExecStart=/bin/sleep 1000\n"
                      "[X-Fleet]\nMachineMetadata=region=nowhere\n")
    assert cluster.fleetctl("submit", path).returncode == 0
    out = cluster.fleetctl("why", "nowhere.service").stdout
    assert "Feasible machines: none" in out and "Ranking" not in out and "score" not in out


def test_global_unit_runs_on_every_matching_machine(cluster: LocalCluster,
                                                    tmp_path: pathlib.Path) -> None:
    r = cluster.fleetctl("start", unit("monitor.service"))
    assert r.returncode == 0 and "Triggered global unit monitor.service start" in r.stdout
    wait_until(lambda: len(machines_running(cluster, "monitor.service")) == 3, 10,
               what="monitor.service on all three machines")
    path = write_unit(tmp_path, "eastmon.service", "[Service]\nExecStart=/bin/sleep 1000\n"
                      "[X-Fleet]\nGlobal=true\nMachineMetadata=region=us-east\n")
    assert cluster.fleetctl("start", path).returncode == 0
    east = {m.machine_id for m in cluster.machines if m.metadata.get("region") == "us-east"}
    wait_until(lambda: set(machines_running(cluster, "eastmon.service")) == east, 10,
               what="eastmon.service on the us-east machines only")
    files = cluster.fleetctl("list-unit-files", "--no-legend", "--fields",
                             "unit,target,global").stdout
    assert "monitor.service  global  true" in " ".join(files.split("\n")).replace("   ", "  ")


def test_list_machines_shows_every_machine_with_metadata(cluster: LocalCluster) -> None:
    r = cluster.fleetctl("list-machines", "-l")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["MACHINE", "IP", "METADATA"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    for m in cluster.machines:
        meta = ",".join(f"{k}={v}" for k, v in sorted(m.metadata.items()))
        assert rows[m.machine_id] == [m.ip, meta]
    short = cluster.fleetctl("list-machines", "--no-legend", "--fields", "machine").stdout
    assert sorted(short.split()) == sorted(m.machine_id[:8] + "..." for m in cluster.machines)


def test_cat_prints_the_submitted_file(cluster: LocalCluster) -> None:
    cluster.fleetctl("submit", unit("hello.service"), check=True)
    r = cluster.fleetctl("cat", "hello.service")
    assert r.returncode == 0 and r.stdout == (UNITS_DIR / "hello.service").read_text()


@pytest.mark.parametrize(("text", "message"), [
    ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineFoo=1\n", "MachineFoo"),
    ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineOf=a.service\n", "Global"),
    ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOf=bad.service\n", "itself"),
    ("[Service]\nExecStart=/bin/true\n[X-Fleet]\nReplaces=a.service\nConflicts=b*\n",
     "Replaces"),
    ("[Service\nExecStart=/bin/true\n", "line 1"),
])
def test_invalid_unit_files_are_refused_and_change_nothing(
        cluster: LocalCluster, tmp_path: pathlib.Path, text: str, message: str) -> None:
    path = write_unit(tmp_path, "bad.service", text)
    r = cluster.fleetctl("start", path)
    assert r.returncode != 0
    assert "bad.service" in r.stderr and message in r.stderr, r.stderr
    assert cluster.fleetctl("list-unit-files", "--no-legend").stdout == ""


def test_non_utf8_unit_file_is_refused(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    p = tmp_path / "latin.service"
    p.write_bytes(b"[Service]\nExecStart=/bin/echo caf\xe9\n")
    r = cluster.fleetctl("submit", str(p))
    assert r.returncode != 0 and "UTF-8" in r.stderr
    assert cluster.fleetctl("list-unit-files", "--no-legend").stdout == ""


def test_a_different_file_under_an_existing_name_is_kept_with_a_warning(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    cluster.fleetctl("submit", unit("hello.service"), check=True)
    path = write_unit(tmp_path, "hello.service", "[Service]\nExecStart=/bin/sleep 99\n")
    r = cluster.fleetctl("submit", path)  # fleet: a warning, the cluster's file stays
    assert r.returncode == 0 and "hello.service" in r.stderr and "--replace" in r.stderr
    assert cluster.fleetctl("cat", "hello.service").stdout == (UNITS_DIR / "hello.service"
                                                              ).read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["start", "nosuch.service"], "nosuch.service"),
    (["stop", "nosuch.service"], "nosuch.service"),
    (["destroy", "nosuch.service"], "nosuch.service"),
    (["cat", "nosuch.service"], "nosuch.service"),
    (["start", "bad/name.service"], "bad/name.service"),
    (["list-units", "--fields", "unit,bogus"], "bogus"),
])
def test_bad_commands_fail_with_a_clear_error(cluster: LocalCluster, args: list[str],
                                              message: str) -> None:
    r = cluster.fleetctl(*args)
    assert r.returncode != 0
    assert message in r.stderr, r.stderr


def test_unreachable_endpoint_is_a_clear_error(cluster: LocalCluster) -> None:
    r = cluster.fleetctl("list-machines", endpoint="unix:///tmp/nonexistent-fleet.sock")
    assert r.returncode != 0 and "cannot reach fleetd" in r.stderr
