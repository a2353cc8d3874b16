"""A multi-machine fleet-py lab on one host: etcd on a bridge, machines as systemd-nspawn
containers booted with systemd as PID 1, fleetd inside each as a system service.

Layout on the host (all of it removed by `Lab.down()`):
  /var/lib/fleet-lab/state.json          the lab's state (every subcommand reads it afresh)
  /var/lib/fleet-lab/etcd/, etcd.log     the host etcd, listening on the bridge address
  /var/lib/fleet-lab/machines/mN/etc/    the container's /etc overlay upper directory: its
                                         machine-id, hostname, network unit, masked host
                                         services, fleetd.service and /etc/fleet/fleet.conf
                                         (written by packaging/provision-fleetd.sh --root)
  /var/lib/fleet-lab/shared/             bind-mounted read-write at /run/fleet-lab-shared in
                                         every machine (the soak's locks and samples)
  bridge flab0 (10.77.0.1/24); machine mN is 10.77.0.(10+N) on the container side of veth
  vb-mN; nft table `bridge fleet_lab` drops the traffic of partitioned machines' ports;
  cgroups fleet-lab-mN (one per container, in the name=systemd and cgroup2 hierarchies).

The containers run on the host's /usr (--volatile=yes: a tmpfs root with the host /usr and
an overlay over the host /etc), with the project, its virtualenv and the Python installation
bind-mounted read-only at their host paths, so there is nothing to download or build.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fleetd.certificates import CertificateAuthority, IssuedCertificate

STATE_DIR = pathlib.Path(os.environ.get("FLEET_LAB_DIR", "/var/lib/fleet-lab"))
BRIDGE = "flab0"
BRIDGE_MAC = "02:77:00:00:00:01"  # locally administered
SUBNET = "10.77.0"
PREFIX_LEN = 24
HOST_IP = f"{SUBNET}.1"
ETCD_PORT = 2379
ETCD_PEER_PORT = 2380
API_PORT = 9810
SHARED_IN_MACHINE = "/run/fleet-lab-shared"  # the host's STATE_DIR/shared, in every machine
HTTP_PORT = 49153  # fleet's HTTP API v1, for unmodified fleet clients
NFT_TABLE = "fleet_lab"
CGROUP_PREFIX = "fleet-lab-"
CG2_MOUNT = pathlib.Path("/run/fleet-lab/cgroup2")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
PROVISION_SCRIPT = REPO_ROOT / "packaging" / "provision-fleetd.sh"
# Services and timers a host typically enables that must not start in every container.
ALWAYS_MASKED = [
    "etcd.service", "etcd2.service", "postgresql.service", "postgresql@.service",
    "console-getty.service", "getty@.service", "systemd-timesyncd.service",
    "apt-daily.timer", "apt-daily-upgrade.timer", "dpkg-db-backup.timer", "e2scrub_all.timer",
    "e2scrub_reap.service", "fstrim.timer", "man-db.timer", "logrotate.timer",
    "systemd-networkd-wait-online.service", "ssh.service", "cron.service",
    "docker.service", "containerd.service", "systemd-pstore.service",
]
KEEP_ENABLED = {"dbus.service", "dbus-broker.service", "systemd-journald.service"}


class LabError(RuntimeError):
    """A user-facing failure of a fleet-lab command."""


@dataclass
class MachineState:
    name: str
    machine_id: str
    ip: str
    metadata: dict[str, str] = field(default_factory=dict)
    nspawn_pid: int = 0
    nspawn_start: int = 0  # /proc/PID/stat start time: guards against recycled PIDs
    partitioned: bool = False

    @property
    def veth(self) -> str:
        return f"vb-{self.name}"

    @property
    def endpoint(self) -> str:
        return f"{self.ip}:{API_PORT}"


@dataclass
class LabState:
    machines: dict[str, MachineState] = field(default_factory=dict)
    etcd_pid: int = 0
    complete: bool = False

    def to_json(self) -> str:
        return json.dumps({"machines": [asdict(m) for m in self.machines.values()],
                           "etcd_pid": self.etcd_pid, "complete": self.complete}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabState:
        raw = json.loads(text)
        machines = {m["name"]: MachineState(**m) for m in raw.get("machines", [])}
        return cls(machines, int(raw.get("etcd_pid", 0)), bool(raw.get("complete", False)))


# ---------------------------------------------------------------------------------------------
# small process helpers

def run(*cmd: str, check: bool = True, input_text: str | None = None
        ) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(list(cmd), capture_output=True, text=True, input=input_text)
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def proc_start_time(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return 0


def proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def children_map() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for pid in all_pids():
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(pid)
    return out


def is_zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (OSError, IndexError):
        return True


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def wait_gone(pids: list[int], timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while any(not is_zombie_or_gone(p) for p in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def container_pid1(nspawn_pid: int) -> int:
    """The container's PID 1 (systemd): the descendant of nspawn whose innermost PID is 1."""
    kids = children_map()
    todo = list(kids.get(nspawn_pid, []))
    while todo:
        pid = todo.pop(0)
        try:
            with open(f"/proc/{pid}/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("NSpid:") and line.split()[-1] == "1" \
                            and len(line.split()) > 2:
                        return pid
        except OSError:
            continue
        todo.extend(kids.get(pid, []))
    return 0


# ---------------------------------------------------------------------------------------------
# cgroups: nspawn puts its payload under the cgroup it runs in, as read from both the
# name=systemd (v1) and the unified (v2) hierarchies; give each container its own.

def _mounts() -> list[tuple[str, str, str]]:
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return [(p[1], p[2], p[3]) for p in (ln.split() for ln in f) if len(p) >= 4]


def cgroup_roots(mount_v2: bool) -> list[pathlib.Path]:
    """Hierarchy roots to place a container's nspawn process in: the name=systemd hierarchy
    (cgroup v1 hosts) and the unified one; on a v1 host the lab mounts cgroup2 itself."""
    roots: list[pathlib.Path] = []
    v2 = None
    for target, fstype, opts in _mounts():
        if fstype == "cgroup2" and target in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified",
                                              str(CG2_MOUNT)):
            v2 = pathlib.Path(target)
        if fstype == "cgroup" and "name=systemd" in opts.split(","):
            roots.append(pathlib.Path(target))
    if v2 is None and mount_v2:
        CG2_MOUNT.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "cgroup2", "none", str(CG2_MOUNT))
        v2 = CG2_MOUNT
    if v2 is not None:
        roots.append(v2)
    return roots


