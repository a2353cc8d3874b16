"""Real servers for the security tests: a TLS / password-protected etcd and single fleetds.

Certificates come from `fleetd.certificates` (the CA the labs use), generated per test."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence

from fleetd.certificates import CertificateAuthority, IssuedCertificate
from fleetd.localcluster import UserManager, free_port


class SecureEtcd:
    """A single-member etcd on loopback: https with `--client-cert-auth` when `ca` is given,
    plain http otherwise."""

    def __init__(self, root: pathlib.Path, ca: CertificateAuthority | None = None) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.ca = ca
        self.port = free_port()
        self.peer_port = free_port()
        self.server: IssuedCertificate | None = None
        self.client: IssuedCertificate | None = None
        if ca is not None:
            self.server = ca.issue("etcd-server", ips=["127.0.0.1"], dns=["localhost"])
            self.client = ca.issue("etcd-client")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.ca else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def etcdctl(self, *args: str, user: str = "") -> subprocess.CompletedProcess[str]:
        argv = ["etcdctl", "--endpoints", self.endpoint]
        if self.client is not None:
            argv += ["--cacert", self.client.ca_file, "--cert", self.client.cert_file,
                     "--key", self.client.key_file]
        if user:
            argv += ["--user", user]
        return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=20,
                              env={**os.environ, "ETCDCTL_API": "3"})

    def start(self, timeout_s: float = 20) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        argv = [shutil.which("etcd") or "/usr/bin/etcd", "--name", "sec",
                "--data-dir", str(self.root / "data"),
                "--listen-client-urls", self.endpoint, "--advertise-client-urls", self.endpoint,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"sec={peer}"]
        if self.server is not None:
            argv += ["--client-cert-auth", "--trusted-ca-file", self.server.ca_file,
                     "--cert-file", self.server.cert_file, "--key-file", self.server.key_file]
        log = open(self.root / "etcd.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while self.etcdctl("endpoint", "health").returncode != 0:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("etcd did not start: "
                                   + (self.root / "etcd.log").read_text()[-2000:])
            time.sleep(0.1)

    def enable_auth(self, password: str) -> None:
        """etcd's user/password auth: a `root` user with `password`, then `auth enable`."""
        for args in (["user", "add", f"root:{password}"], ["auth", "enable"]):
            r = self.etcdctl(*args)
            assert r.returncode == 0, r.stderr

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class SingleFleetd:
    """One fleetd process driving a `systemd --user` manager, configured by FLEET_* variables;
    its stderr goes to `log`."""

    def __init__(self, root: pathlib.Path, manager: UserManager, etcd_endpoint: str,
                 options: Mapping[str, str] | None = None, prefix: str = "") -> None:
        self.root = root
        self.manager = manager
        self.machine_id = uuid.uuid4().hex
        self.api_socket = str(root / "api.sock")
        self.http_socket = str(root / "http.sock")
        self.log = root / f"fleetd-{self.machine_id[:6]}.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET")}
        self.env.update(manager.env)
        self.env.update({
            "FLEET_CONFIG": os.devnull,
            "FLEET_ETCD_SERVERS": etcd_endpoint,
            "FLEET_ETCD_KEY_PREFIX": prefix or f"/sec-{self.machine_id[:8]}/",
            "FLEET_MACHINE_ID": self.machine_id,
            "FLEET_PUBLIC_IP": "127.0.0.1",
            "FLEET_SYSTEMD_USER": "true",
            "FLEET_SYSTEMD_BUS_ADDRESS": manager.bus_address,
            "FLEET_API_SOCKET": self.api_socket,
            "FLEET_HTTP_SOCKET": self.http_socket,
            "FLEET_AGENT_TTL": "5",
            "FLEET_ETCD_REQUEST_TIMEOUT": "2",
        })
        self.env.update({"FLEET_" + k.upper(): v for k, v in (options or {}).items()})
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "fleetd.main"], env=self.env,
                                         stdout=log, stderr=log, start_new_session=True)

    def run_to_exit(self, timeout_s: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "fleetd.main"], env=self.env,
                              capture_output=True, text=True, timeout=timeout_s)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for_socket(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(self.api_socket) or not os.path.exists(self.http_socket):
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"fleetd exited with {self.proc.returncode}: "
                                     + self.output()[-2000:])
            if time.monotonic() > deadline:
                raise AssertionError("fleetd opened no socket: " + self.output()[-2000:])
            time.sleep(0.05)

    def fleetctl(self, *args: str, endpoint: str = "",
                 env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        e = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL")}
        e["FLEETCTL_ENDPOINT"] = endpoint or "unix://" + self.api_socket
        e.update(env or {})
        return subprocess.run([sys.executable, "-m", "fleetctl", *args], env=e,
                              capture_output=True, text=True, timeout=60)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def fleetctl_tls_flags(cert: IssuedCertificate) -> Sequence[str]:
    return ["--ca-file", cert.ca_file, "--cert-file", cert.cert_file, "--key-file",
            cert.key_file]
