"""fleetd configuration: fleet's option names, from fleet.conf, FLEET_* environment and flags.

Precedence, highest first: command-line flags, `FLEET_<OPTION>` environment variables, the
config file (`--config`, default /etc/fleet/fleet.conf, INI lines `option=value`), defaults.
Every interval and timeout is defined here, with its unit in the name.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from fleetd import fencing

DEFAULT_CONFIG_FILE = "/etc/fleet/fleet.conf"
DEFAULT_API_SOCKET = "/var/run/fleet-py.sock"
DEFAULT_HTTP_SOCKET = "/var/run/fleet.sock"  # fleet's own: its HTTP API v1 for fleet clients


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the option and the source."""


@dataclass
class Config:
    etcd_servers: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    etcd_key_prefix: str = "/_coreos.com/fleet/"
    etcd_request_timeout: float = 3.0  # seconds
    etcd_cafile: str = ""
    etcd_certfile: str = ""
    etcd_keyfile: str = ""
    etcd_username: str = ""
    etcd_password: str = ""  # prefer etcd_password_file or FLEET_ETCD_PASSWORD: flags show in ps
    etcd_password_file: str = ""  # file holding the etcd password (trailing newline ignored)
    public_ip: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    # seconds; fleet's default was 30s. Failover after a power cut takes about this long; the
    # trade-off (etcd load, etcd outage tolerated) is in fleetd/fencing.py and the README.
    agent_ttl: float = 4.0
    engine_reconcile_interval: float = 2.0  # seconds (safety-net pass; events drive the rest)
    disable_engine: bool = False
    systemd_user: bool = False
    systemd_bus_address: str = ""  # override the D-Bus address of the systemd manager
    unit_dir: str = ""  # search-path dir fleet links its unit files into (default: runtime dir)
    machine_id: str = ""  # default: /etc/machine-id
    machine_id_file: str = "/etc/machine-id"
    api_socket: str = DEFAULT_API_SOCKET  # gRPC API unix socket
    api_tcp: str = ""  # gRPC API TCP address host:port (empty: none)
    # host:port other fleetds use to reach this one's gRPC API (unit status and journal are
    # forwarded there); default: api_tcp, with a wildcard host replaced by public_ip
    api_advertise: str = ""
    http_socket: str = DEFAULT_HTTP_SOCKET  # fleet's HTTP API v1 unix socket (empty: none)
    http_tcp: str = ""  # fleet's HTTP API v1 on TCP host:port (empty: none)
    # group owning the unix sockets api_socket and http_socket (mode 0660); empty: fleetd's own
    api_socket_group: str = ""
    # mutual TLS of the TCP listeners (api_tcp, http_tcp) and of forwarding to other fleetds:
    # the CA whose client certificates are accepted, and this fleetd's certificate and key
    api_tls_cafile: str = ""
    api_tls_certfile: str = ""
    api_tls_keyfile: str = ""
    # serve api_tcp/http_tcp in plain text without client authentication (logs a warning)
    api_tcp_insecure: bool = False
    token_limit: int = 100  # fleet's option: entities per page of the HTTP API v1
    metrics_listen: str = ""  # host:port serving Prometheus /metrics (empty: off)
    verbosity: int = 0
    # -- resources: this machine's capacity (empty: measured from the host), the part kept
    # for the host, and how the engine ranks machines (spread: least reserved share first;
    # binpack: most reserved share first) --
    capacity_cpu: int | None = None  # milli-CPUs; fleet.conf takes CPUs ("2", "1.5")
    capacity_memory: int | None = None  # bytes; fleet.conf takes a size ("4G", "512M")
    reserved_cpu: int = 0
    reserved_memory: int = 0
    engine_placement: str = "spread"
    # -- end resources --

    def agent_ttl_s(self) -> int:
        return round(self.agent_ttl)


def _duration_s(raw: str) -> float:
    """Seconds from '10', '10s', '500ms', '1m' (fleet wrote durations as Go strings)."""
    s = raw.strip().lower()
    value = None
    for suffix, mult in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if s.endswith(suffix) and s[: -len(suffix)].replace(".", "", 1).isdigit():
            value = float(s[: -len(suffix)]) * mult
            break
    if value is None:
        value = float(s)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"not a duration: {raw!r}")
    return value


