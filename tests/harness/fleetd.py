"""One fleetd process outside a LocalCluster (its own etcd, options and arguments), for the
tests that start fleetd by hand: security, exit codes, flags."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence

from fleetd.certificates import IssuedCertificate
from fleetd.localcluster import UserManager


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

    def start(self, *args: str) -> None:
        """Start `fleetd.main` with extra command-line `args`."""
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "fleetd.main", *args],
                                         env=self.env,
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
