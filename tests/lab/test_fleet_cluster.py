"""fleet's cluster-membership functional tests, ported to the nspawn lab (coreos/fleet
functional/cluster_test.go, node_test.go, shutdown_test.go, connectivity-loss_test.go,
server_test.go): a unit moving to an unoccupied machine, a member's reboot, `systemctl stop
fleetd`, a duplicated machine id, a machine losing etcd, SIGHUP. Four machines, each with
metadata hostname=<name>; fleetctl talks to m1, so no test takes m1 away."""

from __future__ import annotations

import pathlib
from collections.abc import Iterator

import pytest

from tests.lab.conftest import (
    FIXTURES,
    active_units,
    fixture,
    fleetctl,
    holds_for,
    is_active,
    lab,
    lab_env,
    listed_machines,
    machine_ids,
    machines,
    module_lab,
    name_of,
    reset_cluster,
    show,
    single,
    unit_files,
    wait_active,
    wait_machines,
    wait_until,
)

NAMES = ["m1", "m2", "m3", "m4"]
NFT_TABLE = "fleet_port_test"


_lab = module_lab(4, {n: f"hostname={n}" for n in NAMES})


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    for n in NAMES:
        reconnect_etcd(n)
    reset_cluster()


def cut_etcd(name: str) -> None:
    """Reject the machine's traffic to etcd (fleet's test: iptables REJECT of 2379/4001),
    inside the machine's own network namespace; everything else keeps working."""
    host, port = lab_env()["ETCDCTL_ENDPOINTS"].split("//")[1].split(",")[0].split(":")
    for cmd in (f"add table inet {NFT_TABLE}",
                f"add chain inet {NFT_TABLE} out {{ type filter hook output priority 0 ; }}",
                f"add rule inet {NFT_TABLE} out ip daddr {host} tcp dport {port} "
                "reject with tcp reset"):
        lab("exec", name, "--", "nft", *cmd.split())


def reconnect_etcd(name: str) -> None:
    if any(m["name"] == name and m["state"] == "running" for m in machines()):
        lab("exec", name, "--", "nft", "delete", "table", "inet", NFT_TABLE, check=False)


def holders(unit: str) -> list[str]:
    return [n for n in NAMES if is_active(n, unit)]


def start_conflicts() -> dict[str, str]:
    fleetctl("start", *(fixture(f"conflict.{i}.service") for i in range(3)))
    assert len(unit_files()) == 3
    where = single(wait_active(3))
    assert len(set(where.values())) == 3
    return where


def not_m1(where: dict[str, str]) -> str:
    """A unit of `where` that does not run on m1 (the machine fleetctl talks to)."""
    m1 = machine_ids()["m1"]
    return next(u for u, mid in sorted(where.items()) if mid != m1)


# --- TestDynamicClusterNewMemberUnitMigration ---------------------------------------------

def test_unit_moves_to_the_unoccupied_machine_without_churn() -> None:
    before = start_conflicts()
    unit = not_m1(before)
    old = name_of(before[unit])
    lab("exec", old, "--", "systemctl", "stop", "fleetd")
    wait_machines(3)
    after = wait_until(lambda: (lambda a: a if len(a) == 3 and a.get(unit) not in
                                (None, [before[unit]]) else None)(
        active_units()), 60, what=f"{unit} moved")
    now = single(after)
    assert now[unit] not in before.values(), "landed on an occupied machine"
    for other in before:
        if other != unit:
            assert now[other] == before[other], "unnecessary churn"
    assert not is_active(old, unit)  # fleet stopped it with fleet
    assert holders(unit) == [name_of(now[unit])]


# --- TestDynamicClusterMemberReboot -------------------------------------------------------

def test_member_reboot_moves_exactly_one_unit() -> None:
    """fleet recreated the member with a new identity; here the power cut and boot keep its
    machine id (as a real reboot does), and the fourth machine gives the unit a home."""
    before = start_conflicts()
    unit = not_m1(before)
    victim = name_of(before[unit])
    lab("stop", victim)
    # a reboot longer than the lease: the unit first finds the unoccupied machine
    wait_until(lambda: active_units().get(unit) not in (None, [before[unit]]), 60,
               what=f"{unit} active elsewhere while {victim} is down")
    lab("start", victim)
    wait_machines(4)
    after = single(wait_active(3))
    assert len(set(after.values())) == 3
    migrated = [u for u in before if after[u] != before[u]]
    assert len(migrated) == 1, (before, after)
    for u, mid in after.items():
        assert holders(u) == [name_of(mid)]


# --- TestNodeShutdown (and fleetd started again, issue 9 item 5) ------------------------------

def test_stopping_fleetd_stops_its_units_and_leaves_the_cluster() -> None:
    mid = machine_ids()["m4"]
    fleetctl("start", fixture(f"pin@{mid}.service"))
    unit = f"pin@{mid}.service"
    assert single(wait_active(1)) == {unit: mid}
    assert is_active("m4", unit)
    lab("exec", "m4", "--", "systemctl", "stop", "fleetd")
    assert show("m4", "fleetd.service", "ActiveState") == "inactive"
    # it removes itself from list-machines at once, not when its lease runs out
    wait_until(lambda: mid not in listed_machines(), 8, what="m4 gone from list-machines")
    wait_active(0, timeout_s=8)
    assert show("m4", unit, "ActiveState") == "inactive"
    lab("exec", "m4", "--", "systemctl", "start", "fleetd")
    wait_machines(4)
    assert single(wait_active(1)) == {unit: mid}
    assert holders(unit) == ["m4"]


# --- TestShutdown, TestShutdownVsMonitor ------------------------------------------------------