def remove_cgroup_tree(path: pathlib.Path) -> None:
    """Kill whatever is left in a cgroup tree, then remove it depth-first."""
    if not path.is_dir():
        return
    for _ in range(50):
        pids = []
        for procs in path.rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids += [int(p) for p in procs.read_text().split()]
        for p in pids:
            kill(p)
        dirs = sorted((d for d in path.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
        for d in [*dirs, path]:
            with contextlib.suppress(OSError):
                d.rmdir()
        if not path.exists():
            return
        time.sleep(0.05)


NSPAWN_RUN = pathlib.Path("/run/systemd/nspawn")


def remove_machine_leftovers(name: str) -> None:
    """What a killed container leaves on the host: its veth (the kernel destroys a dead
    network namespace, and with it the veth pair, asynchronously) and nspawn's propagation
    directory, which a new container of the same name would trip over."""
    if os.path.exists(f"/sys/class/net/vb-{name}"):
        run("ip", "link", "delete", f"vb-{name}", check=False)
    shutil.rmtree(NSPAWN_RUN / "propagate" / name, ignore_errors=True)


def remove_nspawn_run_dirs() -> None:
    """nspawn's runtime directories, once empty (nspawn leaves them behind)."""
    for d in (NSPAWN_RUN / "propagate", NSPAWN_RUN, pathlib.Path("/run/systemd/nspawn-root")):
        with contextlib.suppress(OSError):
            if not os.path.ismount(d):
                d.rmdir()


# ---------------------------------------------------------------------------------------------

class Lab:
    """The lab's state on disk plus the operations of `fleet-lab`."""

    def __init__(self, state_dir: pathlib.Path = STATE_DIR) -> None:
        self.dir = state_dir
        self.state_file = self.dir / "state.json"

    # -- state ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / "lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield

    def load(self) -> LabState:
        try:
            return LabState.from_json(self.state_file.read_text())
        except FileNotFoundError:
            raise LabError("no lab is up (run `fleet-lab up`)") from None

    def save(self, state: LabState) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(state.to_json())
        tmp.replace(self.state_file)

    def machine(self, state: LabState, name: str) -> MachineState:
        try:
            return state.machines[name]
        except KeyError:
            raise LabError(f"no machine {name!r} in the lab (machines: "
                           f"{', '.join(state.machines) or 'none'})") from None

    # -- status --------------------------------------------------------------------------------
    def nspawn_alive(self, m: MachineState) -> bool:
        return bool(m.nspawn_pid) and not is_zombie_or_gone(m.nspawn_pid) \
            and proc_start_time(m.nspawn_pid) == m.nspawn_start

    def machine_state(self, m: MachineState) -> str:
        if not self.nspawn_alive(m) or not container_pid1(m.nspawn_pid):
            return "stopped"
        return "partitioned" if m.partitioned else "running"

    def machines(self) -> list[dict[str, str]]:
        state = self.load()
        return [{"name": m.name, "machine_id": m.machine_id, "ip": m.ip,
                 "state": self.machine_state(m)} for m in state.machines.values()]

    def endpoint(self, state: LabState | None = None) -> str:
        state = state or self.load()
        for m in state.machines.values():
            if self.machine_state(m) == "running":
                return m.endpoint
        raise LabError("no machine of the lab is running")

    def env(self) -> dict[str, str]:
        state = self.load()
        first = min(state.machines.values(), key=lambda m: m.name)
        client = self.client_tls()
        return {"FLEETCTL_ENDPOINT": self.endpoint(state),
                "FLEETCTL_CA_FILE": client.ca_file,
                "FLEETCTL_CERT_FILE": client.cert_file,
                "FLEETCTL_KEY_FILE": client.key_file,
                "FLEET_HTTP_ENDPOINT": f"https://{first.ip}:{HTTP_PORT}",
                "ETCDCTL_API": "3",
                "ETCDCTL_ENDPOINTS": f"http://{HOST_IP}:{ETCD_PORT}"}

    # -- mutual TLS: the lab's CA, each machine's certificate, the host's client certificate --
    def ca(self) -> CertificateAuthority:
        return CertificateAuthority.load_or_create(self.dir / "pki")

    def client_tls(self) -> IssuedCertificate:
        """The certificate fleetctl on the host presents (issued once, in the lab's pki/)."""
        pki = self.dir / "pki"
        if not (pki / "fleetctl.pem").exists():
            return self.ca().issue("fleetctl")
        return IssuedCertificate(str(pki / "ca.pem"), str(pki / "fleetctl.pem"),
                                 str(pki / "fleetctl-key.pem"))

    # -- up ------------------------------------------------------------------------------------
    def up(self, machines: int, metadata: Mapping[str, Mapping[str, str]],
           timeout_s: float = 90, log: Any = None) -> float:
        """Boot etcd and `machines` containers; return the boot time in seconds."""
        say = log or (lambda s: None)
        for tool in ("systemd-nspawn", "etcd", "etcdctl", "nft", "ip", "nsenter"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} not found (./scripts/setup installs it)")
        if os.geteuid() != 0:
            raise LabError("must run as root")
        if not PROVISION_SCRIPT.exists():
            raise LabError(f"{PROVISION_SCRIPT} not found")
        with self.locked():
            if self.state_file.exists():
                old = self.load()
                if old.complete and any(self.nspawn_alive(m) for m in old.machines.values()):
                    raise LabError("a lab is already up (run `fleet-lab down` first)")
            self._teardown(keep_lock=True)  # leftovers of an interrupted `up`
            t0 = time.monotonic()
            self.dir.mkdir(parents=True, exist_ok=True)
            state = LabState()
            for i in range(1, machines + 1):
                name = f"m{i}"
                state.machines[name] = MachineState(name, uuid.uuid4().hex, f"{SUBNET}.{10 + i}",
                                                    dict(metadata.get(name, {})))
            self.save(state)
            self._network_up()
            cgroup_roots(mount_v2=True)
            state.etcd_pid = self._start_etcd()
            self.save(state)
            say(f"etcd listening on http://{HOST_IP}:{ETCD_PORT}")
            for m in state.machines.values():
                self._prepare_machine(m)
                self._spawn(m)
                self.save(state)
            self._wait_registered(state, list(state.machines.values()), timeout_s)
            state.complete = True
            self.save(state)
            return time.monotonic() - t0

    def _network_up(self) -> None:
        # A fixed MAC: a bridge without one takes its lowest port's, so a machine's power cut
        # (its veth vanishing) changed the host's MAC under every other machine, whose ARP
        # entries then blackholed their etcd connections for tens of seconds (survivors lost
        # their leases and Watch streams with "recvmsg: Connection timed out").
        run("ip", "link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
        run("ip", "addr", "add", f"{HOST_IP}/{PREFIX_LEN}", "dev", BRIDGE)
        run("ip", "link", "set", BRIDGE, "up")
        run("nft", "-f", "-", input_text=f"""
table bridge {NFT_TABLE} {{
  set cut {{ type ifname; }}
  chain forward {{ type filter hook forward priority 0; policy accept;
    iifname @cut drop; oifname @cut drop; }}
  chain input {{ type filter hook input priority 0; policy accept; iifname @cut drop; }}
  chain output {{ type filter hook output priority 0; policy accept; oifname @cut drop; }}
}}
""")

    def _start_etcd(self) -> int:
        data = self.dir / "etcd"
        client = f"http://{HOST_IP}:{ETCD_PORT}"
        peer = f"http://{HOST_IP}:{ETCD_PEER_PORT}"
        logf = open(self.dir / "etcd.log", "ab")
        proc = subprocess.Popen(
            ["etcd", "--name", "fleet-lab", "--data-dir", str(data),
             "--listen-client-urls", client, "--advertise-client-urls", client,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"fleet-lab={peer}", "--initial-cluster-state", "new"],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                raise LabError(f"etcd exited with {proc.returncode}: "
                               + self._tail(self.dir / "etcd.log"))
            try:
                with socket.create_connection((HOST_IP, ETCD_PORT), 0.2):
                    pass
                r = subprocess.run(["etcdctl", "--endpoints", client, "endpoint", "health"],
                                   capture_output=True, env={**os.environ, "ETCDCTL_API": "3"},
                                   timeout=5)
                if r.returncode == 0:
                    return proc.pid
            except (OSError, subprocess.TimeoutExpired):
                pass
            if time.monotonic() > deadline:
                raise LabError("etcd did not become healthy in 20 s: "
                               + self._tail(self.dir / "etcd.log"))
            time.sleep(0.05)

    @staticmethod
    def _tail(path: pathlib.Path, lines: int = 5) -> str:
        try:
            return " | ".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {path})"

    def _upper(self, m: MachineState) -> pathlib.Path:
        return self.dir / "machines" / m.name / "etc"

    def _prepare_machine(self, m: MachineState) -> None:
        """Write the container's /etc overlay: identity, network, masks, and fleetd via the
        shared provisioning script."""
        upper = self._upper(m)
        unit_dir = upper / "systemd" / "system"
        (unit_dir / "multi-user.target.wants").mkdir(parents=True, exist_ok=True)
        (upper / "machine-id").write_text(m.machine_id + "\n")
        (upper / "hostname").write_text(m.name + "\n")
        (upper / "hosts").write_text(
            f"127.0.0.1\tlocalhost\n{m.ip}\t{m.name}\n"
            + "".join(f"{o.ip}\t{o.name}\n" for o in self._all_static(m)))
        masked = set(ALWAYS_MASKED)
        for wants in pathlib.Path("/etc/systemd/system").glob("*.wants"):
            for entry in wants.iterdir():
                if entry.name not in KEEP_ENABLED and not entry.name.endswith(".target"):
                    masked.add(entry.name)
        for name in sorted(masked):
            link = unit_dir / name
            if not link.is_symlink():
                link.symlink_to("/dev/null")
        ip = shutil.which("ip") or "/usr/sbin/ip"
        (unit_dir / "fleet-lab-net.service").write_text(f"""[Unit]
Description=fleet-lab network: {m.ip}/{PREFIX_LEN} on host0, default route via the lab bridge
DefaultDependencies=no
After=systemd-udevd.service
Before=network.target network-online.target
Wants=network.target network-online.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart={ip} link set host0 up
ExecStart={ip} addr replace {m.ip}/{PREFIX_LEN} dev host0
ExecStart={ip} route replace default via {HOST_IP}

[Install]
WantedBy=multi-user.target
""")
        link = unit_dir / "multi-user.target.wants" / "fleet-lab-net.service"
        if not link.is_symlink():
            link.symlink_to("../fleet-lab-net.service")
        # /etc/fleet/tls in the machine: provision-fleetd.sh configures mutual TLS from it
        self.ca().issue("fleetd", ips=[m.ip], dns=[m.name], directory=upper / "fleet" / "tls")
        self.client_tls()  # now, as root: `fleet-lab env` may run as anyone
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("FLEET_") and k != "FLEETD_EXEC"}
        args = [str(PROVISION_SCRIPT), "--root", str(upper.parent), "--no-start",
                "--fleetd", fleetd_command(),
                "--etcd-servers", f"http://{HOST_IP}:{ETCD_PORT}",
                "--public-ip", m.ip, "--api-tcp", m.endpoint,
                "--http-tcp", f"{m.ip}:{HTTP_PORT}"]
        if m.metadata:
            args += ["--metadata", ",".join(f"{k}={v}" for k, v in m.metadata.items())]
        ttl = os.environ.get("FLEET_LAB_AGENT_TTL")
        if ttl:
            args += ["--agent-ttl", ttl]
        r = subprocess.run(args, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            raise LabError(f"provisioning {m.name} failed: {r.stderr.strip()}")

    def _all_static(self, m: MachineState) -> list[MachineState]:
        try:
            return [o for o in self.load().machines.values() if o.name != m.name]
        except LabError:
            return []

    def _spawn(self, m: MachineState) -> None:
        roots = cgroup_roots(mount_v2=True)
        cgroups = [r / f"{CGROUP_PREFIX}{m.name}" for r in roots]
        for cg in cgroups:
            remove_cgroup_tree(cg)
            cg.mkdir(parents=True, exist_ok=True)
        remove_machine_leftovers(m.name)

        def enter_cgroups() -> None:
            for cg in cgroups:
                with open(cg / "cgroup.procs", "w") as f:
                    f.write(str(os.getpid()))

        cmd = ["systemd-nspawn", "-D", "/", "--volatile=yes",
               f"--overlay=/etc:{self._upper(m)}:/etc", "-M", m.name,
               f"--uuid={uuid.UUID(m.machine_id)}", "--boot", "--register=no", "--keep-unit",
               f"--network-bridge={BRIDGE}", "--console=read-only", "--link-journal=no"]
        cmd += [f"--bind-ro={p}" for p in bind_paths()]
        # One host directory every machine sees (same kernel, so flock(2) locks on its files
        # are shared): the soak's units lock there to prove they never run twice at once.
        shared = self.dir / "shared"
        shared.mkdir(exist_ok=True)
        cmd.append(f"--bind={shared}:{SHARED_IN_MACHINE}")
        logf = open(self.dir / "machines" / m.name / "console.log", "ab")
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True, preexec_fn=enter_cgroups)
        m.nspawn_pid = proc.pid
        m.nspawn_start = proc_start_time(proc.pid)
        m.partitioned = False

    def _wait_registered(self, state: LabState, machines: list[MachineState],
                         timeout_s: float) -> None:
        from fleetctl.client import Client, FleetctlError, TlsFiles

        want = {m.machine_id for m in machines}
        deadline = time.monotonic() + timeout_s
        seen: set[str] = set()
        while True:
            for m in machines:
                if not self.nspawn_alive(m):
                    raise LabError(f"machine {m.name} exited while booting: "
                                   + self._tail(self.dir / "machines" / m.name / "console.log"))
            for m in state.machines.values():
                if not self.nspawn_alive(m) or m.partitioned:
                    continue
                tls = self.client_tls()
                client = Client(m.endpoint, timeout_s=2,
                                tls=TlsFiles(tls.ca_file, tls.cert_file, tls.key_file))
                try:
                    seen = {x.id for x in client.call("ListMachines").machines}
                    break
                except FleetctlError:
                    continue
                finally:
                    client.close()
            if want <= seen:
                return
            if time.monotonic() > deadline:
                missing = sorted(m.name for m in machines if m.machine_id not in seen)
                hint = ""
                if missing:
                    r = self.exec_capture(missing[0], "journalctl", "-u", "fleetd", "-n", "5",
                                          "--no-pager", "-q")
                    hint = f"; fleetd log of {missing[0]}: {r.stdout.strip()}"
                raise LabError(f"machines {', '.join(missing)} did not show in fleetctl "
                               f"list-machines within {timeout_s:.0f}s{hint}")
            time.sleep(0.1)

    # -- machine operations --------------------------------------------------------------------
    def exec_argv(self, name: str, cmd: list[str]) -> tuple[list[str], dict[str, str]]:
        state = self.load()
        m = self.machine(state, name)
        pid1 = container_pid1(m.nspawn_pid) if self.nspawn_alive(m) else 0
        if not pid1:
            raise LabError(f"machine {name} is not running")
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "HOME": "/root", "LANG": os.environ.get("LANG", "C.UTF-8"),
               "TERM": os.environ.get("TERM", "dumb")}
        argv = ["nsenter", "-t", str(pid1), "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
                *cmd]
        return argv, env

    def exec_capture(self, name: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        argv, env = self.exec_argv(name, list(cmd))
        return subprocess.run(argv, env=env, capture_output=True, text=True)

    def stop(self, name: str) -> None:
        """A power cut: SIGKILL the container's PID 1 (the kernel then kills every process of
        its PID namespace at once) and nspawn; nothing shuts down cleanly."""
        with self.locked():
            state = self.load()
            m = self.machine(state, name)
            self._kill_machine(m)
            self._set_cut(m, False)
            m.nspawn_pid = m.nspawn_start = 0
            m.partitioned = False
            self.save(state)

    def _kill_container(self, m: MachineState) -> list[int]:
        """SIGKILL the container's PID 1 and its nspawn, if alive; the pids killed."""
        pids = []
        if self.nspawn_alive(m):
            pid1 = container_pid1(m.nspawn_pid)
            if pid1:
                kill(pid1)
                pids.append(pid1)
            kill(m.nspawn_pid)
            pids.append(m.nspawn_pid)
        return pids

    def _kill_machine(self, m: MachineState) -> None:
        pids = self._kill_container(m)
        for pid in find_processes(self.dir, m.name):
            kill(pid)
            pids.append(pid)
        wait_gone(pids)
        for root in cgroup_roots(mount_v2=False):
            remove_cgroup_tree(root / f"{CGROUP_PREFIX}{m.name}")
        remove_machine_leftovers(m.name)

    def start(self, name: str, timeout_s: float = 60) -> float:
        with self.locked():
            state = self.load()
            m = self.machine(state, name)
            if self.nspawn_alive(m):
                raise LabError(f"machine {name} is already running")
            t0 = time.monotonic()
            self._kill_machine(m)  # leftovers, if any
            self._set_cut(m, False)
            self._spawn(m)
            self.save(state)
            self._wait_registered(state, [m], timeout_s)
            return time.monotonic() - t0

    def _set_cut(self, m: MachineState, cut: bool) -> None:
        verb = "add" if cut else "delete"
        r = run("nft", verb, "element", "bridge", NFT_TABLE, "cut", f'{{ "{m.veth}" }}',
                check=False)
        if cut and r.returncode != 0:
            raise LabError(f"nft: {r.stderr.strip()}")

    def partition(self, name: str) -> None:
        with self.locked():
            state = self.load()
            m = self.machine(state, name)
            if not self.nspawn_alive(m):
                raise LabError(f"machine {name} is not running")
            if not m.partitioned:
                self._set_cut(m, True)
            m.partitioned = True
            self.save(state)

    def heal(self, name: str) -> None:
        with self.locked():
            state = self.load()
            m = self.machine(state, name)
            self._set_cut(m, False)
            m.partitioned = False
            # Forget the neighbour entries that failed during the cut, on both sides, so
            # traffic flows again at once rather than after the kernel's ARP back-off.
            run("ip", "neigh", "flush", "dev", BRIDGE, "to", m.ip, check=False)
            pid1 = container_pid1(m.nspawn_pid) if self.nspawn_alive(m) else 0
            if pid1:
                run("nsenter", "-t", str(pid1), "-n", "--", "ip", "neigh", "flush", "dev",
                    "host0", check=False)
            self.save(state)

    # -- down ----------------------------------------------------------------------------------
    def down(self) -> None:
        self._teardown(keep_lock=False)

    def _teardown(self, keep_lock: bool) -> None:
        """Remove everything a lab (complete or interrupted) made; idempotent."""
        try:
            state: LabState | None = LabState.from_json(self.state_file.read_text())
        except (OSError, ValueError):
            state = None
        pids: list[int] = []
        if state is not None:
            for m in state.machines.values():
                pids += self._kill_container(m)
        for pid in find_processes(self.dir, None):
            pid1 = container_pid1(pid)
            for p in (pid1, pid):
                if p:
                    kill(p)
                    pids.append(p)
        wait_gone(pids)
        names = set(state.machines) if state is not None else set()
        names |= {p.name for p in (NSPAWN_RUN / "propagate").glob("m[0-9]*")}
        if os.path.isdir(f"/sys/class/net/{BRIDGE}/brif"):
            names |= {i.removeprefix("vb-") for i in os.listdir(f"/sys/class/net/{BRIDGE}/brif")
                      if i.startswith("vb-")}
        names |= {i.removeprefix("vb-") for i in os.listdir("/sys/class/net")
                  if i.startswith("vb-m") and i[4:].isdigit()}
        for name in sorted(names):
            remove_machine_leftovers(name)
        remove_nspawn_run_dirs()
        run("nft", "delete", "table", "bridge", NFT_TABLE, check=False)
        if os.path.exists(f"/sys/class/net/{BRIDGE}"):
            run("ip", "link", "delete", BRIDGE, check=False)
        for root in cgroup_roots(mount_v2=True):
            for cg in root.glob(f"{CGROUP_PREFIX}*"):
                remove_cgroup_tree(cg)
        for target, _, _ in _mounts():
            if target == str(CG2_MOUNT):
                run("umount", str(CG2_MOUNT), check=False)
        with contextlib.suppress(OSError):
            CG2_MOUNT.rmdir()
            CG2_MOUNT.parent.rmdir()
        if self.dir.exists():
            for entry in self.dir.iterdir():
                if keep_lock and entry.name == "lock":
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
            if not keep_lock:
                with contextlib.suppress(OSError):
                    self.dir.rmdir()


def find_processes(state_dir: pathlib.Path, machine: str | None) -> list[int]:
    """nspawn processes (of `machine`, or all) and etcd of the lab in `state_dir`, found by
    their command lines, so that an interrupted `up` is cleaned up too."""
    out = []
    needle_overlay = f"--overlay=/etc:{state_dir}/machines/"
    if machine is not None:
        needle_overlay += f"{machine}/"
    for pid in all_pids():
        if pid == os.getpid():
            continue
        argv = proc_cmdline(pid)
        if not argv:
            continue
        prog = os.path.basename(argv[0])
        nspawn = prog == "systemd-nspawn" and any(a.startswith(needle_overlay) for a in argv)
        etcd = machine is None and prog == "etcd" and str(state_dir / "etcd") in argv
        if nspawn or etcd:
            out.append(pid)
    return out


def bind_paths() -> list[str]:
    """Host paths the containers need read-only at the same place: the project, its
    virtualenv and the Python installation the virtualenv points at (unless under /usr)."""
    paths: list[str] = []
    for p in (REPO_ROOT, pathlib.Path(sys.prefix).resolve(),
              pathlib.Path(sys.base_prefix).resolve(),
              pathlib.Path(os.path.realpath(sys.executable)).parent.parent):
        s = str(p)
        if s in ("/", "/usr") or s.startswith("/usr/"):
            continue
        if any(s == q or s.startswith(q + "/") for q in paths):
            continue
        paths = [q for q in paths if not q.startswith(s + "/")]
        paths.append(s)
    # Also the path the venv was created at, if it differs from its resolved location.
    if sys.prefix != str(pathlib.Path(sys.prefix).resolve()):
        paths.append(f"{pathlib.Path(sys.prefix).resolve()}:{sys.prefix}")
    return paths


def fleetd_command() -> str:
    exe = pathlib.Path(sys.prefix) / "bin" / "fleetd"
    if exe.exists():
        return str(exe)
    return f"{sys.executable} -m fleetd.main"


def parse_metadata_flag(raw: str) -> tuple[str, dict[str, str]]:
    """`m2:region=us-east,disk=ssd` -> ("m2", {...})."""
    from fleetd.config import parse_metadata

    name, sep, rest = raw.partition(":")
    if not sep or not name:
        raise LabError(f"--metadata {raw!r}: expected NAME:k=v[,k=v...]")
    try:
        md = parse_metadata(rest)
    except ValueError as e:
        raise LabError(f"--metadata {raw!r}: {e}") from None
    if not md:
        raise LabError(f"--metadata {raw!r}: no k=v given")
    return name, md
