"""Processes of a local cluster: etcd, and per machine a systemd --user manager plus fleetd."""

from __future__ import annotations

import contextlib
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Self

from fleetd.certificates import CertificateAuthority
from fleetd.localcluster.usermanager import UserManager

#: The signal that makes fleetd exit keeping its units (see fleetd.main.RESTART_SIGNAL; not
#: imported from there to keep the harness free of fleetd's runtime imports).
RESTART_SIGNAL = signal.SIGUSR2


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port nothing listens on, for a server started a moment later. Chosen below the
    kernel's ephemeral range: a port the kernel hands out (bind to port 0) is also what it
    picks for outgoing connections, which then take it before the server binds (seen in CI:
    "address already in use" on a fleetd's metrics port). Free on every address, never the
    same twice in one process."""
    high = _ephemeral_low() - 1
    low = max(1024, min(20000, high - 4096))
    rng = random.SystemRandom()
    for _ in range(1000):
        port = rng.randint(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free TCP port in {low}-{high}")


def _accepts(path: str) -> bool:
    """True once a server listens on the unix socket `path`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
            return True
        except OSError:
            return False


class EtcdServer:
    """A single-member etcd (Debian's etcd-server binary) on free loopback ports."""

    def __init__(self, root: pathlib.Path, binary: str = "etcd") -> None:
        self.root = root
        self.binary = shutil.which(binary) or binary
        self.client_port = free_port()
        self.peer_port = free_port()
        self.metrics_port = free_port()  # etcd's own /metrics (request counters for benchmarks)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout_s: float = 20) -> None:
        if not os.path.exists(self.binary):
            raise RuntimeError(f"etcd binary not found ({self.binary}): apt-get install "
                               "etcd-server")
        data = self.root / "etcd-data"
        data.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.root / "etcd.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--name", "local", "--data-dir", str(data),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"local={peer}", "--initial-cluster-state", "new",
             "--listen-metrics-urls", f"http://127.0.0.1:{self.metrics_port}"],
            stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}; see "
                                   f"{self.root / 'etcd.log'}")
            try:
                with socket.create_connection(("127.0.0.1", self.client_port), 0.2):
                    pass
                r = subprocess.run(["etcdctl", "--endpoints", self.endpoint, "endpoint",
                                    "health"], capture_output=True, text=True, timeout=5,
                                   env={**os.environ, "ETCDCTL_API": "3"})
                if r.returncode == 0:
                    return
            except (OSError, subprocess.TimeoutExpired):
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("etcd did not become healthy in time")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LocalMachine:
    """One simulated machine: a systemd --user manager and the fleetd that drives it."""

    def __init__(self, cluster: LocalCluster, index: int, metadata: Mapping[str, str]) -> None:
        self.cluster = cluster
        self.index = index
        self.name = f"m{index + 1}"
        self.machine_id = uuid.uuid4().hex
        self.ip = f"127.0.0.{index + 2}"
        self.metadata = dict(metadata)
        self.root = cluster.root / self.name
        self.root.mkdir(parents=True, exist_ok=True)
        self.manager = UserManager(self.root)
        self.api_socket = str(self.root / "fleet.sock")
        self.http_socket = str(self.root / "http.sock")  # fleet's HTTP API v1
        self.fleetd: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[str] | None = None
        self.proxy_port = 0
        # gRPC on TCP at the machine's own loopback IP: fleetds forward unit status and journal
        # requests there (a real cluster would use its public IP).
        self.api_tcp = f"{self.ip}:{free_port()}"
        self.metrics_port = free_port()
        # mutual TLS on api_tcp, with a certificate naming the machine's IP (the cluster's CA)
        self.tls = cluster.ca.issue(self.name, ips=[self.ip], dns=[self.name])

    def start_proxy(self) -> None:
        """Route this machine's etcd traffic through a proxy that `partition` can cut."""
        self.proxy_port = free_port()
        self.proxy = subprocess.Popen(
            [sys.executable, "-m", "fleetd.localcluster.proxy", str(self.proxy_port),
             f"127.0.0.1:{self.cluster.etcd.client_port}"], stdout=subprocess.PIPE, text=True,
            start_new_session=True)
        assert self.proxy.stdout is not None
        if self.proxy.stdout.readline().strip() != "ready":
            raise RuntimeError(f"etcd proxy of {self.name} did not start")

    def partition(self) -> None:
        """Cut this machine off etcd while it keeps running."""
        if self.proxy is None:
            raise RuntimeError("cluster was not started with partitionable=True")
        self.proxy.send_signal(signal.SIGUSR1)

    def heal(self) -> None:
        if self.proxy is None:
            raise RuntimeError("cluster was not started with partitionable=True")
        self.proxy.send_signal(signal.SIGUSR2)

    @property
    def etcd_endpoint(self) -> str:
        if self.proxy_port:
            return f"http://127.0.0.1:{self.proxy_port}"
        return self.cluster.etcd.endpoint

    @property
    def endpoint(self) -> str:
        return "unix://" + self.api_socket

    def fleetd_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET")}
        env.update(self.manager.env)
        env.update({
            "FLEET_ETCD_SERVERS": self.etcd_endpoint,
            "FLEET_ETCD_KEY_PREFIX": self.cluster.prefix,
            "FLEET_MACHINE_ID": self.machine_id,
            "FLEET_PUBLIC_IP": self.ip,
            "FLEET_METADATA": ",".join(f"{k}={v}" for k, v in self.metadata.items()),
            "FLEET_SYSTEMD_USER": "true",
            "FLEET_API_SOCKET": self.api_socket,
            "FLEET_HTTP_SOCKET": self.http_socket,
            "FLEET_API_TCP": self.api_tcp,
            "FLEET_API_TLS_CAFILE": self.tls.ca_file,
            "FLEET_API_TLS_CERTFILE": self.tls.cert_file,
            "FLEET_API_TLS_KEYFILE": self.tls.key_file,
            "FLEET_AGENT_TTL": str(self.cluster.agent_ttl_s),
            "FLEET_ENGINE_RECONCILE_INTERVAL": "2",
            "FLEET_CONFIG": os.devnull,
            "FLEET_METRICS_LISTEN": f"127.0.0.1:{self.metrics_port}",
        })
        return env

    def start(self) -> None:
        if self.cluster.partitionable and self.proxy is None:
            self.start_proxy()
        if self.manager.pid is None:
            self.manager.start()
        self.start_fleetd()

    def start_fleetd(self) -> None:
        # A fleetd killed with SIGKILL leaves its socket file behind: wait for a fresh one.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.api_socket)
        log = open(self.root / "fleetd.log", "ab")
        # fleetd lives in the manager's mount namespace, like a host's fleetd sees the host's
        # /run: `journalctl` and `systemctl status` then read this machine's journal.
        self.fleetd = subprocess.Popen(self.manager.in_namespace(
                                           [sys.executable, "-m", "fleetd.main"]),
                                       env=self.fleetd_env(), stdout=log, stderr=log,
                                       start_new_session=True)
        deadline = time.monotonic() + 20
        while not _accepts(self.api_socket):
            if self.fleetd.poll() is not None:
                raise RuntimeError(f"fleetd {self.name} exited with {self.fleetd.returncode}; "
                                   f"see {self.root / 'fleetd.log'}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"fleetd {self.name} did not open its API socket")
            time.sleep(0.05)

    def stop_fleetd(self, sig: int = signal.SIGTERM, timeout_s: float = 30) -> None:
        """Send fleetd `sig` and wait for it to exit. SIGTERM is `systemctl stop fleetd`: it
        stops and unloads its units and leaves the cluster. `RESTART_SIGNAL` (SIGUSR2) is the
        restart of an upgrade: it exits leaving its units running for the next fleetd to
        adopt. SIGKILL is a crash: units keep running until the dead-man switch fires."""
        if self.fleetd and self.fleetd.poll() is None:
            self.fleetd.send_signal(sig)
            try:
                self.fleetd.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.fleetd.kill()
                self.fleetd.wait()
        self.fleetd = None

    def restart_fleetd(self) -> None:
        """`systemctl restart fleetd`: the new fleetd adopts the running units."""
        self.stop_fleetd(RESTART_SIGNAL)
        self.start_fleetd()

    def freeze_fleetd(self) -> None:
        """SIGSTOP: fleetd hangs (no renewal, no in-process fence); systemd's timer fences."""
        assert self.fleetd is not None
        self.fleetd.send_signal(signal.SIGSTOP)

    def thaw_fleetd(self) -> None:
        assert self.fleetd is not None
        self.fleetd.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """A power cut: fleetd, the systemd manager and every unit process die at once."""
        if self.fleetd and self.fleetd.poll() is None:
            self.fleetd.send_signal(signal.SIGCONT)  # a frozen fleetd dies as well
        self.stop_fleetd(signal.SIGKILL)
        self.manager.kill()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.api_socket)

    @property
    def alive(self) -> bool:
        return self.fleetd is not None and self.fleetd.poll() is None

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.manager.systemctl(*args)

    def is_active(self, unit: str) -> bool:
        return self.systemctl("is-active", unit).stdout.strip() == "active"

    def main_pid(self, unit: str) -> int:
        out = self.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip()
        return int(out or 0)


