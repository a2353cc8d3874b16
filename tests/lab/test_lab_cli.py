"""`fleet-lab` itself: up/env/machines/exec/stop/start/partition/heal/down, the shared
provisioning script run inside a machine, and that `down` leaves nothing behind."""

from __future__ import annotations

import json
import os
import pathlib
import re
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.lab.conftest import (
    BIN,
    REPO,
    fleetctl,
    lab,
    lab_env,
    machines,
    restore,
    wait_until,
)

pytestmark = pytest.mark.usefixtures("lab_up")


def list_machines() -> dict[str, tuple[str, str]]:
    """machine id -> (ip, metadata) from `fleetctl list-machines -l`."""
    r = fleetctl("list-machines", "--no-legend", "-l")
    out = {}
    for line in r.stdout.splitlines():
        mid, ip, md = line.split()
        out[mid] = (ip, md)
    return out


def test_up_boots_machines_that_fleetctl_lists() -> None:
    ms = machines()
    assert [m["name"] for m in ms] == ["m1", "m2", "m3"]
    for m in ms:
        assert set(m) == {"name", "machine_id", "ip", "state"}
        assert m["state"] == "running"
        assert re.fullmatch(r"[0-9a-f]{32}", m["machine_id"])
    assert len({m["machine_id"] for m in ms}) == 3 and len({m["ip"] for m in ms}) == 3
    env = lab_env()
    assert env["FLEETCTL_ENDPOINT"]
    listed = list_machines()
    assert set(listed) == {m["machine_id"] for m in ms}
    for m in ms:
        ip, md = listed[m["machine_id"]]
        assert ip == m["ip"]
        assert md == ("disk=ssd,region=us-east" if m["name"] == "m2" else "-")


def test_env_points_old_fleet_clients_at_the_http_api_v1() -> None:
    """`fleet-lab env` also exports FLEET_HTTP_ENDPOINT: fleet's JSON API on m1:49153, over
    mutual TLS with the client certificate fleet's clients take as --ca-file/--cert-file/
    --key-file (FLEETCTL_CA_FILE, ...); without one the API refuses the connection."""
    ms = machines()
    m1 = next(m for m in ms if m["name"] == "m1")
    env = lab_env()
    endpoint = env["FLEET_HTTP_ENDPOINT"]
    assert endpoint == f"https://{m1['ip']}:49153"
    anonymous = ssl.create_default_context(cafile=env["FLEETCTL_CA_FILE"])
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(endpoint + "/fleet/v1/machines", timeout=10, context=anonymous)
    ctx = ssl.create_default_context(cafile=env["FLEETCTL_CA_FILE"])
    ctx.load_cert_chain(env["FLEETCTL_CERT_FILE"], env["FLEETCTL_KEY_FILE"])
    with urllib.request.urlopen(endpoint + "/fleet/v1/machines", timeout=10, context=ctx) as r:
        assert r.status == 200
        body = json.load(r)
    assert {m["id"] for m in body["machines"]} == {m["machine_id"] for m in ms}
    assert {m["primaryIP"] for m in body["machines"]} == {m["ip"] for m in ms}


def test_each_machine_is_a_booted_system_running_fleetd_as_a_notify_service() -> None:
    for m in machines():
        name = m["name"]
        assert lab("exec", name, "--", "hostname").stdout.strip() == name
        assert lab("exec", name, "--", "cat", "/etc/machine-id").stdout.strip() \
            == m["machine_id"]
        assert lab("exec", name, "--", "cat", "/proc/1/comm").stdout.strip() == "systemd"
        show = lab("exec", name, "--", "systemctl", "show", "-p", "Type", "-p", "ActiveState",
                   "-p", "Restart", "fleetd.service").stdout
        assert "Type=notify" in show and "ActiveState=active" in show \
            and "Restart=on-failure" in show, show
        conf = lab("exec", name, "--", "cat", "/etc/fleet/fleet.conf").stdout
        assert f"public_ip={m['ip']}" in conf
        # its own network address
        assert m["ip"] in lab("exec", name, "--", "ip", "-4", "-o", "addr", "show",
                              "host0").stdout


def test_exec_returns_the_commands_exit_code_and_output() -> None:
    r = lab("exec", "m1", "--", "sh", "-c", "echo out; echo err >&2; exit 7", check=False)
    assert r.returncode == 7
    assert r.stdout == "out\n" and r.stderr == "err\n"
    r = lab("exec", "m9", "--", "true", check=False)
    assert r.returncode != 0 and "m9" in r.stderr


