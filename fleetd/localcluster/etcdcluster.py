"""A multi-member etcd cluster on loopback (Debian's etcd-server binary), for fault tests.

Drop-in for `EtcdServer` where a `LocalCluster` uses it (`endpoint`, `start`, `stop`): the
endpoint is the comma-separated list of every member's client URL, which fleetd's etcd client
balances over (gRPC round_robin over an `ipv4:` target) and fails over between.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

from fleetd.localcluster.cluster import free_port


class EtcdMember:
    """One member: its own data dir, client and peer ports; stop/kill/start it alone."""

    def __init__(self, root: pathlib.Path, name: str, binary: str) -> None:
        self.root = root
        self.name = name
        self.binary = binary
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def spawn(self, initial_cluster: str) -> None:
        data = self.root / f"etcd-{self.name}"
        state = "existing" if data.exists() else "new"
        log = open(self.root / f"etcd-{self.name}.log", "ab")
        self.proc = subprocess.Popen(
            [self.binary, "--name", self.name, "--data-dir", str(data),
             "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
             "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
             "--initial-cluster", initial_cluster, "--initial-cluster-state", state,
             "--initial-cluster-token", f"flc-{self.root.name}",
             "--heartbeat-interval", "100", "--election-timeout", "1000"],
            stdout=log, stderr=log, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """The member's host dies: no clean shutdown."""
        self.stop(signal.SIGKILL)


class EtcdCluster:
    """`size` etcd members on free loopback ports; `leader()` names the current raft leader."""

    def __init__(self, root: pathlib.Path, size: int = 3, binary: str = "etcd") -> None:
        self.root = root
        self.binary = shutil.which(binary) or binary
        self.members = [EtcdMember(root, f"e{i}", self.binary) for i in range(size)]

    @property
    def endpoint(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def start(self, timeout_s: float = 30) -> None:
        if not os.path.exists(self.binary):
            raise RuntimeError(f"etcd binary not found ({self.binary}): apt-get install "
                               "etcd-server")
        self.root.mkdir(parents=True, exist_ok=True)
        for m in self.members:
            if not m.alive:
                m.spawn(self.initial_cluster)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd member {m.name} exited with {m.proc.returncode};"
                                       f" see {self.root / f'etcd-{m.name}.log'}")
            if self._healthy([m for m in self.members if m.alive]):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("etcd cluster did not become healthy in time")

    def _healthy(self, members: list[EtcdMember]) -> bool:
        for m in members:
            try:
                with socket.create_connection(("127.0.0.1", m.client_port), 0.2):
                    pass
            except OSError:
                return False
        r = self.etcdctl("endpoint", "health", endpoints=[m.endpoint for m in members])
        return r.returncode == 0

    def etcdctl(self, *args: str, endpoints: list[str] | None = None
                ) -> subprocess.CompletedProcess[str]:
        eps = ",".join(endpoints or [m.endpoint for m in self.members if m.alive])
        return subprocess.run(["etcdctl", "--endpoints", eps, *args], capture_output=True,
                              text=True, timeout=10, env={**os.environ, "ETCDCTL_API": "3"})

    def leader(self) -> EtcdMember:
        """The member that is raft leader now (asks the live members)."""
        import json

        r = self.etcdctl("endpoint", "status", "-w", "json")
        for st in json.loads(r.stdout or "[]"):
            header = st["Status"]["header"]
            if header["member_id"] == st["Status"]["leader"]:
                for m in self.members:
                    if m.endpoint == st["Endpoint"]:
                        return m
        raise RuntimeError(f"no etcd leader: {r.stdout}{r.stderr}")

    def stop(self) -> None:
        for m in self.members:
            m.stop()
