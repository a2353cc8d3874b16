"""fleetd as a systemd service: Type=notify readiness, fleet.conf, SIGHUP reload, clean SIGTERM
shutdown."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from fleetctl.client import Client
from tests.integration.conftest import Host, single_host, wait_until


@pytest.fixture
def host() -> Iterator[Host]:
    with single_host("fsv-") as h:
        yield h


def test_fleetd_runs_as_a_notify_service_configured_by_fleet_conf(
        host: Host) -> None:
    etcd, manager, root = host.etcd, host.manager, host.root
    machine_id = uuid.uuid4().hex
    sock = root / "api.sock"
    conf = root / "fleet.conf"
    conf.write_text(
        "# fleet.conf in fleet's format\n"
        f"etcd_servers={etcd.endpoint}\n"
        "etcd_key_prefix=/svc-test/\n"
        f"machine_id={machine_id}\n"
        'metadata="role=api,zone=a"\n'
        "public_ip=10.1.2.3\n"
        "agent_ttl=5s\n"
        "systemd_user=true\n"
        f"systemd_bus_address={manager.bus_address}\n"
        f"api_socket={sock}\n")
    (manager.unit_dir / "fleetd.service").write_text(
        "[Unit]\nDescription=fleet-py daemon\n\n"
        "[Service]\nType=notify\n"
        f"ExecStart={sys.executable} -m fleetd.main --config {conf}\n"
        "Restart=on-failure\n")
    assert manager.systemctl("daemon-reload").returncode == 0
    # `systemctl start` of a Type=notify unit returns only once fleetd sent READY=1.
    r = manager.systemctl("start", "fleetd.service")
    assert r.returncode == 0, r.stderr + manager.systemctl("status", "fleetd").stdout
    assert manager.systemctl("is-active", "fleetd.service").stdout.strip() == "active"
    status = manager.systemctl("show", "-p", "StatusText", "--value", "fleetd.service").stdout
    assert machine_id in status
    [m] = wait_until(lambda: Client("unix://" + str(sock)).call("ListMachines").machines, 10,
                     what="fleetd registered")
    assert (m.id, m.ip, dict(m.metadata)) == (machine_id, "10.1.2.3",
                                              {"role": "api", "zone": "a"})
    # SIGHUP re-reads fleet.conf (fleet's TestReconfigureServer): same process, still serving,
    # the new metadata published.
    pid = manager.systemctl("show", "-p", "MainPID", "--value", "fleetd.service").stdout.strip()
    conf.write_text(conf.read_text().replace('metadata="role=api,zone=a"', 'metadata="role=db"'))
    assert manager.systemctl("kill", "-s", "HUP", "fleetd.service").returncode == 0
    wait_until(lambda: [dict(m.metadata) for m in Client("unix://" + str(sock))
                        .call("ListMachines").machines] == [{"role": "db"}], 10,
               what="metadata reloaded on SIGHUP")
    assert manager.systemctl("is-active", "fleetd.service").stdout.strip() == "active"
    assert manager.systemctl("show", "-p", "MainPID", "--value",
                             "fleetd.service").stdout.strip() == pid
    # SIGTERM (systemctl stop) is a clean shutdown: exit status 0, socket removed.
    assert manager.systemctl("stop", "fleetd.service").returncode == 0
    show = manager.systemctl("show", "-p", "Result", "-p", "ExecMainStatus",
                             "fleetd.service").stdout
    assert "Result=success" in show and "ExecMainStatus=0" in show, show
    assert not sock.exists()


@pytest.mark.parametrize(("args", "message"), [
    (["--agent_ttl=1"], "agent_ttl"),
    (["--metadata=region"], "metadata"),
    (["--config=/nonexistent/fleet.conf"], "/nonexistent/fleet.conf"),
])
def test_fleetd_refuses_bad_configuration(args: list[str], message: str) -> None:
    r = subprocess.run([sys.executable, "-m", "fleetd.main", *args], capture_output=True,
                       text=True, timeout=30, env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_fleetd_version() -> None:
    r = subprocess.run([sys.executable, "-m", "fleetd.main", "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("fleetd version ")
