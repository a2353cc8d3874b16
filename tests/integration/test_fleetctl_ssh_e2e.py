"""`fleetctl ssh` end to end: the system ssh against a real sshd on the machines' loopback
addresses, with fleet's known-hosts checking and agent-held keys."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from fleetd.localcluster import LocalCluster, free_port
from tests.integration.conftest import UNITS_DIR, machines_running

SSHD = "/usr/sbin/sshd"


class Sshd:
    """A real OpenSSH server on `addresses`:`port`, trusting one generated key."""

    def __init__(self, addresses: list[str]) -> None:
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="sshd-", dir="/tmp"))
        self.port = free_port()
        self.addresses = addresses
        self.proc: subprocess.Popen[bytes] | None = None
        self.agent_env: dict[str, str] = {}

    def keygen(self, name: str) -> pathlib.Path:
        path = self.root / name
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                       check=True)
        return path

    def start(self) -> None:
        assert os.path.exists(SSHD), "openssh-server missing: scripts/setup installs it"
        os.makedirs("/run/sshd", exist_ok=True)
        host = self.keygen("host_key")
        user = self.keygen("user_key")
        (self.root / "authorized_keys").write_text((self.root / "user_key.pub").read_text())
        self.host_pub = (self.root / "host_key.pub").read_text().split()[:2]
        conf = self.root / "sshd_config"
        conf.write_text("".join(f"ListenAddress {a}:{self.port}\n" for a in self.addresses) +
                        f"HostKey {host}\nAuthorizedKeysFile {self.root}/authorized_keys\n"
                        "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
                        f"PidFile {self.root}/sshd.pid\nAllowAgentForwarding yes\n")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(conf)],
                                     stderr=open(self.root / "sshd.log", "wb"))
        out = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
        for part in out.stdout.replace("\n", ";").split(";"):
            if "=" in part and part.strip().startswith("SSH_"):
                k, v = part.strip().split("=", 1)
                self.agent_env[k] = v
        subprocess.run(["ssh-add", "-q", str(user)], env={**os.environ, **self.agent_env},
                       check=True)
        deadline = time.monotonic() + 10
        while b"Server listening" not in (self.root / "sshd.log").read_bytes():
            assert time.monotonic() < deadline, (self.root / "sshd.log").read_text()
            time.sleep(0.05)

    def known_hosts(self, path: pathlib.Path, wrong: bool = False) -> str:
        key = self.host_pub
        if wrong:
            other = self.keygen(f"other_{time.monotonic_ns()}")
            key = pathlib.Path(f"{other}.pub").read_text().split()[:2]
        path.write_text("".join(f"[{a}]:{self.port} {key[0]} {key[1]}\n"
                                for a in self.addresses))
        return str(path)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(5)
        pid = self.agent_env.get("SSH_AGENT_PID")
        if pid:
            os.kill(int(pid), signal.SIGTERM)
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def sshd(cluster: LocalCluster) -> Iterator[Sshd]:
    s = Sshd([m.ip for m in cluster.machines])
    s.start()
    yield s
    s.stop()


def fleetctl_ssh(cluster: LocalCluster, sshd: Sshd, known_hosts: str,
                 *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FLEETCTL_ENDPOINT": cluster.endpoint(), **cluster.fleetctl_tls_env(),
           **sshd.agent_env}
    return subprocess.run(
        [sys.executable, "-m", "fleetctl", "--ssh-username", "root", "--ssh-port",
         str(sshd.port), "--known-hosts-file", known_hosts, "ssh", *args],
        env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_ssh_to_a_machine_and_to_a_units_machine(cluster: LocalCluster, sshd: Sshd,
                                                  tmp_path: pathlib.Path) -> None:
    kh = sshd.known_hosts(tmp_path / "known_hosts")
    m = cluster.machines[1]
    r = fleetctl_ssh(cluster, sshd, kh, m.machine_id, "echo", "hello from", "$SSH_CONNECTION")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("hello from") and f" {m.ip} {sshd.port}" in r.stdout
    r = fleetctl_ssh(cluster, sshd, kh, m.machine_id, "exit", "7")
    assert r.returncode == 7  # the remote command's exit code
    cluster.fleetctl("start", str(UNITS_DIR / "hello.service"), check=True)
    try:
        [mid] = machines_running(cluster, "hello.service")
        ip = cluster.machine(mid).ip
        r = fleetctl_ssh(cluster, sshd, kh, "hello.service", "echo", "$SSH_CONNECTION")
        assert r.returncode == 0, r.stderr
        assert f" {ip} {sshd.port}" in r.stdout  # connected to the unit's machine
    finally:
        cluster.fleetctl("destroy", "hello.service")


def test_ssh_refuses_a_changed_host_key(cluster: LocalCluster, sshd: Sshd,
                                         tmp_path: pathlib.Path) -> None:
    kh = sshd.known_hosts(tmp_path / "known_hosts", wrong=True)
    r = fleetctl_ssh(cluster, sshd, kh, cluster.machines[0].machine_id, "echo", "pwned")
    assert r.returncode != 0 and "pwned" not in r.stdout
    assert "HOST IDENTIFICATION HAS CHANGED" in r.stderr or "verification failed" in r.stderr