def _bool(raw: str) -> bool:
    s = raw.strip().lower()
    if s in ("1", "true", "yes", "on"):
        return True
    if s in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {raw!r}")


def parse_metadata(raw: str) -> dict[str, str]:
    """fleet's metadata syntax: 'region=us-east,disk=ssd'."""
    out: dict[str, str] = {}
    for item in raw.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"metadata item {item!r} is not key=value")
        out[key] = value
    from fleetd.metadata import check_metadata

    check_metadata(out)  # limits shared with the APIs (fleetd/metadata.py)
    return out


# -- resources --
PLACEMENTS = ("spread", "binpack")


def _cpus(raw: str, auto: bool = False) -> int | None:
    """Milli-CPUs from a number of CPUs ('2', '1.5'); '' or 'auto' -> None when ``auto``."""
    from fleetd.unit.resources import parse_cpu

    value = raw.strip()
    if auto and value.lower() in ("", "auto"):
        return None
    if value.endswith("%"):
        raise ValueError(f"{value!r}: give a number of CPUs such as 2 or 1.5")
    return parse_cpu(value)


def _size(raw: str, auto: bool = False) -> int | None:
    """Bytes from a size ('4G', '512M'); '' or 'auto' -> None when ``auto``."""
    from fleetd.unit.resources import parse_memory

    value = raw.strip()
    if auto and value.lower() in ("", "auto"):
        return None
    if value.lower() == "infinity":
        raise ValueError(f"{value!r}: give a size such as 4G or 512M")
    return parse_memory(value)