def test_fleetd_stops_cleanly() -> None:
    lab("exec", "m4", "--", "systemctl", "stop", "fleetd")
    assert show("m4", "fleetd.service", "ActiveState") == "inactive"
    assert show("m4", "fleetd.service", "Result") == "success"


def test_fleetd_stops_cleanly_while_cut_off_from_etcd() -> None:
    mid = machine_ids()["m4"]
    cut_etcd("m4")
    # fleet waited for its server monitor to trigger a restart; here, for the lease to lapse
    wait_until(lambda: mid not in listed_machines(), 60, what="m4's lease gone")
    lab("exec", "m4", "--", "systemctl", "stop", "fleetd", timeout_s=120)
    assert show("m4", "fleetd.service", "ActiveState") == "inactive"
    assert show("m4", "fleetd.service", "Result") == "success"


# --- TestDetectMachineId (issue 9 item 6) -----------------------------------------------------

def test_duplicate_machine_id_does_not_take_over_the_owner() -> None:
    ids = machine_ids()
    ips = {m["name"]: m["ip"] for m in machines()}

    def owner_intact() -> bool:
        r = fleetctl("list-machines", "--no-legend", "-l", "--fields", "machine,ip")
        listed = dict(line.split() for line in r.stdout.splitlines())
        return listed.get(ids["m2"]) == ips["m2"]

    try:
        lab("exec", "m3", "--", "sh", "-c", f"echo {ids['m2']} > /etc/machine-id")
        lab("exec", "m3", "--", "systemctl", "restart", "fleetd", check=False)
        # the impostor's fleetd is refused and exits non-zero (fleet: its API fails)
        wait_until(lambda: show("m3", "fleetd.service", "ExecMainStatus") not in ("", "0"),
                   30, what="m3's fleetd refused with a non-zero exit")
        log = lab("exec", "m3", "--", "journalctl", "-u", "fleetd", "-o", "cat",
                  "--no-pager").stdout
        assert ids["m2"] in log, log[-2000:]
        # past the agent TTL: m2 keeps its registration
        holds_for(owner_intact, 12, what="m2's registration")
    finally:
        lab("exec", "m3", "--", "sh", "-c", f"echo {ids['m3']} > /etc/machine-id")
        lab("exec", "m3", "--", "systemctl", "reset-failed", "fleetd", check=False)
        lab("exec", "m3", "--", "systemctl", "restart", "fleetd", check=False)
    assert sorted(wait_machines(4)) == sorted(ids.values())
    assert owner_intact()


# --- TestSingleNodeConnectivityLoss -------------------------------------------------------------

def test_machine_losing_etcd_keeps_global_units_and_fences_the_rest(
        tmp_path: pathlib.Path) -> None:
    """fleet left every unit as it was on a machine cut off from etcd. fleet-py fences:
    once its lease may have expired the machine stops its non-global units (so none runs
    twice), keeps its global ones, and takes back its schedule when etcd returns."""
    (tmp_path / "single@.service").write_text(
        (FIXTURES / "single@.service").read_text() + "\n[X-Fleet]\nMachineMetadata=hostname=m3\n")
    commands = {"inactive": ["submit"], "loaded": ["load", "--no-block"],
                "launched": ["start", "--no-block"]}
    for state, cmd in commands.items():
        fleetctl(*cmd, str(tmp_path / f"single@{state}.service"))
        fleetctl(*cmd, fixture(f"global@{state}.service"))
    expected = {f"{kind}@{s}.service": s for kind in ("single", "global") for s in commands}

    def as_expected() -> bool:
        if {u: f["dstate"] for u, f in unit_files().items()} != expected:
            return False
        a = active_units()
        return (a.get("single@launched.service") == [machine_ids()["m3"]]
                and len(a.get("global@launched.service", [])) == 4 and len(a) == 2)

    wait_until(as_expected, 60, what="the initial states")
    since = lab("exec", "m3", "--", "date", "+%Y-%m-%d %H:%M:%S").stdout.strip()
    cut_etcd("m3")

    def fenced() -> bool:
        assert is_active("m3", "global@launched.service")
        return not is_active("m3", "single@launched.service")

    wait_until(fenced, 60, interval_s=0.5, what="m3 to stop its non-global unit")
    assert show("m3", "single@loaded.service", "ActiveState") == "inactive"
    reconnect_etcd("m3")
    wait_until(as_expected, 60, what="the states back after etcd returns")
    # fleetctl's view follows systemd's within a publication: wait for it, then hold it.
    wait_until(lambda: holders("single@launched.service") == ["m3"], 30,
               what="fleetctl to show single@launched.service on m3")
    journal = lab("exec", "m3", "--", "journalctl", "_PID=1", "--since", since, "-o", "cat",
                  "--no-pager").stdout
    assert "Stopping global@" not in journal, journal


# --- TestReconfigureServer --------------------------------------------------------------------

def test_sighup_keeps_fleetd_and_its_listeners() -> None:
    pid = show("m2", "fleetd.service", "MainPID")
    assert pid not in ("", "0")
    lab("exec", "m2", "--", "kill", "-HUP", pid)
    holds_for(lambda: show("m2", "fleetd.service", "ActiveState") == "active"
              and show("m2", "fleetd.service", "MainPID") == pid, 5,
              what="the same fleetd process active after SIGHUP")
    assert show("m2", "fleetd.service", "Result") == "success"
    ip = next(m["ip"] for m in machines() if m["name"] == "m2")
    r = fleetctl("--endpoint", f"{ip}:9810", "list-machines", "--no-legend")
    assert len(r.stdout.splitlines()) == 4