def test_provisioning_script_inside_a_machine_reconfigures_fleetd() -> None:
    """The Vagrant lab's path of packaging/provision-fleetd.sh (no --root: writes /etc,
    daemon-reload, restarts fleetd), exercised inside m3."""
    m3 = next(m for m in machines() if m["name"] == "m3")
    dropin = lab("exec", "m3", "--", "cat",
                 "/etc/systemd/system/fleetd.service.d/10-exec.conf").stdout
    fleetd_exec = next(line for line in dropin.splitlines()
                       if line.startswith("ExecStart=/")).removeprefix("ExecStart=") \
        .removesuffix(" --config /etc/fleet/fleet.conf")
    etcd = lab_env()["ETCDCTL_ENDPOINTS"]
    script = str(REPO / "packaging" / "provision-fleetd.sh")
    base = [script, "--fleetd", fleetd_exec, "--etcd-servers", etcd, "--public-ip", m3["ip"],
            "--api-tcp", f"{m3['ip']}:9810", "--http-tcp", f"{m3['ip']}:49153"]
    try:
        lab("exec", "m3", "--", *base, "--metadata", "role=reprovisioned")
        wait_until(lambda: list_machines().get(m3["machine_id"], ("", ""))[1]
                   == "role=reprovisioned", 30, what="m3 re-registered with new metadata")
    finally:
        lab("exec", "m3", "--", *base)
    wait_until(lambda: list_machines().get(m3["machine_id"], ("", ""))[1] == "-", 30,
               what="m3 back without metadata")


def test_stop_start_partition_heal_states() -> None:
    before = {m["name"]: m for m in machines()}
    try:
        lab("stop", "m3")
        assert {m["name"]: m["state"] for m in machines()}["m3"] == "stopped"
        assert lab("exec", "m3", "--", "true", check=False).returncode != 0
        lab("start", "m3")
        after = {m["name"]: m for m in machines()}
        assert after["m3"] == before["m3"]  # same machine id, IP, and state running
        assert lab("exec", "m3", "--", "cat", "/etc/machine-id").stdout.strip() \
            == before["m3"]["machine_id"]
        lab("partition", "m3")
        assert {m["name"]: m["state"] for m in machines()}["m3"] == "partitioned"
        probe = [sys.executable, "-c", "import socket,sys; socket.create_connection("
                 "(sys.argv[1], 2379), 2)"]
        etcd_host = lab_env()["ETCDCTL_ENDPOINTS"].split("//")[1].split(":")[0]
        # the machine keeps running but cannot reach etcd; the others still can
        assert lab("exec", "m3", "--", *probe, etcd_host, check=False).returncode != 0
        assert lab("exec", "m1", "--", *probe, etcd_host, check=False).returncode == 0
        assert lab("exec", "m3", "--", "true").returncode == 0
        lab("heal", "m3")
        assert {m["name"]: m["state"] for m in machines()}["m3"] == "running"
        assert lab("exec", "m3", "--", *probe, etcd_host, check=False).returncode == 0
    finally:
        restore()


def _leftovers() -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    continue  # an exited process its new parent has not reaped yet
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if "/var/lib/fleet-lab" in cmd:
            found.append(f"process {pid}: {cmd}")
    if os.path.exists("/sys/class/net/flab0"):
        found.append("bridge flab0")
    found += [f"link {n}" for n in os.listdir("/sys/class/net") if n.startswith("vb-m")]
    if os.path.exists("/var/lib/fleet-lab"):
        found.append("/var/lib/fleet-lab")
    propagate = pathlib.Path("/run/systemd/nspawn/propagate")
    found += [f"nspawn dir {d}" for d in propagate.glob("m[0-9]*")]
    r = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True)
    if "fleet_lab" in r.stdout:
        found.append("nft table fleet_lab")
    with open("/proc/self/mounts") as f:
        found += [f"mount {ln.split()[1]}" for ln in f if "fleet-lab" in ln]
    for root in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        if os.path.isdir(root):
            found += [f"cgroup {root}/{n}" for n in os.listdir(root) if n.startswith("fleet-lab-")]
    return found


def test_down_removes_everything_and_up_works_after_an_interrupted_up() -> None:
    lab("down")
    assert _leftovers() == []
    assert lab("down").returncode == 0  # twice is fine
    # interrupt an `up` half-way (SIGKILL: no chance to clean up), then `up` again
    exe = BIN / "fleet-lab"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fleetd.lab"]
    p = subprocess.Popen([*cmd, "up"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: pathlib.Path("/var/lib/fleet-lab/machines/m1/console.log").exists(),
               30, interval_s=0.01, what="the interrupted up to spawn m1")
    p.send_signal(signal.SIGKILL)
    p.wait()
    t0 = time.monotonic()
    lab("up", "--machines", "3", "--metadata", "m2:region=us-east,disk=ssd")
    assert time.monotonic() - t0 < 60
    assert [m["state"] for m in machines()] == ["running"] * 3
    assert len(list_machines()) == 3
    # a second `up` while one is running is refused and leaves the lab alone
    r = lab("up", check=False)
    assert r.returncode != 0 and "already up" in r.stderr
    assert len(list_machines()) == 3
    lab("down")
    assert _leftovers() == []
    lab("up", "--machines", "3", "--metadata", "m2:region=us-east,disk=ssd")


def test_up_rejects_bad_arguments() -> None:
    r = lab("up", "--metadata", "m7:a=b", check=False)
    assert r.returncode != 0 and "m7" in r.stderr
    r = lab("up", "--metadata", "m1:novalue", check=False)
    assert r.returncode != 0 and "metadata" in r.stderr
    assert len(list_machines()) == 3  # the running lab is untouched
