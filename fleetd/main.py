"""fleetd: the per-host daemon (agent + engine candidate + API server)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from fleetd import __version__
from fleetd.config import (
    OPTION_NAMES,
    Config,
    ConfigError,
    api_advertise_address,
    load_config,
    machine_capacity,
    read_machine_id,
)
from fleetd.fencing import keep_units_on_exit

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence

    from fleetd.api.tls import ApiTls
    from fleetd.machine import MachineSession
    from fleetd.registry import EtcdClient
    from fleetd.systemd import SystemdManager

log = logging.getLogger("fleetd")

#: Without systemd (a harness, a manual run): this signal means "exit keeping the units
#: running" (an upgrade); SIGTERM/SIGINT mean stop: units stopped, unloaded, machine gone.
#: Under systemd, a pending restart job for fleetd's unit means the same as this signal.
RESTART_SIGNAL = signal.SIGUSR2
#: What a purge's stop time is extended by, past its waits for units (`Agent.purge_bound_s`):
#: the daemon-reload, the lease's revoke and the servers' shutdown.
PURGE_MARGIN_S = 30.0


class ComponentFailed(Exception):
    """A fleetd component ended: fleetd exits non-zero (Restart=on-failure restarts it)."""


class JournalFormatter(logging.Formatter):
    """One line per record; with a `<N>` syslog priority prefix when stderr goes to journald."""

    _PRIO = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}

    def __init__(self, journald: bool) -> None:
        super().__init__("%(name)s: %(message)s" if journald
                         else "%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.journald = journald

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record).replace("\n", " | ")
        if self.journald:
            return f"<{self._PRIO.get(record.levelno, 6)}>{line}"
        return line


def setup_logging(verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JournalFormatter("JOURNAL_STREAM" in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_verbosity(verbosity)


def set_verbosity(verbosity: int) -> None:
    logging.getLogger().setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)


#: Options a SIGHUP applies to the running fleetd; a change to any other needs a restart.
RELOADABLE = ("metadata", "verbosity")


async def reconfigure(current: Config, argv: Sequence[str],
                      session: MachineSession) -> Config:
    """SIGHUP (fleet's reconfigure): re-read fleet.conf, the FLEET_* environment and ``argv``;
    apply the RELOADABLE options, log the other changes as needing a restart, and return the
    configuration now in force. An invalid configuration changes nothing (fleet exited)."""
    try:
        new, _ = load_config(argv)
    except ConfigError as e:
        log.error("SIGHUP: configuration not reloaded, keeping the running one: %s", e)
        return current
    if new.verbosity != current.verbosity:
        set_verbosity(new.verbosity)
    if new.metadata != current.metadata:
        await session.update_metadata(dict(new.metadata))
    applied = [n for n in RELOADABLE if getattr(new, n) != getattr(current, n)]
    pending = [n for n in OPTION_NAMES
               if n not in RELOADABLE and getattr(new, n) != getattr(current, n)]
    log.info("SIGHUP: configuration reloaded; applied: %s", ", ".join(applied) or "no change")
    if pending:
        log.warning("SIGHUP: changed options that take effect only after a restart of "
                    "fleetd: %s", ", ".join(pending))
    kept = {n: getattr(current, n) for n in OPTION_NAMES if n not in RELOADABLE}
    return Config(**kept, **{n: getattr(new, n) for n in RELOADABLE})


def sd_notify(state: str) -> bool:
    """Send `state` to systemd's notify socket (Type=notify); False when not under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.connect(addr)
        s.sendall(state.encode())
    return True


def detect_public_ip(etcd_servers: list[str]) -> str:
    """The local address used to reach etcd (no packet is sent: UDP connect only routes)."""
    u = urlparse(etcd_servers[0] if "://" in etcd_servers[0] else "http://" + etcd_servers[0])
    host = u.hostname or "127.0.0.1"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((host, u.port or 2379))
            return str(s.getsockname()[0])
    except OSError:
        return ""


def api_tls(cfg: Config) -> ApiTls | None:
    """The API's TLS material, or None (and a warning when TCP is served in plain text)."""
    from fleetd.api.tls import ApiTls, TlsError, resolve_group

    if cfg.api_socket_group:
        try:
            resolve_group(cfg.api_socket_group)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    if not (cfg.api_tls_cafile and cfg.api_tls_certfile and cfg.api_tls_keyfile):
        tcp = ", ".join(a for a in (cfg.api_tcp, cfg.http_tcp) if a)
        if tcp:
            log.warning("api_tcp_insecure=true: serving the API on %s WITHOUT TLS or client "
                        "authentication; anyone who can connect controls the cluster (runs "
                        "commands as root on every machine)", tcp)
        return None
    try:
        return ApiTls.load(cfg.api_tls_cafile, cfg.api_tls_certfile, cfg.api_tls_keyfile)
    except TlsError as e:
        raise ConfigError(str(e)) from None


def etcd_client(cfg: Config, request_timeout_s: float | None = None) -> EtcdClient:
    """The etcd connection `cfg` describes (endpoints, TLS, credentials)."""
    from fleetd.registry import EtcdClient

    return EtcdClient(cfg.etcd_servers,
                      request_timeout_s=request_timeout_s or cfg.etcd_request_timeout,
                      ca_file=cfg.etcd_cafile or None, cert_file=cfg.etcd_certfile or None,
                      key_file=cfg.etcd_keyfile or None, username=cfg.etcd_username or None,
                      password=cfg.etcd_password or None)


async def connect_systemd(cfg: Config) -> SystemdManager:
    """The systemd manager `cfg` drives (system or user, bus address, unit directory)."""
    from fleetd.systemd import SystemdManager

    return await SystemdManager.connect(user=cfg.systemd_user,
                                        bus_address=cfg.systemd_bus_address or None,
                                        unit_dir=cfg.unit_dir or None)


async def serve(cfg: Config, argv: Sequence[str] = ()) -> None:
    """Run fleetd until SIGTERM/SIGINT; SIGHUP reloads the configuration read from ``argv``
    (see `reconfigure`)."""
    from fleetd.agent.agent import Agent
    from fleetd.api.grpc_server import start_grpc_server
    from fleetd.api.remote import UnitOutputs
    from fleetd.api.service import FleetService
    from fleetd.engine.engine import Engine
    from fleetd.machine import MachineIdentity, MachineSession
    from fleetd.registry import Registry
    from fleetd.systemd.cli_tools import SystemdTools

    machine_id = read_machine_id(cfg)
    tls = api_tls(cfg)
    etcd = etcd_client(cfg)
    registry = Registry(etcd, cfg.etcd_key_prefix)
    public_ip = cfg.public_ip or detect_public_ip(cfg.etcd_servers)
    identity = MachineIdentity(machine_id, public_ip, dict(cfg.metadata), version=__version__,
                               api_address=api_advertise_address(cfg, public_ip),
                               capacity=machine_capacity(cfg))  # resources
    session = MachineSession(registry, identity, cfg.agent_ttl_s())
    systemd = await connect_systemd(cfg)
    agent = Agent(registry, systemd, session)
    from fleetd.registry.view import ClusterView

    view = ClusterView(registry)
    view.start()
    service = FleetService(registry, view, placement=cfg.engine_placement)  # resources
    tools = SystemdTools(user=cfg.systemd_user, env=(
        {("DBUS_SESSION_BUS_ADDRESS" if cfg.systemd_user else "DBUS_SYSTEM_BUS_ADDRESS"):
         cfg.systemd_bus_address} if cfg.systemd_bus_address else {}))
    outputs = UnitOutputs(service, machine_id, tools, tls)
    server = await start_grpc_server(service, unix_socket=cfg.api_socket,
                                     tcp_address=cfg.api_tcp, outputs=outputs,
                                     tls=tls, socket_group=cfg.api_socket_group)
    from fleetd.api.http_v1 import start_http_server

    http_server = await start_http_server(service, unix_socket=cfg.http_socket,
                                          tcp_address=cfg.http_tcp,
                                          token_limit=cfg.token_limit,
                                          tls=tls, socket_group=cfg.api_socket_group,
                                          outputs=outputs)
    metrics_runner = None
    if cfg.metrics_listen:
        from fleetd.metrics import start_metrics_server

        metrics_runner = await start_metrics_server(cfg.metrics_listen)
    from fleetd.metrics import watch_loop_lag

    jobs = [asyncio.ensure_future(session.run()), asyncio.ensure_future(agent.run()),
            asyncio.ensure_future(watch_loop_lag())]
    if not cfg.disable_engine:
        engine = Engine(registry, session, reconcile_interval_s=cfg.engine_reconcile_interval,
                        placement=cfg.engine_placement)  # resources
        jobs.append(asyncio.ensure_future(engine.run()))
    stop = asyncio.Event()
    restart_signal = False
    loop = asyncio.get_running_loop()

    def on_restart_signal() -> None:
        nonlocal restart_signal
        restart_signal = True
        stop.set()

    running = cfg
    reloading: asyncio.Future[None] | None = None

    async def reload() -> None:
        nonlocal running
        try:
            running = await reconfigure(running, argv, session)
        except Exception as e:  # etcd down: the next SIGHUP (or restart) tries again
            log.error("SIGHUP: reloading the configuration failed: %s", e)

    def on_reload_signal() -> None:
        nonlocal reloading
        if stop.is_set():
            return
        if reloading is None or reloading.done():
            reloading = asyncio.ensure_future(reload())

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(RESTART_SIGNAL, on_restart_signal)
    loop.add_signal_handler(signal.SIGHUP, on_reload_signal)
    own = (await _ask_systemd("fleetd's own unit", systemd.unit_of_pid(os.getpid()))
           if os.environ.get("NOTIFY_SOCKET") else None)
    if own is not None:
        _set_stop_timeout(systemd, own, None)  # left by a fleetd killed in its purge's reload
    sd_notify("READY=1\nSTATUS=fleetd running as machine " + machine_id)
    log.info("fleetd %s started: machine %s, ip %s, metadata %s", __version__, machine_id,
             identity.ip, identity.metadata or "{}")
    waiter = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait([waiter, *jobs], return_when=asyncio.FIRST_COMPLETED)
    failed: BaseException | None = None
    for j in jobs:
        if j in done:
            failed = j.exception() or RuntimeError("component returned")
            log.error("fleetd component failed: %r", failed)
    sd_notify("STOPPING=1")
    if reloading is not None:
        reloading.cancel()
    for j in jobs:
        j.cancel()
    await asyncio.gather(*jobs, return_exceptions=True)
    try:
        if failed is None:
            job_type = await _ask_systemd("fleetd's own job",
                                          systemd.job_type_of_pid(os.getpid()))
            if keep_units_on_exit(job_type, restart_signal):
                log.info("fleetd exiting for a restart (%s): units keep running, the dead-man "
                         "switch stays armed", job_type or RESTART_SIGNAL.name)
                await agent.hand_over()
            else:
                log.info("fleetd stopping (systemd job: %s): stopping and unloading this "
                         "machine's units, leaving the cluster", job_type or "none")
                # fleetd.service's TimeoutStopSec= is not the bound: a unit here may claim a
                # longer stop (up to fencing.MAX_UNIT_STOP_BOUND_S), and a fleetd killed in the
                # middle would leave the rest running and their files behind.
                # A reload re-arms a stopping unit's timer from its TimeoutStopSec=, forgetting
                # the extension: the purge's reload (only for files with [Install] links)
                # comes with a drop-in of the same bound for fleetd's own unit.
                began = time.monotonic()
                until = began + agent.purge_bound_s() + PURGE_MARGIN_S

                def extend() -> None:
                    left = until - time.monotonic()
                    if sd_notify(f"EXTEND_TIMEOUT_USEC={int(left * 1e6)}"):
                        log.info("stop timeout extended to %.0f s from now (the units' "
                                 "stops)", left)

                def before_reload() -> None:
                    if own is not None:
                        _set_stop_timeout(systemd, own, until - began)

                def after_reload() -> None:
                    extend()
                    if own is not None:  # the loaded bound stays until the next reload
                        _set_stop_timeout(systemd, own, None)

                extend()
                # Revoking starts the engine's grace now: only once the non-global units are
                # inactive. Otherwise the lease lapses at its deadline, the timer fencing first.
                if await agent.purge(before_reload=before_reload, after_reload=after_reload):
                    await session.leave()
                else:
                    log.error("purge incomplete: not revoking the lease (it lapses on its own)")
        else:
            # Crash-like: exit non-zero so Restart=on-failure brings fleetd back; the units
            # keep running under the armed switch, adopted by the next fleetd.
            log.info("fleetd exiting after a failure: units keep running")
    finally:
        await server.stop(grace=1)
        await http_server.stop()
        if metrics_runner is not None:
            await metrics_runner.cleanup()
        await systemd.close()
        await view.close()
        await registry.close()
        if cfg.api_socket and os.path.exists(cfg.api_socket):
            os.unlink(cfg.api_socket)
    if failed is not None:
        raise ComponentFailed(f"component failed: {failed!r}")


async def _ask_systemd(what: str, answer: Awaitable[str | None]) -> str | None:
    """`answer`, or None (logged) if systemd could not give it."""
    from fleetd.systemd import SystemdError

    try:
        return await answer
    except SystemdError as e:
        log.warning("asking systemd for %s failed: %s", what, e)
        return None


def _set_stop_timeout(systemd: SystemdManager, unit: str, timeout_s: float | None) -> None:
    from fleetd.systemd import SystemdError

    try:
        systemd.set_stop_timeout(unit, timeout_s)
    except SystemdError as e:
        log.warning("%s", e)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg, args = load_config(argv)
    except ConfigError as e:
        print(f"fleetd: {e}", file=sys.stderr)
        return 2
    if args.version:
        print(f"fleetd version {__version__}")
        return 0
    setup_logging(cfg.verbosity)
    if args.after_exit:
        from fleetd import after_exit

        return asyncio.run(after_exit.run(cfg))
    try:
        asyncio.run(serve(cfg, sys.argv[1:] if argv is None else argv))
    except ConfigError as e:
        log.error("%s", e)
        return 2
    except Exception as e:  # a clear line, not a traceback, for operational failures
        log.error("fleetd failed: %s", e, exc_info=cfg.verbosity > 0)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
