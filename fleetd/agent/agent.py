"""The agent: keeps this machine's systemd in line with its schedule in etcd.

Event-driven: a watch on `schedule/<this machine>/` wakes it when the engine decides something
for this machine, systemd's PropertiesChanged signals tell it when a unit's state changes.
`tasks.plan` decides; this module only gathers inputs and applies the tasks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from fleetd import metrics
from fleetd.agent.tasks import (
    CurrentUnit,
    DaemonReload,
    DesiredUnit,
    RemoveUnitFile,
    StartUnit,
    StopUnit,
    Task,
    WriteUnitFile,
    fence,
    plan,
)
from fleetd.machine import MachineSession
from fleetd.registry import (
    EtcdError,
    Registry,
    ScheduleEntry,
    UnitStateRecord,
    WatchCompacted,
    backoff_sleep,
    decode,
)
from fleetd.systemd import SystemdManager, UnitStatus
from fleetd.unit import UnitError, UnitFile

log = logging.getLogger("fleetd.agent")

RUNNING_STATES = frozenset({"active", "activating", "reloading"})


class Agent:
    """Reconciles one machine; `applied` remembers what it did to each unit."""

    def __init__(self, registry: Registry, systemd: SystemdManager, session: MachineSession,
                 *, resync_interval_s: float = 60.0) -> None:
        self.registry = registry
        self.systemd = systemd
        self.session = session
        self.machine_id = session.identity.id
        self.resync_interval_s = resync_interval_s
        self.schedule: dict[str, ScheduleEntry] = {}
        self.texts: dict[str, tuple[str, str]] = {}  # unit -> (hash, text)
        self.applied: dict[str, str] = {}  # unit -> "loaded" | "launched"
        self.file_hashes: dict[str, str] = {}
        self.statuses: dict[str, UnitStatus] = {}
        self.host_units: dict[str, str] = {}  # scheduled here, refused: the host's own file
        self.fenced = False
        self._wake = asyncio.Event()
        # Nothing is applied before the schedule has been read once: an empty desired state
        # would stop every unit an earlier fleetd left running.
        self._schedule_loaded = asyncio.Event()
        self._dirty_states: set[str] = set()
        self._publish_wake = asyncio.Event()
        self.tasks_applied = 0
        session.on_lease_lost.append(self._on_lease_lost)
        session.on_new_lease.append(self._on_new_lease)

    # --- startup --------------------------------------------------------------------------
    def adopt_existing(self) -> None:
        """Learn what an earlier fleetd left in the unit directory, so running units with the
        same hash are adopted rather than restarted."""
        for name, text in self.systemd.read_unit_files().items():
            try:
                self.file_hashes[name] = UnitFile.parse(text, name=name).hash()
            except UnitError:
                self.file_hashes[name] = "?"  # unparseable leftovers are replaced or removed

    async def run(self) -> None:
        self.adopt_existing()
        statuses = await self.systemd.list_units(self.file_hashes.keys())
        for name, st in statuses.items():
            self.statuses[name] = st
            self.applied[name] = "launched" if st.active_state in RUNNING_STATES else "loaded"
        if self.file_hashes:
            log.info("found %d unit files from an earlier run: %s", len(self.file_hashes),
                     ", ".join(f"{n} ({self.applied.get(n, '?')})" for n in sorted(
                         self.file_hashes)))
        # Republish adopted units under this run's lease: their states from the earlier run
        # hang on its lease and vanish when it lapses.
        self._dirty_states |= set(self.applied)
        self._publish_wake.set()
        self.systemd.watch(self._watched_names, self._on_systemd_change)
        await asyncio.gather(self._watch_schedule(), self._reconcile_loop(),
                             self._publish_loop())

    def _watched_names(self) -> set[str]:
        return set(self.file_hashes) | set(self.schedule)

    # --- desired state from etcd ----------------------------------------------------------
    async def _watch_schedule(self) -> None:
        attempt = 0
        prefix = self.registry.keys.machine_schedule(self.machine_id)
        while True:
            try:
                entries, rev = await self.registry.machine_schedule(self.machine_id)
                await self._set_schedule(entries)
                attempt = 0
                async for batch in self.registry.watch(prefix, rev + 1):
                    changed = dict(self.schedule)
                    for ev in batch:
                        name = ev.kv.key[len(prefix):]
                        if ev.kind == "delete":
                            changed.pop(name, None)
                        else:
                            changed[name] = decode(ScheduleEntry, ev.kv.value)
                    await self._set_schedule(changed)
            except WatchCompacted as e:
                log.info("%s; re-reading schedule", e)
            except EtcdError as e:
                log.warning("schedule watch interrupted: %s", e)
                await backoff_sleep(attempt)
                attempt += 1

    async def _set_schedule(self, entries: dict[str, ScheduleEntry]) -> None:
        missing = [n for n, e in entries.items()
                   if self.texts.get(n, ("", ""))[0] != e.hash]
        if missing:
            for name, rec in (await self.registry.unit_texts(missing)).items():
                self.texts[name] = (rec.hash, rec.text)
        self.schedule = entries
        await self._refuse_host_units()
        self._schedule_loaded.set()
        self._wake.set()

    async def _refuse_host_units(self) -> None:
        """Never write a unit systemd already loads from outside fleet's directory (the host's
        own ssh.service...): it is left out of the plan and its state says why."""
        for name in self.schedule.keys() - self.applied.keys() - self.host_units.keys():
            path = await self.systemd.host_unit_file(name)
            if path is not None:
                log.error("unit %s: refused, the host has its own %s", name, path)
                self.host_units[name] = path
                self._mark(name)
        for name in self.host_units.keys() - self.schedule.keys():
            del self.host_units[name]
            self._mark(name)

    # --- reconcile ------------------------------------------------------------------------
    def desired(self) -> dict[str, DesiredUnit]:
        out = {}
        for name, e in self.schedule.items():
            if name in self.host_units:
                continue
            h, text = self.texts.get(name, ("", ""))
            if h != e.hash or e.target_state not in ("loaded", "launched"):
                continue  # body not readable yet (e.g. replaced meanwhile): next event retries
            out[name] = DesiredUnit(name, e.target_state, e.hash, text,  # type: ignore[arg-type]
                                    e.is_global)
        return fence(out) if self.fenced else out

    def current(self) -> dict[str, CurrentUnit]:
        names = set(self.file_hashes) | set(self.applied)
        out = {}
        for n in names:
            st = self.statuses.get(n)
            running = st is not None and st.active_state in RUNNING_STATES
            out[n] = CurrentUnit(n, self.file_hashes.get(n), self.applied.get(n),  # type: ignore
                                 running)
        return out

    async def _reconcile_loop(self) -> None:
        await self._schedule_loaded.wait()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.resync_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("reconcile failed; retrying")
                await asyncio.sleep(1)
                self._wake.set()
                if not self.systemd.connected:
                    try:
                        await self.systemd.reconnect()
                        log.info("reconnected to systemd")
                    except Exception as e:
                        log.warning("reconnecting to systemd failed: %s", e)

    async def reconcile(self) -> None:
        tasks = plan(self.desired(), self.current())
        if tasks:
            await self.apply(tasks)

    async def apply(self, tasks: Iterable[Task]) -> None:
        """Apply tasks in order through systemd, keeping the agent's bookkeeping in step."""
        desired = self.desired()
        touched: set[str] = set()
        for t in tasks:
            t0 = time.perf_counter()
            if isinstance(t, StopUnit):
                await self.systemd.stop_unit(t.name)
                if t.name in self.applied:
                    self.applied[t.name] = "loaded"
            elif isinstance(t, WriteUnitFile):
                self.systemd.write_unit_file(t.name, t.text)
                self.file_hashes[t.name] = desired[t.name].hash
                self.applied.setdefault(t.name, "loaded")
            elif isinstance(t, RemoveUnitFile):
                self.systemd.remove_unit_file(t.name)
                self.file_hashes.pop(t.name, None)
                self.applied.pop(t.name, None)
            elif isinstance(t, DaemonReload):
                await self.systemd.daemon_reload()
            elif isinstance(t, StartUnit):
                await self.systemd.reset_failed_unit(t.name)
                await self.systemd.start_unit(t.name)
                self.applied[t.name] = "launched"
            self.tasks_applied += 1
            elapsed = time.perf_counter() - t0
            metrics.AGENT_TASKS.labels(type(t).__name__).inc()
            metrics.AGENT_TASK_SECONDS.labels(type(t).__name__).observe(elapsed)
            log.info("%s (%.1f ms)", _describe(t), (time.perf_counter() - t0) * 1000)
            if hasattr(t, "name"):
                touched.add(t.name)
        for name in touched:
            if name in self.applied:
                self.statuses[name] = await self.systemd.unit_status(name)
            else:
                self.statuses.pop(name, None)
            self._mark(name)

    # --- state publication ----------------------------------------------------------------
    def _on_systemd_change(self, status: UnitStatus) -> None:
        old = self.statuses.get(status.name)
        self.statuses[status.name] = status
        if old != status:
            self._mark(status.name)

    def _count_states(self) -> None:
        counts: dict[str, int] = {}
        for name in self.applied:
            st = self.statuses.get(name)
            state = st.active_state if st else "unknown"
            counts[state] = counts.get(state, 0) + 1
        metrics.UNITS_BY_STATE.clear()
        for state, count in counts.items():
            metrics.UNITS_BY_STATE.labels(state).set(count)

    def _mark(self, name: str) -> None:
        self._dirty_states.add(name)
        self._publish_wake.set()

    async def _publish_loop(self) -> None:
        attempt = 0
        while True:
            await self._publish_wake.wait()
            self._publish_wake.clear()
            lease = self.session.lease
            if not lease:
                continue
            names, self._dirty_states = self._dirty_states, set()
            self._count_states()
            put: list[UnitStateRecord] = []
            gone: list[str] = []
            for n in names:
                rec = self.state_record(n)
                if rec is None:
                    gone.append(n)
                else:
                    put.append(rec)
            try:
                if put:
                    await self.registry.publish_states(put, lease)
                if gone:
                    await self.registry.clear_states(self.machine_id, gone)
                attempt = 0
            except EtcdError as e:
                log.warning("publishing unit states failed: %s", e)
                self._dirty_states |= names
                await backoff_sleep(attempt)
                attempt += 1
                self._publish_wake.set()

    def state_record(self, name: str) -> UnitStateRecord | None:
        applied = self.applied.get(name)
        if applied is None:
            if name in self.host_units and name in self.schedule:
                return UnitStateRecord(
                    unit=name, machine_id=self.machine_id, hash=self.schedule[name].hash,
                    state="inactive", load_state="error", active_state="inactive",
                    sub_state="refused", updated_ns=time.time_ns(),
                    error=f"refused: the host's own unit {self.host_units[name]} exists; "
                          "fleet does not override it")
            return None
        st = self.statuses.get(name)
        return UnitStateRecord(
            unit=name, machine_id=self.machine_id, hash=self.file_hashes.get(name, ""),
            state=applied, load_state=st.load_state if st else "",
            active_state=st.active_state if st else "", sub_state=st.sub_state if st else "",
            main_pid=st.main_pid if st else 0, updated_ns=time.time_ns())

    # --- lease loss and recovery ----------------------------------------------------------
    async def _on_lease_lost(self) -> None:
        """Fencing: without a lease the engine may already have moved our units elsewhere."""
        log.error("lease lost: stopping non-global units (fencing)")
        self.fenced = True
        await self.reconcile()

    async def _on_new_lease(self, lease: int) -> None:
        if self.fenced:
            # Only resume from a fresh read: the engine may have moved units while we were cut off.
            entries, _ = await self.registry.machine_schedule(self.machine_id)
            await self._set_schedule(entries)
        self.fenced = False
        self._dirty_states |= set(self.applied)
        self._publish_wake.set()
        self._wake.set()


def _describe(task: Task) -> str:
    kind = type(task).__name__
    name = getattr(task, "name", "")
    return f"{kind} {name}".strip()
