"""The system `ssh` as fleetctl uses it: to a machine, through a bastion (`--tunnel`), and as an
API tunnel. Known hosts are checked as fleet did: against fleetctl's own known-hosts file
(`~/.fleetctl/known_hosts`), asking before trusting a new host, refusing a changed key;
`--strict-host-key-checking=false` turns checking off."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_KNOWN_HOSTS = "~/.fleetctl/known_hosts"
DEFAULT_USER = "core"


@dataclass(frozen=True)
class SSHOptions:
    user: str = DEFAULT_USER
    port: int = 22
    known_hosts_file: str = DEFAULT_KNOWN_HOSTS
    strict_host_key_checking: bool = True
    timeout_s: float = 10.0
    tunnel: str = ""  # bastion host[:port] every connection goes through
    forward_agent: bool = False

    def common(self) -> list[str]:
        """Options shared by every ssh fleetctl runs."""
        out = ["-o", f"ConnectTimeout={max(1, round(self.timeout_s))}"]
        if self.strict_host_key_checking:
            path = os.path.expanduser(self.known_hosts_file)
            out += ["-o", f"UserKnownHostsFile={path}", "-o", "StrictHostKeyChecking=ask"]
        else:
            out += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
                    "-o", "LogLevel=ERROR"]
        return out

    def ensure_known_hosts_dir(self) -> None:
        if self.strict_host_key_checking:
            d = os.path.dirname(os.path.expanduser(self.known_hosts_file))
            if d:
                os.makedirs(d, mode=0o700, exist_ok=True)


def split_host_port(address: str, default_port: int) -> tuple[str, int]:
    """('host', port) from host, host:port, [v6]:port."""
    a = address.strip()
    if a.startswith("["):
        host, _, rest = a[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if a.count(":") == 1:
        host, _, port = a.partition(":")
        return host, int(port)
    return a, default_port


def machine_argv(opts: SSHOptions, host: str, command: list[str]) -> list[str]:
    """`ssh` to `host` (through the tunnel host as a jump host when set), running `command`
    (an interactive shell when empty)."""
    argv = ["ssh", *opts.common(), "-p", str(opts.port), "-l", opts.user]
    if opts.forward_agent:
        argv.append("-A")
    if opts.tunnel:
        th, tp = split_host_port(opts.tunnel, opts.port)
        argv += ["-J", f"{opts.user}@{th}:{tp}"]
    if command and os.isatty(0):
        argv.append("-t")
    argv += ["--", host, *command]
    return argv


def api_tunnel_argv(opts: SSHOptions, local_socket: str, remote: str) -> list[str]:
    """`ssh -N -L` forwarding `local_socket` to fleetd's API at `remote` (a unix socket path or
    host:port) on the tunnel host."""
    th, tp = split_host_port(opts.tunnel, opts.port)
    target = remote if remote.startswith("/") else "{}:{}".format(*split_host_port(remote, 0))
    return ["ssh", *opts.common(), "-p", str(tp), "-l", opts.user, "-N",
            "-o", "ExitOnForwardFailure=yes", "-o", "StreamLocalBindUnlink=yes",
            "-L", f"{local_socket}:{target}", "--", th]


class ApiTunnel:
    """A background `ssh -N -L` to fleetd's API on the tunnel host; `endpoint` is local."""

    def __init__(self, opts: SSHOptions, remote_endpoint: str, timeout_s: float = 10.0) -> None:
        import subprocess
        import tempfile
        import time

        self._dir = tempfile.mkdtemp(prefix="fleetctl-tunnel-")
        sock = os.path.join(self._dir, "api.sock")
        remote = remote_endpoint
        for scheme in ("unix://", "unix:", "http://", "grpc://"):
            if remote.startswith(scheme):
                remote = remote[len(scheme):]
                break
        opts.ensure_known_hosts_dir()
        self.proc = subprocess.Popen(api_tunnel_argv(opts, sock, remote.rstrip("/")),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(sock):
            if self.proc.poll() is not None:
                err = (self.proc.stderr.read() if self.proc.stderr else "").strip()
                self.close()
                raise OSError(f"ssh tunnel to {opts.tunnel} failed: {err or 'ssh exited'}")
            if time.monotonic() > deadline:
                self.close()
                raise OSError(f"ssh tunnel to {opts.tunnel} not up after {timeout_s:.0f}s")
            time.sleep(0.02)
        self.endpoint = "unix://" + sock

    def close(self) -> None:
        import shutil

        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
