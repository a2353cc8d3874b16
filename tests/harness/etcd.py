"""A single-member etcd on loopback with client-certificate TLS (or plain http for password
auth), for the security tests; `fleetd.localcluster.EtcdServer` is the plain one the other
suites use. Certificates come from `fleetd.certificates` (the CA the labs use)."""

from __future__ import annotations

import os
import pathlib
import subprocess
import time

from fleetd.certificates import CertificateAuthority, IssuedCertificate
from fleetd.localcluster import EtcdServer


class SecureEtcd(EtcdServer):
    """A single-member etcd on loopback: https with `--client-cert-auth` when `ca` is given,
    plain http otherwise (for password auth). Its own start (the TLS flags, a health check
    that presents the client certificate); ports and stop as EtcdServer."""

    def __init__(self, root: pathlib.Path, ca: CertificateAuthority | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root)
        self.ca = ca
        self.server: IssuedCertificate | None = None
        self.client: IssuedCertificate | None = None
        if ca is not None:
            self.server = ca.issue("etcd-server", ips=["127.0.0.1"], dns=["localhost"])
            self.client = ca.issue("etcd-client")

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.ca else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

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
        argv = [self.binary, "--name", "sec",
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
