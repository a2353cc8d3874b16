"""A fake systemd per simulated machine, and fleetd's connection to it (test doubles).

`FakeSystemd` is the machine's PID 1: it outlives any fleetd, holds the unit files fleet wrote,
what the last daemon-reload loaded, and each unit's state. It models the semantics fleet-py
relies on, not D-Bus: StartUnit/StopUnit return once the job is queued; a start takes
`start_delay_s` in `activating`, a stop `stop_delay_s` in `deactivating` (per unit,
configurable: the slow stops of the fault schedules); `Conflicts=` (in the unit or its
drop-ins) stops the other side when a unit starts; transient timers start a unit at a time on
the machine's clock (systemd's own, which runs while fleetd is frozen or dead).
`FakeSystemdConnection` is one fleetd process's D-Bus connection to it and satisfies
`fleetd.systemd.UnitManager`; its PropertiesChanged callbacks run in that process.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from fleetd import clock
from fleetd.fencing import (
    FENCE_DROP_IN,
    FENCE_SERVICE_TEMPLATE,
    FENCE_TARGET,
    FENCE_TIMER_PREFIX,
)
from fleetd.systemd import SystemdError, UnitStatus, is_unit_name
from tests.sim.loop import VirtualLoop, context_of

#: States in which a unit counts as running for the safety invariant: everything until it is
#: inactive (or failed), since a deactivating unit's processes may still be doing its work.
RUNNING = frozenset({"activating", "active", "reloading", "deactivating"})
#: D-Bus round trip of one call.
CALL_S = 0.001
#: How long a SIGKILLed service takes to be reaped.
SIGKILL_S = 0.01


@dataclass
class _Unit:
    name: str
    active: str = "inactive"
    sub: str = "dead"
    pid: int = 0
    job: asyncio.TimerHandle | None = None
    start_after_stop: bool = False
    starts: int = 0


@dataclass
class _Timer:
    name: str
    unit: str
    handle: asyncio.TimerHandle


@dataclass
class _Watcher:
    names: Callable[[], AbstractSet[str]]
    on_change: Callable[[UnitStatus], None]


def _timespan_s(value: str) -> float | None:
    v = value.strip().lower()
    for suffix, mult in (("ms", 1e-3), ("min", 60.0), ("s", 1.0)):
        if v.endswith(suffix):
            try:
                return float(v[: -len(suffix)]) * mult
            except ValueError:
                return None
    try:
        return float(v)
    except ValueError:
        return None


def _directives(text: str, key: str, in_section: str = "Unit") -> list[str]:
    """Values of `key` in the `in_section` sections of `text` (unit file plus drop-ins)."""
    out: list[str] = []
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        k, sep, v = line.partition("=")
        if sep and section == in_section and k.strip() == key:
            out.extend(v.split())
    return out


class FakeSystemd:
    """One machine's systemd; `on_change(machine, unit, old_state, new_state)` sees every
    ActiveState transition (the simulation's invariant checker)."""

    def __init__(self, loop: VirtualLoop, machine: str,
                 on_change: Callable[[str, str, str, str], None] | None = None,
                 trace: Callable[[str], None] | None = None) -> None:
        self.loop = loop
        self.machine = machine
        self.process = "systemd:" + machine
        self.ctx = context_of(self.process)
        self.on_change = on_change or (lambda *a: None)
        self.trace = trace or (lambda s: None)
        self.files: dict[str, str] = {}  # fleet's unit files (files_dir, linked into unit_dir)
        self.drop_ins: dict[str, dict[str, str]] = {}  # unit -> drop-in name -> text
        self.host_units: dict[str, str] = {}  # units systemd loads from elsewhere (/usr/lib)
        self.fence_units: dict[str, str] = {}  # fleet's fence target and template (/run)
        self.loaded: dict[str, str] = {}  # unit -> text as of the last daemon-reload / load
        self.units: dict[str, _Unit] = {}
        self.timers: dict[str, _Timer] = {}
        self.fired_timers: set[str] = set()  # elapsed transient timers (RemainAfterElapse=)
        self.stop_delay_s: dict[str, float] = {}
        self.start_delay_s: dict[str, float] = {}
        self.default_stop_delay_s = 0.01
        self.default_start_delay_s = 0.01
        self.connections: list[FakeSystemdConnection] = []
        self.reloads = 0
        self._pid = 100

    # --- state ----------------------------------------------------------------------------
    def unit(self, name: str) -> _Unit:
        u = self.units.get(name)
        if u is None:
            u = self.units[name] = _Unit(name)
        return u

    def active_state(self, name: str) -> str:
        u = self.units.get(name)
        return u.active if u else "inactive"

    def running(self) -> set[str]:
        return {n for n, u in self.units.items() if u.active in RUNNING}

    def text(self, name: str) -> str | None:
        """The unit as systemd loaded it (file plus drop-ins, as of its last load/reload)."""
        return self.loaded.get(name)

    def _file(self, name: str) -> str | None:
        for where in (self.files, self.fence_units, self.host_units):
            if name in where:
                return where[name]
        return None

    def _source(self, name: str) -> str | None:
        """The unit's file and drop-ins on disk now (a template instance reads its template)."""
        base = self._file(name)
        if base is None and "@" in name and not name.split("@", 1)[1].startswith("."):
            base = self._file(name.split("@", 1)[0] + "@." + name.rsplit(".", 1)[1])
        if base is None:
            return None
        return "\n".join([base, *self.drop_ins.get(name, {}).values()])

    def status(self, name: str) -> UnitStatus:
        u = self.units.get(name)
        load = "loaded" if name in self.loaded else "not-found"
        if u is None:
            return UnitStatus(name, load, "inactive", "dead", 0)
        return UnitStatus(name, load, u.active, u.sub,
                          u.pid if name.endswith(".service") and u.active in RUNNING else 0)

    def _set(self, u: _Unit, active: str, sub: str) -> None:
        old = u.active
        u.active, u.sub = active, sub
        if active == "activating" and old not in RUNNING:
            self._pid += 1
            u.pid = self._pid
            u.starts += 1
        if old != active:
            self.trace(f"{self.machine} {u.name} {old}->{active}")
            self.on_change(self.machine, u.name, old, active)
            if active == "inactive":
                self._collect(u.name)
        self._notify(u.name)

    def _notify(self, name: str) -> None:
        st = self.status(name)
        for c in list(self.connections):
            c._signal(st)

    # --- jobs -----------------------------------------------------------------------------
    def _collect(self, name: str) -> None:
        """Garbage collection, as systemd does it by itself: a unit that is inactive (not
        failed) and whose file is gone is forgotten, so its next load reads the disk afresh.
        (Real systemd also keeps a unit another one references, as [Install] links do: the
        agent reloads for those; the fake has no links.)"""
        u = self.units.get(name)
        if name in self.loaded and self._source(name) is None and (
                u is None or u.active == "inactive"):
            del self.loaded[name]

    def _load(self, name: str) -> None:
        self._collect(name)
        if name in self.loaded:
            return
        text = self._source(name)
        if text is None:
            raise SystemdError(f"start {name}: Unit {name} not found.",
                               dbus_error="org.freedesktop.systemd1.NoSuchUnit")
        self.loaded[name] = text

    def start(self, name: str) -> None:
        self._load(name)
        u = self.unit(name)
        for req in _directives(self.text(name) or "", "Requires"):
            self.start(req)
        for other in self._conflicting(name):
            self.stop(other)
        if u.active in ("active", "activating", "reloading"):
            return
        if u.active == "deactivating":
            u.start_after_stop = True
            return
        if name.endswith(".target") or name.endswith(".timer"):
            # Units ordered Before= the target (fleet's fence drop-in) must be down first.
            self._set(u, "activating", "start")
            self._settle_target(name)
            return
        self._set(u, "activating", "start")
        delay = self.start_delay_s.get(name, self.default_start_delay_s)
        u.job = self.loop.call_later(delay, self._started, name, context=self.ctx)

    def _settle_target(self, name: str) -> None:
        u = self.units.get(name)
        if u is None or u.active != "activating":
            return
        waiting = [o for o, ou in self.units.items() if ou.active in RUNNING and o != name
                   and name in _directives(self.text(o) or "", "Before")]
        if not waiting:
            self._set(u, "active", "active")

    def _started(self, name: str) -> None:
        u = self.unit(name)
        u.job = None
        if u.active == "activating":
            if "Type=oneshot" in (self.text(name) or ""):
                self._set(u, "inactive", "dead")  # ran its ExecStart= and exited
                return
            self._set(u, "active", "running")

    def restart(self, name: str) -> None:
        """systemd's RestartUnit: a running unit is stopped and then started again (its stop
        takes as long as a stop does); an inactive one is started."""
        self.stop(name)  # a no-op for a unit that is not running or already stopping
        u = self.units.get(name)
        if u is not None and u.active == "deactivating":
            u.start_after_stop = True
        else:
            self.start(name)

    def stop(self, name: str) -> None:
        if name in self.timers or name in self.fired_timers:
            self.stop_timer(name)  # a stopped transient timer is unloaded
            self.fired_timers.discard(name)
            return
        u = self.units.get(name)
        if u is None:
            return
        u.start_after_stop = False
        if u.active in ("inactive", "failed", "deactivating"):
            return
        if u.job is not None:
            u.job.cancel()
            u.job = None
        if name.endswith(".target") or name.endswith(".timer"):
            self._set(u, "inactive", "dead")
            return
        self._set(u, "deactivating", "stop-sigterm")
        delay = self.stop_delay_s.get(name, self._exec_stop_sleep(name))
        cap = [t for t in (_timespan_s(v) for v in _directives(
            self.text(name) or "", "TimeoutStopSec", "Service")) if t]
        timed_out = bool(cap) and delay > cap[-1]
        if timed_out:
            delay = cap[-1] + SIGKILL_S  # SIGKILL after TimeoutStopSec=; the unit ends failed
        u.job = self.loop.call_later(delay, self._stopped, name, timed_out, context=self.ctx)

    def _exec_stop_sleep(self, name: str) -> float:
        """A unit whose ExecStop= is `sleep N` takes N seconds to stop, as on a real system."""
        for line in (self.text(name) or "").splitlines():
            k, _, v = line.partition("=")
            words = v.split()
            if k.strip() == "ExecStop" and len(words) == 2 and words[0].endswith("sleep"):
                try:
                    return float(words[1])
                except ValueError:
                    break
        return self.default_stop_delay_s

    def _stopped(self, name: str, timed_out: bool = False) -> None:
        u = self.unit(name)
        u.job = None
        if u.active != "deactivating":
            return
        self._set(u, *(("failed", "failed") if timed_out else ("inactive", "dead")))
        u.pid = 0
        for target, tu in list(self.units.items()):
            if tu.active == "activating" and target.endswith(".target"):
                self._settle_target(target)
        if u.start_after_stop:
            u.start_after_stop = False
            self.start(name)

    def _conflicting(self, name: str) -> list[str]:
        """Units that must stop when `name` starts: its Conflicts= and those naming it."""
        mine = set(_directives(self.text(name) or "", "Conflicts"))
        out = []
        for other, u in sorted(self.units.items()):
            if other == name or u.active not in RUNNING:
                continue
            if other in mine or name in _directives(self.text(other) or "", "Conflicts"):
                out.append(other)
        return out

    def daemon_reload(self) -> None:
        self.reloads += 1
        for name in list(self.loaded):
            text = self._source(name)
            if text is None:
                u = self.units.get(name)
                if u is None or u.active not in RUNNING:
                    del self.loaded[name]  # garbage-collected: no file, not running
            else:
                self.loaded[name] = text
        for name in self.files:
            if "@." not in name:
                self.loaded[name] = self._source(name)  # type: ignore[assignment]
        for name in list(self.loaded):
            self._notify(name)

    # --- transient timers (systemd-run --on-active=...) -----------------------------------
    def start_transient_timer(self, name: str, unit: str, delay_s: float) -> None:
        """A transient timer `name` that starts `unit` in `delay_s` seconds; starting one
        with the same name replaces it (as fleetd re-arming it at every renewal would)."""
        self.stop_timer(name)
        self.fired_timers.discard(name)
        handle = self.loop.call_later(delay_s, self._fire, name, context=self.ctx)
        self.timers[name] = _Timer(name, unit, handle)

    def stop_timer(self, name: str) -> None:
        t = self.timers.pop(name, None)
        if t is not None:
            t.handle.cancel()

    def _fire(self, name: str) -> None:
        t = self.timers.pop(name, None)
        if t is None:
            return
        self.fired_timers.add(name)
        self.trace(f"{self.machine} timer {name} fired: start {t.unit}")
        try:
            self.start(t.unit)
        except SystemdError:
            pass

    # --- machine lifecycle ----------------------------------------------------------------
    def power_cut(self) -> None:
        """The machine lost power: every process is gone, /run (fleet's files) too."""
        for t in list(self.timers):
            self.stop_timer(t)
        self.fired_timers.clear()
        for u in self.units.values():
            if u.job is not None:
                u.job.cancel()
                u.job = None
            if u.active != "inactive":
                self._set(u, "inactive", "dead")
        self.units.clear()
        self.files.clear()
        self.fence_units.clear()
        self.drop_ins.clear()
        self.loaded.clear()
        self.connections.clear()

    def connect(self, process: str) -> FakeSystemdConnection:
        c = FakeSystemdConnection(self, process)
        self.connections.append(c)
        return c


@dataclass
class FakeSystemdConnection:
    """fleetd's connection to `FakeSystemd` (the `SystemdManager` of one fleetd process)."""

    systemd: FakeSystemd
    process: str
    _watchers: list[_Watcher] = field(default_factory=list)
    _emitted: dict[str, UnitStatus] = field(default_factory=dict)
    _closed: bool = False

    def __post_init__(self) -> None:
        self._ctx = context_of(self.process)

    @property
    def connected(self) -> bool:
        return not self._closed

    async def reconnect(self) -> None:
        self._closed = False

    async def close(self) -> None:
        self._closed = True
        if self in self.systemd.connections:
            self.systemd.connections.remove(self)

    async def _call(self) -> None:
        if self._closed:
            raise SystemdError("connection closed")
        await asyncio.sleep(CALL_S)

    # --- files ----------------------------------------------------------------------------
    def read_unit_files(self) -> dict[str, str]:
        return dict(self.systemd.files)

    async def host_unit_file(self, name: str) -> str | None:
        """The host's own file of `name` or of its template, as the real adapter reports it."""
        at, dot = name.find("@"), name.rfind(".")
        for n in (name, name[:at + 1] + name[dot:] if 0 < at < dot - 1 else ""):
            if n and n in self.systemd.host_units:
                return f"/usr/lib/systemd/system/{n}"
        return None

    def write_unit_file(self, name: str, text: str, drop_in: str | None = None) -> None:
        if not is_unit_name(name):
            raise SystemdError(f"unit file {name!r}: not a valid unit name")
        if name in self.systemd.host_units:
            raise SystemdError(f"write unit file {name}: exists and was not written by fleet; "
                               "refusing to replace it")
        self._write_drop_in(name, drop_in)
        self.systemd.files[name] = text

    def _write_drop_in(self, name: str, text: str | None) -> None:
        if text is None:
            self.systemd.drop_ins.pop(name, None)
        else:
            self.systemd.drop_ins[name] = {FENCE_DROP_IN: text}

    def has_drop_in(self, name: str) -> bool:
        return FENCE_DROP_IN in self.systemd.drop_ins.get(name, {})

    def remove_unit_file(self, name: str) -> None:
        self._write_drop_in(name, None)
        self.systemd.files.pop(name, None)
        self.systemd._collect(name)

    # --- the dead-man switch (fleetd.fencing) ---------------------------------------------
    def install_fence(self) -> bool:
        want = {FENCE_TARGET: "[Unit]\nDescription=fleet fence\nDefaultDependencies=no\n",
                FENCE_SERVICE_TEMPLATE: (f"[Unit]\nRequires={FENCE_TARGET}\nAfter={FENCE_TARGET}"
                                         "\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n")}
        changed = self.systemd.fence_units != want
        self.systemd.fence_units = dict(want)
        return changed

    async def arm_fence_timer(self, name: str, delay_s: float) -> None:
        await self._call()
        sd = self.systemd
        if name in sd.timers or name in sd.fired_timers:
            raise SystemdError(f"arm {name}: Unit {name} already exists.",
                               dbus_error="org.freedesktop.systemd1.UnitExists")
        sd.start_transient_timer(name, name[: -len(".timer")] + ".service", delay_s)

    async def list_fence_timers(self) -> list[str]:
        await self._call()
        sd = self.systemd
        return sorted(n for n in set(sd.timers) | sd.fired_timers
                      if n.startswith(FENCE_TIMER_PREFIX))

    async def timer_fired(self, name: str) -> bool:
        await self._call()
        return name in self.systemd.fired_timers or name not in self.systemd.timers

    async def fence(self, timeout_s: float) -> bool:
        await self._call()
        self.systemd.start(FENCE_TARGET)
        deadline = clock.now() + timeout_s
        while True:
            if self.systemd.active_state(FENCE_TARGET) == "active":
                return True
            if clock.now() > deadline:
                return False
            await asyncio.sleep(0.05)

    async def job_type_of_pid(self, pid: int) -> str | None:
        await self._call()
        return self.own_job

    #: The job systemd has pending for fleetd's unit ("stop", "restart"), set by the simulation.
    own_job: str | None = None

    # --- manager calls --------------------------------------------------------------------
    async def not_loaded_as_written(self, names: Iterable[str]) -> list[str]:
        await self._call()
        out = []
        for n in dict.fromkeys(names):
            try:
                self.systemd._load(n)
            except SystemdError:
                out.append(n)
                continue
            if self.systemd.loaded.get(n) != self.systemd._source(n):
                out.append(n)  # loaded before this file was written: NeedDaemonReload
        return out

    async def daemon_reload(self) -> None:
        await self._call()
        self.systemd.daemon_reload()

    async def start_unit(self, name: str) -> None:
        await self._call()
        self.systemd.start(name)

    async def restart_unit(self, name: str) -> None:
        await self._call()
        self.systemd.restart(name)

    async def stop_unit(self, name: str) -> None:
        await self._call()
        self.systemd.stop(name)

    async def reset_failed_unit(self, name: str) -> None:
        await self._call()
        u = self.systemd.units.get(name)
        if u is not None and u.active == "failed":
            self.systemd._set(u, "inactive", "dead")

    async def unit_status(self, name: str) -> UnitStatus:
        await self._call()
        return self._remember(self.systemd.status(name))

    async def list_units(self, names: Iterable[str]) -> dict[str, UnitStatus]:
        await self._call()
        return {n: self._remember(self.systemd.status(n)) for n in dict.fromkeys(names)}

    def _remember(self, st: UnitStatus) -> UnitStatus:
        return st

    # --- signals --------------------------------------------------------------------------
    def watch(self, names_callback: Callable[[], AbstractSet[str]],
              on_change: Callable[[UnitStatus], None]) -> None:
        self._watchers.append(_Watcher(names_callback, on_change))

    def _signal(self, st: UnitStatus) -> None:
        if self._closed or not self._watchers:
            return
        self.systemd.loop.call_soon(self._deliver, st, context=self._ctx)

    def _deliver(self, st: UnitStatus) -> None:
        if self._emitted.get(st.name) == st:
            return
        delivered = False
        for w in list(self._watchers):
            if st.name in w.names():
                delivered = True
                w.on_change(st)
        if delivered:
            self._emitted[st.name] = st
        else:
            self._emitted.pop(st.name, None)