def measured_capacity() -> tuple[int, int]:
    """(milli-CPUs, bytes) of this host: the CPUs this process may run on (a cgroup v2
    cpu.max quota lowers it) and MemTotal of /proc/meminfo (lowered by a cgroup memory.max)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    milli = cpus * 1000
    memory = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    memory = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        memory = 0
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max" and int(period) > 0:
            milli = min(milli, max(1, int(quota) * 1000 // int(period)))
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        if limit != "max" and memory:
            memory = min(memory, int(limit))
    except (OSError, ValueError):
        pass
    return milli, memory


def machine_capacity(cfg: Config) -> tuple[int, int, int, int]:
    """(cpu, memory, reserved_cpu, reserved_memory) this machine publishes: configured values
    over measured ones."""
    cpu, memory = (cfg.capacity_cpu, cfg.capacity_memory)
    if cpu is None or memory is None:
        measured_cpu, measured_memory = measured_capacity()
        cpu = measured_cpu if cpu is None else cpu
        memory = measured_memory if memory is None else memory
    return cpu, memory, cfg.reserved_cpu, cfg.reserved_memory
# -- end resources --


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "etcd_servers": lambda v: [s.strip() for s in v.split(",") if s.strip()],
    "etcd_request_timeout": _duration_s,
    "agent_ttl": _duration_s,
    "engine_reconcile_interval": _duration_s,
    "disable_engine": _bool,
    "systemd_user": _bool,
    "api_tcp_insecure": _bool,
    "metadata": parse_metadata,
    "verbosity": int,
    "token_limit": int,
    # -- resources --
    "capacity_cpu": lambda v: _cpus(v, auto=True),
    "capacity_memory": lambda v: _size(v, auto=True),
    "reserved_cpu": _cpus,
    "reserved_memory": _size,
    # -- end resources --
}
OPTION_NAMES = [f.name for f in fields(Config)]


def _set(cfg: Config, name: str, raw: str, source: str, sources: dict[str, str]) -> None:
    conv = _CONVERTERS.get(name, lambda v: v.strip())
    try:
        setattr(cfg, name, conv(raw))
    except ValueError as e:
        raise ConfigError(f"invalid value for {name} in {source}: {e}") from None
    sources[name] = source


#: Largest fleet.conf read (a real one is a few hundred bytes).
MAX_CONFIG_FILE_BYTES = 64 * 1024


def read_config_file(path: str) -> dict[str, str]:
    """Options from an INI-style fleet.conf (`name=value` lines, `#`/`;` comments)."""
    out = {}
    with open(path, "rb") as fb:
        raw = fb.read(MAX_CONFIG_FILE_BYTES + 1)
    if len(raw) > MAX_CONFIG_FILE_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        at = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{at}: not valid UTF-8 (byte offset {e.start})") from None
    for lineno, line in enumerate(text.split("\n"), 1):
        if any((c < " " and c != "\t") or c == "\x7f" for c in line.removesuffix("\r")):
            raise ConfigError(f"{path}:{lineno}: control character in line")
        line = line.strip()
        if not line or line[0] in "#;" or (line.startswith("[") and line.endswith("]")):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected option=value, got {line!r}")
        if name not in OPTION_NAMES:
            raise ConfigError(f"{path}:{lineno}: unknown option {name!r}")
        out[name] = value.strip().strip('"')
    return out


def load_config(argv: Sequence[str] | None = None,
                environ: Mapping[str, str] | None = None) -> tuple[Config, argparse.Namespace]:
    """Build the Config from flags, environment and config file; raise ConfigError if invalid.

    Without `argv` (a real process reading sys.argv), a password given as a flag is first
    moved out of the command line, where every user sees it in `ps` (see hide_password)."""
    if argv is None and environ is None:
        hide_password(sys.argv)
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(prog="fleetd", description="fleet-py daemon")
    parser.add_argument("--config", "-config", default=None, help="path to fleet.conf")
    parser.add_argument("--version", "-version", action="store_true", help="print version")
    parser.add_argument("--after-exit", action="store_true",
                        help="fleetd.service's ExecStopPost=: after a crash, hand the "
                        "machine over to the next fleetd (fleetd/after_exit.py)")
    for name in OPTION_NAMES:
        dashed = name.replace("_", "-")
        flags = [f"--{name}"] + ([f"--{dashed}"] if dashed != name else [])
        parser.add_argument(*flags, dest=name, default=None, metavar="VALUE")
    args = parser.parse_args(argv)
    cfg = Config()
    sources: dict[str, str] = {}
    path = args.config or env.get("FLEET_CONFIG")
    if path:
        try:
            file_opts = read_config_file(path)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    elif os.path.exists(DEFAULT_CONFIG_FILE):
        path = DEFAULT_CONFIG_FILE
        try:
            file_opts = read_config_file(path)
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    else:
        file_opts = {}
    for name, raw in file_opts.items():
        _set(cfg, name, raw, path or "config file", sources)
    for name in OPTION_NAMES:
        env_value = env.get("FLEET_" + name.upper())
        if env_value is not None:
            _set(cfg, name, env_value, "FLEET_" + name.upper(), sources)
    for name in OPTION_NAMES:
        raw = getattr(args, name)
        if raw is not None:
            _set(cfg, name, raw, "--" + name, sources)
    if cfg.etcd_password_file:
        if cfg.etcd_password:
            raise ConfigError(f"etcd_password (from {sources.get('etcd_password')}) and "
                              f"etcd_password_file (from {sources.get('etcd_password_file')}) "
                              "both given: use one")
        cfg.etcd_password = read_password_file(cfg.etcd_password_file)
        sources["etcd_password"] = cfg.etcd_password_file
    validate(cfg, sources)
    return cfg, args


PASSWORD_FLAGS = ("--etcd_password", "--etcd-password")


def read_password_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(64 * 1024).rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read etcd_password_file {path}: "
                          f"{getattr(e, 'strerror', None) or e}") from None


def hide_password(argv: Sequence[str]) -> None:
    """If `argv` (this process's sys.argv) carries --etcd_password, warn, and re-execute this
    same process (same PID, so systemd keeps tracking it) with the password moved to
    FLEET_ETCD_PASSWORD, which only root and the process's user can read (/proc/PID/environ),
    instead of its command line, which `ps` shows everyone. Returns when there is none."""
    args = list(argv[1:])
    kept: list[str] = []
    password = None
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if name in PASSWORD_FLAGS and eq:
            password = value
        elif a in PASSWORD_FLAGS and i + 1 < len(args):
            password = args[i + 1]
            i += 1
        else:
            kept.append(a)
        i += 1
    if password is None:
        return
    print("fleetd: warning: --etcd_password is visible to every user in ps; use "
          "etcd_password_file or FLEET_ETCD_PASSWORD (moving it to the environment now)",
          file=sys.stderr, flush=True)
    orig = list(getattr(sys, "orig_argv", []))
    interpreter = orig[:len(orig) - len(args)]
    if not interpreter or orig[len(orig) - len(args):] != args:
        return  # cannot rebuild the command line: keep going, warned
    os.execve(sys.executable, [*interpreter, *kept],
              {**os.environ, "FLEET_ETCD_PASSWORD": password})


def validate(cfg: Config, sources: Mapping[str, str] | None = None) -> None:
    """Refuse contradictory or out-of-range values, naming the option and where it came from."""
    src = sources or {}

    def bad(name: str, problem: str) -> ConfigError:
        return ConfigError(f"{name} {problem} (from {src.get(name, 'defaults')})")

    if not cfg.etcd_servers:
        raise bad("etcd_servers", "is empty")
    problem = fencing.ttl_problem(cfg.agent_ttl_s())
    if problem is not None:
        raise bad("agent_ttl", f"must be at least {fencing.min_ttl_s()}s, got "
                  f"{cfg.agent_ttl:g}s: it {problem}")
    if cfg.engine_reconcile_interval <= 0:
        raise bad("engine_reconcile_interval", "must be positive")
    if cfg.etcd_request_timeout <= 0:
        raise bad("etcd_request_timeout", "must be positive")
    if not 1 <= cfg.token_limit <= 65535:
        raise bad("token_limit", f"must be between 1 and 65535, got {cfg.token_limit}")
    # -- resources --
    if cfg.engine_placement not in PLACEMENTS:
        raise bad("engine_placement", f"must be one of {', '.join(PLACEMENTS)}, "
                  f"got {cfg.engine_placement!r}")
    for name in ("capacity_cpu", "capacity_memory"):
        if getattr(cfg, name) == 0:
            raise bad(name, "must be positive (leave it out to measure the host)")
    for name, total in (("reserved_cpu", cfg.capacity_cpu),
                        ("reserved_memory", cfg.capacity_memory)):
        if total is not None and getattr(cfg, name) >= total:
            raise bad(name, f"must be less than {name.replace('reserved', 'capacity')}")
    # -- end resources --
    _validate_tls(cfg, bad)


def _validate_tls(cfg: Config, bad: Callable[[str, str], ConfigError]) -> None:
    """TCP listeners need mutual TLS unless api_tcp_insecure says otherwise; TLS file options
    come as complete sets."""
    api_tls = (cfg.api_tls_cafile, cfg.api_tls_certfile, cfg.api_tls_keyfile)
    if any(api_tls) and not all(api_tls):
        raise bad("api_tls_cafile" if not cfg.api_tls_cafile else
                  "api_tls_certfile" if not cfg.api_tls_certfile else "api_tls_keyfile",
                  "is missing: api_tls_cafile, api_tls_certfile and api_tls_keyfile go together")
    tcp = [n for n in ("api_tcp", "http_tcp") if getattr(cfg, n)]
    if tcp and not all(api_tls) and not cfg.api_tcp_insecure:
        raise bad(tcp[0], "needs mutual TLS: set api_tls_cafile, api_tls_certfile and "
                  "api_tls_keyfile, or api_tcp_insecure=true to serve it without "
                  "authentication")
    if bool(cfg.etcd_certfile) != bool(cfg.etcd_keyfile):
        raise bad("etcd_certfile" if not cfg.etcd_certfile else "etcd_keyfile",
                  "is missing: etcd_certfile and etcd_keyfile go together")
    if cfg.etcd_password and not cfg.etcd_username:
        raise bad("etcd_username", "is missing: etcd_password needs it")


def api_advertise_address(cfg: Config, public_ip: str) -> str:
    """Where other machines reach this fleetd's gRPC API ("" when it listens on no TCP port)."""
    if cfg.api_advertise:
        return cfg.api_advertise.strip()
    if not cfg.api_tcp:
        return ""
    host, _, port = cfg.api_tcp.strip().rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::") and public_ip:
        host = f"[{public_ip}]" if ":" in public_ip else public_ip
    return f"{host}:{port}"


def read_machine_id(cfg: Config) -> str:
    if cfg.machine_id:
        return cfg.machine_id.strip()
    try:
        with open(cfg.machine_id_file, encoding="ascii") as f:
            mid = f.read().strip()
    except OSError as e:
        raise ConfigError(f"cannot read machine id from {cfg.machine_id_file}: {e.strerror}") \
            from None
    if not mid:
        raise ConfigError(f"{cfg.machine_id_file} is empty")
    return mid