class LocalCluster:
    """etcd plus `machines` local machines; `fleetctl(...)` runs the real CLI against it."""

    def __init__(self, machines: int = 3, *, metadata: Sequence[Mapping[str, str]] = (),
                 agent_ttl_s: int = 10, root: str | None = None,
                 partitionable: bool = False) -> None:
        # Short root: unix socket paths must stay under 108 bytes.
        self.root = pathlib.Path(root or tempfile.mkdtemp(prefix="flc-", dir="/tmp"))
        self.prefix = "/fleet-" + uuid.uuid4().hex[:8] + "/"
        self.agent_ttl_s = agent_ttl_s
        self.partitionable = partitionable
        self.etcd = EtcdServer(self.root)
        # The cluster's own CA: each fleetd's TCP API and fleetctl's client certificate.
        self.ca = CertificateAuthority.create(self.root / "pki")
        self.client_tls = self.ca.issue("fleetctl")
        self.machines = [LocalMachine(self, i, metadata[i] if i < len(metadata) else {})
                         for i in range(machines)]

    def start(self) -> None:
        try:
            self.etcd.start()
            for m in self.machines:
                m.start()
            self.wait_for_machines(len(self.machines))
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for m in self.machines:
            with contextlib.suppress(Exception):
                m.kill()
            if m.proxy is not None:
                m.proxy.kill()
                m.proxy.wait()
        self.etcd.stop()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def machine(self, machine_id: str) -> LocalMachine:
        for m in self.machines:
            if m.machine_id == machine_id or m.machine_id.startswith(machine_id.rstrip(".")):
                return m
        raise KeyError(machine_id)

    def endpoint(self) -> str:
        for m in self.machines:
            if m.alive:
                return m.endpoint
        raise RuntimeError("no machine of the cluster is alive")

    def fleetctl(self, *args: str, check: bool = False, timeout_s: float = 60,
                 endpoint: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "FLEETCTL_ENDPOINT": endpoint or self.endpoint(),
               **self.fleetctl_tls_env()}
        r = subprocess.run([sys.executable, "-m", "fleetctl", *args], env=env,
                           capture_output=True, text=True, timeout=timeout_s)
        if check and r.returncode != 0:
            raise RuntimeError(f"fleetctl {' '.join(args)} failed ({r.returncode}): "
                               f"{r.stderr.strip()}")
        return r

    def fleetctl_tls_env(self) -> dict[str, str]:
        """fleetctl's FLEETCTL_CA_FILE/CERT_FILE/KEY_FILE for the machines' TCP APIs."""
        return {"FLEETCTL_CA_FILE": self.client_tls.ca_file,
                "FLEETCTL_CERT_FILE": self.client_tls.cert_file,
                "FLEETCTL_KEY_FILE": self.client_tls.key_file}

    def wait_for_machines(self, count: int, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            r = self.fleetctl("list-machines", "--no-legend", "-l")
            if r.returncode == 0 and len(r.stdout.split("\n")) - 1 == count:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"expected {count} machines, list-machines says:\n"
                                   f"{r.stdout}{r.stderr}")
            time.sleep(0.2)
