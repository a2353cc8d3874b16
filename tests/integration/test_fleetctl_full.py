"""fleet's full command set and fleet-py's additions, through the real fleetctl CLI on a real
3-machine cluster (etcd, systemd --user managers each with its own journald, fleetd).

status and journal are served by the fleetd of the machine running the unit, forwarded by
whichever fleetd fleetctl talks to; the tests ask every machine's endpoint to prove it.
"""

from __future__ import annotations

import json
import os
import pathlib
import queue
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import UNITS_DIR, machines_running, unit_rows, wait_until

TICKER = ("[Unit]\nDescription=Ticks five times a second\n[Service]\n"
          "ExecStart=/bin/sh -c 'i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done'\n")


@pytest.fixture(autouse=True)
def _clean(cluster: LocalCluster) -> Iterator[None]:
    yield
    r = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit")
    names = r.stdout.split()
    if names:
        cluster.fleetctl("destroy", *names)
    wait_until(lambda: not unit_rows(cluster), what="all units gone after test")


def write_unit(tmp_path: pathlib.Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def start_ticker(cluster: LocalCluster, tmp_path: pathlib.Path,
                 name: str = "ticker.service") -> str:
    """Start the ticker unit; the id of the machine running it."""
    r = cluster.fleetctl("start", write_unit(tmp_path, name, TICKER))
    assert r.returncode == 0, r.stderr
    [mid] = machines_running(cluster, name)
    return mid


def main_pids(cluster: LocalCluster, unit: str) -> dict[str, int]:
    return {m.machine_id: m.main_pid(unit) for m in cluster.machines if m.is_active(unit)}


def _where_is(cluster: LocalCluster, mid: str, unit: str, pid: int) -> str:
    """What a timed-out wait on `unit` (on machine `mid`, main PID `pid` before) saw last."""
    m = cluster.machine(mid)
    status = m.systemctl("status", "--no-pager", "-n", "5", unit).stdout
    rows = cluster.fleetctl("list-units", "--no-legend", "-l").stdout
    return (f"main PID was {pid}, now {m.main_pid(unit)}; list-units:\n{rows}"
            f"systemctl status on {mid[:12]}:\n{status}")


# --- status -------------------------------------------------------------------------------
def test_status_shows_systemctl_status_from_the_machine_running_the_unit(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    mid = start_ticker(cluster, tmp_path)
    pid = cluster.machine(mid).main_pid("ticker.service")
    for m in cluster.machines:  # asking any machine's fleetd gives the same answer
        r = cluster.fleetctl("status", "ticker", endpoint=m.endpoint)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("● ticker.service - Ticks five times a second"), r.stdout
        assert "Active: active (running)" in r.stdout
        assert f"Main PID: {pid}" in r.stdout
    wait_until(lambda: "tick " in cluster.fleetctl("status", "ticker.service").stdout, 5,
               what="journal lines in status output")
    r = cluster.fleetctl("status", "--lines", "1", "ticker.service")
    assert len([x for x in r.stdout.splitlines() if "]: tick " in x]) == 1, r.stdout


def test_status_of_several_units_separates_them_like_systemctl(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    start_ticker(cluster, tmp_path, "t1.service")
    start_ticker(cluster, tmp_path, "t2.service")
    r = cluster.fleetctl("status", "t1.service", "t2.service")
    assert r.returncode == 0, r.stderr
    first, second = r.stdout.split("\n\n● ")
    assert first.startswith("● t1.service") and second.startswith("t2.service")


def test_status_exit_code_is_systemctls_when_the_unit_is_not_running(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    path = write_unit(tmp_path, "oneshot.service", "[Service]\nExecStart=/bin/false\n")
    assert cluster.fleetctl("start", path).returncode == 0
    wait_until(lambda: cluster.fleetctl("status", "oneshot.service").returncode == 3, 10,
               what="status exit 3 for a failed unit")
    assert "failed" in cluster.fleetctl("status", "oneshot.service").stdout


def test_status_of_a_global_unit_shows_every_machine(cluster: LocalCluster) -> None:
    assert cluster.fleetctl("start", str(UNITS_DIR / "monitor.service")).returncode == 0
    wait_until(lambda: len(machines_running(cluster, "monitor.service")) == 3, 10,
               what="monitor on all machines")
    r = cluster.fleetctl("status", "monitor.service")
    assert r.returncode == 0, r.stderr
    for m in cluster.machines:
        assert f"# monitor.service on machine {m.machine_id}" in r.stdout
    assert r.stdout.count("Active: active (running)") == 3


def test_status_errors_name_the_unit(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    r = cluster.fleetctl("status", "nosuch.service")
    assert r.returncode == 1 and "Unit nosuch.service does not exist." in r.stderr
    cluster.fleetctl("submit", write_unit(tmp_path, "idle.service", TICKER), check=True)
    r = cluster.fleetctl("status", "idle.service")
    assert r.returncode == 1 and "Unit idle.service does not appear to be loaded." in r.stderr


# --- journal ------------------------------------------------------------------------------
def test_journal_prints_the_last_lines_of_the_unit_from_its_machine(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    start_ticker(cluster, tmp_path)
    wait_until(lambda: len(cluster.fleetctl("journal", "--lines", "5", "-o", "cat",
                                            "ticker").stdout.splitlines()) == 5, 10,
               what="five journal lines")
    for m in cluster.machines:
        r = cluster.fleetctl("journal", "--lines", "3", "--output", "cat", "ticker.service",
                             endpoint=m.endpoint)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 3 and all(re.fullmatch(r"tick \d+", x) for x in lines), lines
    # fleet's default: the last 10 lines, short format (once the ticker has written that many)
    lines = wait_until(lambda: (lambda out: out if len(out) >= 10 else None)(
        cluster.fleetctl("journal", "ticker.service").stdout.splitlines()), 10,
        what="ten journal lines")
    assert len(lines) == 10 and all(": tick " in x for x in lines), lines
    r = cluster.fleetctl("journal", "-n", "2", "-o", "json", "ticker.service")
    records = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(records) == 2
    assert all(rec["MESSAGE"].startswith("tick ") for rec in records)
    assert all(rec["_SYSTEMD_USER_UNIT"] == "ticker.service" for rec in records)


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            q.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return q


def test_journal_follow_streams_new_lines_as_they_are_written(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    mid = start_ticker(cluster, tmp_path)
    other = next(m for m in cluster.machines if m.machine_id != mid)  # forwarded stream
    env = {**os.environ, "FLEETCTL_ENDPOINT": other.endpoint}
    proc = subprocess.Popen([sys.executable, "-m", "fleetctl", "journal", "-f", "-n", "1",
                             "-o", "cat", "ticker.service"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        q = _lines(proc)
        seen = []
        deadline = time.monotonic() + 10
        while len(seen) < 6 and time.monotonic() < deadline:
            try:
                seen.append(q.get(timeout=0.5).strip())
            except queue.Empty:
                pass
        assert len(seen) >= 6, seen
        numbers = [int(x.split()[1]) for x in seen]
        assert numbers == sorted(numbers) and numbers[-1] - numbers[0] >= 5  # live, in order
        assert proc.poll() is None  # still following
    finally:
        proc.terminate()
        proc.wait(10)


def test_journal_errors(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    r = cluster.fleetctl("journal", "nosuch.service")
    assert r.returncode == 1 and "Unit nosuch.service does not exist." in r.stderr
    cluster.fleetctl("submit", write_unit(tmp_path, "idle.service", TICKER), check=True)
    r = cluster.fleetctl("journal", "idle.service")
    assert r.returncode == 1 and "Unit idle.service does not appear to be running." in r.stderr
    start_ticker(cluster, tmp_path)
    r = cluster.fleetctl("journal", "-o", "bogus", "ticker.service")
    assert r.returncode == 1 and "invalid journal output format 'bogus'" in r.stderr
    r = cluster.fleetctl("journal", "--lines", "-3", "ticker.service")
    assert r.returncode == 1 and "--lines" in r.stderr


# --- ssh ----------------------------------------------------------------------------------
def ssh_config(argv: str) -> dict[str, str]:
    """What the real ssh would do with fleetctl's command line (`ssh -G` resolves it)."""
    args = argv.split()
    assert args[0] == "ssh"
    r = subprocess.run(["ssh", "-G", *args[1:]], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r.stderr
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(" ")
        out.setdefault(k, v)
    return out


def test_ssh_targets_a_machine_or_the_machine_of_a_unit(cluster: LocalCluster,
                                                       tmp_path: pathlib.Path) -> None:
    m = cluster.machines[1]
    r = cluster.fleetctl("--ssh-port", "2222", "--ssh-username", "bob", "--known-hosts-file",
                         str(tmp_path / "kh"), "ssh", "--print-command", m.machine_id[:10])
    assert r.returncode == 0, r.stderr
    cfg = ssh_config(r.stdout.strip())
    assert cfg["hostname"] == m.ip and cfg["port"] == "2222" and cfg["user"] == "bob"
    assert cfg["stricthostkeychecking"] == "ask"
    assert cfg["userknownhostsfile"].split()[0] == str(tmp_path / "kh")

    mid = start_ticker(cluster, tmp_path)
    r = cluster.fleetctl("ssh", "--print-command", "ticker.service", "uptime", "-p")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-3:] == [cluster.machine(mid).ip, "uptime", "-p"]
    assert ssh_config(r.stdout.strip())["user"] == "core"  # fleet's default user

    r = cluster.fleetctl("--no-strict-host-key-checking", "ssh", "--print-command", "--unit",
                         "ticker", "-A")
    cfg = ssh_config(r.stdout.strip())
    assert cfg["stricthostkeychecking"] == "false" and cfg["userknownhostsfile"] == "/dev/null"
    assert cfg["forwardagent"] == "yes"


def test_ssh_runs_the_real_ssh_client(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    # Nothing listens on port 1: the real ssh runs and fails to connect; fleetctl passes its
    # exit status (255) through, after creating fleetctl's known-hosts directory.
    kh = tmp_path / "dir" / "known_hosts"
    r = cluster.fleetctl("--ssh-port", "1", "--ssh-timeout", "2", "--known-hosts-file", str(kh),
                         "ssh", cluster.machines[0].machine_id, "true")
    assert r.returncode == 255 and "Connection refused" in r.stderr, r.stderr
    assert kh.parent.is_dir()


def test_ssh_errors(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    r = cluster.fleetctl("ssh", "--print-command", "nothing-like-this")
    assert r.returncode == 1 and "could not find matching unit or machine" in r.stderr
    r = cluster.fleetctl("ssh", "--machine", "--unit", "x")
    assert r.returncode == 1 and "Both machine and unit flags provided" in r.stderr
    cluster.fleetctl("submit", write_unit(tmp_path, "idle.service", TICKER), check=True)
    r = cluster.fleetctl("ssh", "--print-command", "--unit", "idle.service")
    assert r.returncode == 1 and "not scheduled" in r.stderr


def test_tunnel_that_cannot_connect_is_a_clear_error(cluster: LocalCluster) -> None:
    r = cluster.fleetctl("--tunnel", "127.0.0.1:1", "--ssh-timeout", "2", "list-machines")
    assert r.returncode == 1 and "ssh tunnel to 127.0.0.1:1 failed" in r.stderr, r.stderr
    env_r = subprocess.run([sys.executable, "-m", "fleetctl", "list-units"],
                           env={**os.environ, "FLEETCTL_TUNNEL": "127.0.0.1:1",
                                "FLEETCTL_ENDPOINT": cluster.endpoint()},
                           capture_output=True, text=True, timeout=30)
    assert env_r.returncode == 1 and "ssh tunnel" in env_r.stderr


# --- list commands ------------------------------------------------------------------------
def test_list_commands_speak_json_for_scripts(cluster: LocalCluster,
                                              tmp_path: pathlib.Path) -> None:
    mid = start_ticker(cluster, tmp_path)
    machines = json.loads(cluster.fleetctl("list-machines", "-o", "json").stdout)
    assert {m["machine"] for m in machines} == {m.machine_id for m in cluster.machines}
    assert {"machine", "ip", "metadata"} == set(machines[0])
    east = [m for m in machines if m["metadata"].get("region") == "us-east"]
    assert len(east) == 2
    units = json.loads(cluster.fleetctl("list-units", "-o", "json", "--fields",
                                        "unit,machine,active,sub,load,hash,desc").stdout)
    assert units == [{"unit": "ticker.service", "machine": mid, "active": "active",
                      "sub": "running", "load": "loaded", "hash": units[0]["hash"],
                      "desc": "Ticks five times a second"}]
    assert len(units[0]["hash"]) == 40
    files = json.loads(cluster.fleetctl("list-unit-files", "--output", "json", "--fields",
                                        "unit,hash,dstate,state,target,global,desc").stdout)
    assert files == [{"unit": "ticker.service", "hash": units[0]["hash"], "dstate": "launched",
                      "state": "launched", "target": mid, "global": False,
                      "desc": "Ticks five times a second"}]
    r = cluster.fleetctl("list-units", "-o", "yaml")
    assert r.returncode == 1 and "invalid output format 'yaml'" in r.stderr


def test_list_fields_full_and_legend(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    mid = start_ticker(cluster, tmp_path)
    r = cluster.fleetctl("list-units", "--fields", "unit,load,hash,desc")
    header, row = r.stdout.splitlines()
    assert header.split() == ["UNIT", "LOAD", "HASH", "DESC"]
    assert row.split()[:3] == ["ticker.service", "loaded", row.split()[2]]
    assert len(row.split()[2]) == 7 and row.endswith("Ticks five times a second")
    r = cluster.fleetctl("list-units", "-l", "--no-legend", "--fields", "machine,hash")
    full_machine, full_hash = r.stdout.split()
    assert full_machine == f"{mid}/{cluster.machine(mid).ip}" and len(full_hash) == 40
    r = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit,global,desc")
    assert r.stdout.split(None, 2) == ["ticker.service", "false", "Ticks five times a second\n"]
    r = cluster.fleetctl("list-unit-files", "--fields", "target", "--full")
    assert r.stdout.splitlines()[1] == f"{mid}/{cluster.machine(mid).ip}"
    r = cluster.fleetctl("list-machines", "--fields", "ip,machine")
    assert r.stdout.splitlines()[0].split() == ["IP", "MACHINE"]
    r = cluster.fleetctl("list-unit-files", "--fields", "")
    assert r.returncode == 1 and "at least one field" in r.stderr


def test_list_units_shows_a_unit_running_on_two_machines_loudly(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    start_ticker(cluster, tmp_path)
    # Forge a report from a machine with no agent (a real agent would correct its own record
    # at its next publication), as a bug would: list-units must not hide it.
    other = "f" * 32
    key = f"{cluster.prefix}state/ticker.service/{other}"
    value = json.dumps({"unit": "ticker.service", "machine_id": other, "hash": "x",
                        "state": "launched", "load_state": "loaded", "active_state": "active",
                        "sub_state": "running"})
    etcdctl = ["etcdctl", "--endpoints", cluster.etcd.endpoint]
    env = {**os.environ, "ETCDCTL_API": "3"}
    subprocess.run([*etcdctl, "put", key, value], env=env, check=True, capture_output=True)
    try:
        r = cluster.fleetctl("list-units")
        assert r.returncode == 2
        assert r.stdout.count("ticker.service (!)") == 2, r.stdout
        assert "WARNING: unit ticker.service is running on 2 machines at once" in r.stderr
    finally:
        subprocess.run([*etcdctl, "del", key], env=env, check=True, capture_output=True)
    assert cluster.fleetctl("list-units").returncode == 0


# --- exit codes and messages --------------------------------------------------------------
def test_invalid_transition_and_blocking_timeout(cluster: LocalCluster,
                                                 tmp_path: pathlib.Path) -> None:
    cluster.fleetctl("submit", write_unit(tmp_path, "idle.service", TICKER), check=True)
    r = cluster.fleetctl("stop", "idle.service")
    assert r.returncode == 1 and "Unable to stop unit idle.service in state inactive" in r.stderr
    mars = write_unit(tmp_path, "mars.service", TICKER + "[X-Fleet]\nMachineMetadata=region=mars\n")
    t0 = time.monotonic()
    r = cluster.fleetctl("start", "--block-attempts", "2", mars)
    assert r.returncode == 1
    assert "Error waiting for unit mars.service to reach state launched" in r.stderr
    assert time.monotonic() - t0 < 10
    why = cluster.fleetctl("why", "mars.service").stdout
    assert "rejected by MachineMetadata" in why and "Feasible machines: none" in why


def test_version_and_help(cluster: LocalCluster) -> None:
    r = cluster.fleetctl("version")
    assert r.returncode == 0 and re.fullmatch(r"fleetctl version \S+\n", r.stdout)
    r = cluster.fleetctl("help")
    assert r.returncode == 0
    for cmd in ("status", "journal", "ssh", "restart", "list-units", "why", "cat", "version"):
        assert cmd in r.stdout
    r = cluster.fleetctl("help", "journal")
    assert r.returncode == 0 and "--follow" in r.stdout and "--lines" in r.stdout
    r = cluster.fleetctl("help", "nosuch")
    assert r.returncode == 1 and "unknown command 'nosuch'" in r.stderr


# --- restart ------------------------------------------------------------------------------
def test_restart_restarts_units_in_place(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    mid = start_ticker(cluster, tmp_path)
    before = cluster.machine(mid).main_pid("ticker.service")
    r = cluster.fleetctl("restart", "ticker")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"Unit ticker.service restarted on {mid[:8]}...\n"
    assert machines_running(cluster, "ticker.service") == [mid]
    assert cluster.machine(mid).main_pid("ticker.service") not in (0, before)


def test_rolling_restart_of_a_global_unit_goes_machine_by_machine(
        cluster: LocalCluster) -> None:
    assert cluster.fleetctl("start", str(UNITS_DIR / "monitor.service")).returncode == 0
    wait_until(lambda: len(main_pids(cluster, "monitor.service")) == 3, 10, what="monitor x3")
    before = main_pids(cluster, "monitor.service")
    r = cluster.fleetctl("restart", "--rolling", "--batch", "2", "--wait-active", "20",
                         "monitor.service")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("Batch 1/2: ") and lines[3].startswith("Batch 2/2: ")
    assert sum("restarted on" in x for x in lines) == 3
    after = main_pids(cluster, "monitor.service")
    assert set(after) == set(before) and all(after[m] != before[m] for m in after)


def test_rolling_restart_stops_at_the_first_failure(cluster: LocalCluster,
                                                    tmp_path: pathlib.Path) -> None:
    flag = tmp_path / "broken"
    path = write_unit(tmp_path, "fragile.service",
                      f"[Service]\nExecStart=/bin/sh -c 'test -e {flag} && exit 1; "
                      "exec sleep 1000'\n[X-Fleet]\nGlobal=true\n")
    assert cluster.fleetctl("start", path).returncode == 0
    wait_until(lambda: len(main_pids(cluster, "fragile.service")) == 3, 10, what="fragile x3")
    before = main_pids(cluster, "fragile.service")
    flag.touch()  # from now on the service fails to start
    r = cluster.fleetctl("restart", "--rolling", "--wait-active", "10", "fragile.service")
    assert r.returncode == 1
    assert "rollout stopped" in r.stderr and "Batch 1/3" in r.stdout
    assert "Batch 2/3" not in r.stdout
    after = main_pids(cluster, "fragile.service")
    assert len(after) == 2 and all(after[m] == before[m] for m in after)  # the rest untouched


def test_restart_errors(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    r = cluster.fleetctl("restart", "nosuch.service")
    assert r.returncode == 1 and "Unit nosuch.service does not exist." in r.stderr
    cluster.fleetctl("submit", write_unit(tmp_path, "idle.service", TICKER), check=True)
    r = cluster.fleetctl("restart", "idle.service")
    assert r.returncode == 1 and "Unable to restart unit idle.service" in r.stderr
    start_ticker(cluster, tmp_path)
    r = cluster.fleetctl("restart", "--rolling", "--batch", "0", "ticker.service")
    assert r.returncode == 1 and "--batch must be at least 1" in r.stderr


# --- --replace ----------------------------------------------------------------------------
def test_start_replace_swaps_the_file_and_restarts_it_in_place(
        cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    mid = start_ticker(cluster, tmp_path)
    before = cluster.machine(mid).main_pid("ticker.service")
    v2 = TICKER.replace("tick $i", "tock $i")
    path = write_unit(tmp_path, "ticker.service", v2)
    r = cluster.fleetctl("start", path)  # fleet: a warning; the cluster's file is kept
    assert r.returncode == 0 and "differs" in r.stderr and "--replace" in r.stderr
    assert cluster.fleetctl("cat", "ticker").stdout == TICKER
    r = cluster.fleetctl("start", "--replace", path)
    assert r.returncode == 0, r.stderr
    assert cluster.fleetctl("cat", "ticker").stdout == v2
    wait_until(lambda: cluster.machine(mid).main_pid("ticker.service") not in (0, before), 10,
               what="ticker restarted with the new file")
    assert machines_running(cluster, "ticker.service") == [mid]  # not rescheduled
    wait_until(lambda: "tock" in cluster.fleetctl("journal", "-n", "1", "-o", "cat",
                                                  "ticker").stdout, 10, what="new output")


def test_replace_a_template_and_a_global_unit(cluster: LocalCluster,
                                              tmp_path: pathlib.Path) -> None:
    tmpl = write_unit(tmp_path, "tk@.service", TICKER)
    assert cluster.fleetctl("submit", tmpl).returncode == 0
    assert cluster.fleetctl("start", "tk@1.service").returncode == 0
    [mid] = machines_running(cluster, "tk@1.service")
    pid = cluster.machine(mid).main_pid("tk@1.service")
    v2 = TICKER.replace("tick", "TICK")
    r = cluster.fleetctl("submit", "--replace", write_unit(tmp_path, "tk@.service", v2))
    assert r.returncode == 0, r.stderr
    assert cluster.fleetctl("cat", "tk@1.service").stdout == v2
    wait_until(lambda: cluster.machine(mid).main_pid("tk@1.service") not in (0, pid), 10,
               what="instance restarted with the new template",
               detail=lambda: _where_is(cluster, mid, "tk@1.service", pid))

    glob = TICKER + "[X-Fleet]\nGlobal=true\n"
    assert cluster.fleetctl("start", write_unit(tmp_path, "g.service", glob)).returncode == 0
    wait_until(lambda: len(main_pids(cluster, "g.service")) == 3, 10, what="global x3")
    before = main_pids(cluster, "g.service")
    r = cluster.fleetctl("start", "--replace",
                         write_unit(tmp_path, "g.service", glob.replace("tick", "TICK")))
    assert r.returncode == 0, r.stderr
    wait_until(lambda: (lambda a: len(a) == 3 and all(a[m] != before[m] for m in a))(
        main_pids(cluster, "g.service")), 15, what="global unit restarted everywhere")
