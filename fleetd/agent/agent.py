"""The agent: keeps this machine's systemd in line with its schedule in etcd.

Event-driven: a watch on `schedule/<this machine>/` wakes it when the engine decides something
for this machine, systemd's PropertiesChanged signals tell it when a unit's state changes.
`tasks.plan` decides; this module only gathers inputs and applies the tasks.

Fencing (see `fleetd.fencing`): every non-global unit is written with a drop-in that makes it
conflict with `fleet-fence.target`; at each lease renewal the agent re-arms systemd's dead-man
timer (a new generation first, then the old one stopped, so one is armed at every instant).
Reconcile and fence are serialised by one lock, and a fenced or lease-less agent starts no
non-global unit. A task that fails affects its unit only: the error is logged and published in
that unit's state (LoadState "error"), the rest of the plan goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from fleetd import clock, fencing, metrics
from fleetd.agent.tasks import (
    CurrentUnit,
    DaemonReload,
    DesiredUnit,
    LoadNew,
    RemoveUnitFile,
    StartUnit,
    StopUnit,
    Task,
    WriteUnitFile,
    fence,
    has_install_section,
    plan,
)
from fleetd.machine import MachineSession
from fleetd.registry import (
    EtcdError,
    Registry,
    ScheduleEntry,
    UnitStateRecord,
    backoff_sleep,
)
from fleetd.systemd import SystemdError, SystemdManager, UnitStatus, install
from fleetd.systemd.fence_timers import arm_replacing_older, fence_timer_name
from fleetd.unit import UnitError, UnitFile

log = logging.getLogger("fleetd.agent")

#: The fence target turning active this close to (or past) our fence deadline is our timer.
FIRED_SLACK_S = 0.25
#: While a scheduled unit's body could not be read, the reconcile loop retries this often.
TEXT_RETRY_S = 1.0

# A unit counts as running until it is inactive: a deactivating unit may have a start queued
# behind its stop (systemd keeps it), which only a StopUnit cancels.
RUNNING_STATES = frozenset({"active", "activating", "reloading", "deactivating"})
# What a restarted agent adopts as launched: not a unit on its way down (stopped by the
# dead-man switch while fleetd was away, say), which must be started again if still wanted.
ADOPTED_STATES = RUNNING_STATES - {"deactivating"}


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
        #: Units whose file here has an [Install] section (its removal needs a reload).
        self.with_links: set[str] = set()
        self.statuses: dict[str, UnitStatus] = {}
        self.host_units: dict[str, str] = {}  # scheduled here, refused: the host's own file
        # Fenced until the first lease has armed the dead-man switch: no lease, no units.
        self.fenced = True
        self.errors: dict[str, str] = {}  # unit -> why its last task failed
        self._lock = asyncio.Lock()  # one of reconcile / fence / purge at a time
        self._arm_lock = asyncio.Lock()  # one dead-man timer generation armed at a time
        self._armed: str | None = None  # the dead-man timer this process armed last
        self._arm_seq = time.time_ns() // 1000  # timer names stay unique across restarts
        self._fence_installed = False
        self._drop_ins_checked = False  # units adopted from a fleetd without fencing
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        # Nothing is applied before the schedule has been read once: an empty desired state
        # would stop every unit an earlier fleetd left running.
        self._schedule_loaded = asyncio.Event()
        self._dirty_states: set[str] = set()
        self._publish_wake = asyncio.Event()
        # etcd revision of the schedule applied last. Two paths apply one: the watch and the
        # fresh read a new lease takes after a fence; neither may set back the other's newer
        # view (a resumed watch replays history the engine has undone; a read sent before an
        # assignment can return after the watch delivered it).
        self._schedule_rev = 0
        self.tasks_applied = 0
        session.on_lease_lost.append(self._on_lease_lost)
        session.on_new_lease.append(self._on_new_lease)
        session.on_renewed.append(self._on_renewed)

    # --- startup --------------------------------------------------------------------------
    def adopt_existing(self) -> None:
        """Learn what an earlier fleetd left in the unit directory, so running units with the
        same hash are adopted rather than restarted."""
        for name, text in self.systemd.read_unit_files().items():
            try:
                self.file_hashes[name] = UnitFile.parse(text, name=name).hash()
            except UnitError:
                self.file_hashes[name] = "?"  # unparseable leftovers are replaced or removed
                self.with_links.add(name)  # whatever it holds: reload on its removal
            if has_install_section(text):
                self.with_links.add(name)

    async def run(self) -> None:
        while not self.session.lease or self.fenced:
            await self.session.lease_changed.wait()
        self.adopt_existing()
        statuses = await self.systemd.list_units(self.file_hashes.keys())
        for name, st in statuses.items():
            self.statuses[name] = st
            self.applied[name] = "launched" if st.active_state in ADOPTED_STATES else "loaded"
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
        return set(self.file_hashes) | set(self.schedule) | {fencing.FENCE_TARGET}

    # --- desired state from etcd ----------------------------------------------------------
    async def _watch_schedule(self) -> None:
        prefix = self.registry.keys.machine_schedule(self.machine_id)
        async for update in self.registry.follow(prefix, retry_first_read=True):
            if update.kind not in ("reset", "changes"):
                continue
            if update.revision < self._schedule_rev:
                continue  # older than what a fresh read applied (see _schedule_rev)
            attempt = 0
            while True:  # the unit bodies are read too: retry that read, not the schedule's
                try:
                    await self._set_schedule({
                        name: per[self.machine_id]
                        for name, per in update.state.schedule.items() if self.machine_id in per},
                        update.revision)
                    break
                except EtcdError as e:
                    log.warning("reading the units scheduled here failed: %s", e)
                    await backoff_sleep(attempt)
                    attempt += 1

    async def _set_schedule(self, entries: dict[str, ScheduleEntry], revision: int) -> None:
        missing = [n for n, e in entries.items()
                   if self.texts.get(n, ("", ""))[0] != e.hash]
        if missing:
            for name, rec in (await self.registry.unit_texts(missing)).items():
                self.texts[name] = (rec.hash, rec.text)
        if revision < self._schedule_rev:
            return  # a newer schedule was applied meanwhile (see _schedule_rev)
        self._schedule_rev = revision
        self.schedule = entries
        await self._refuse_host_units()
        self._schedule_loaded.set()
        self._wake.set()

    def _texts_missing(self) -> list[str]:
        return [n for n, e in self.schedule.items() if self.texts.get(n, ("", ""))[0] != e.hash]

    async def _read_missing_texts(self) -> None:
        """Bodies a schedule read could not get (the unit was destroyed and submitted again
        while its assignment stayed, so no schedule event comes): retried until they are in."""
        missing = self._texts_missing()
        if not missing:
            return
        try:
            recs = await self.registry.unit_texts(missing)
        except EtcdError as e:
            log.warning("reading unit bodies failed: %s", e)
            return
        for name, rec in recs.items():
            self.texts[name] = (rec.hash, rec.text)

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
                                 running, n in self.with_links)
        return out

    async def _reconcile_loop(self) -> None:
        await self._schedule_loaded.wait()
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), TEXT_RETRY_S if self._texts_missing()
                                       else self.resync_interval_s)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._read_missing_texts()
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
        async with self._lock:
            await self._reconcile_locked()

    async def _reconcile_locked(self) -> None:
        if not self._drop_ins_checked:
            await self._add_missing_drop_ins()
        tasks = plan(self.desired(), self.current())
        if tasks:
            await self.apply(tasks)

    async def apply(self, tasks: Iterable[Task]) -> None:
        """Apply tasks in order through systemd, keeping the agent's bookkeeping in step.

        A failing task fails its unit only: that unit's later tasks are skipped, its error is
        recorded (and published), the other units proceed. Call with the lock held."""
        desired = self.desired()
        touched: set[str] = set()
        failed: set[str] = set()
        wrote = False
        for kind, group in itertools.groupby(
                tasks, lambda t: type(t) if isinstance(t, StartUnit | StopUnit) else None):
            if kind is StopUnit:
                # Stops come first and are independent: queued together (one round trip
                # each, one after another, they took ~7 ms apiece on the lab).
                await asyncio.gather(*(self._apply_logged(t, desired, touched, failed)
                                       for t in group))
                continue
            if kind is StartUnit:
                # A plan's starts come last and are independent: sent together, systemd
                # queues them in one go instead of one round trip each (33 units: ~300 ms).
                go = []
                for u in group:
                    if not isinstance(u, StartUnit) or u.name in failed:
                        continue
                    if self._may_start(desired.get(u.name)):
                        go.append(u)
                    else:
                        log.warning("not starting %s: fenced or without a lease", u.name)
                await asyncio.gather(*(self._apply_logged(u, desired, touched, failed)
                                       for u in go))
                continue
            for t in group:
                if getattr(t, "name", "") in failed:
                    continue
                if isinstance(t, DaemonReload | LoadNew) and not wrote:
                    continue  # every file task failed: nothing to reload
                if await self._apply_logged(t, desired, touched, failed):
                    wrote = wrote or isinstance(t, WriteUnitFile | RemoveUnitFile)
        known = sorted(n for n in touched if n in self.applied or n in self.errors)
        try:  # one ListUnitsByNames for the batch, not a status read per unit
            self.statuses.update(await self.systemd.list_units(known))
        except SystemdError as e:
            log.warning("status of %s: %s", ", ".join(known), e)
        for name in touched:
            if name not in self.applied and name not in self.errors:
                self.statuses.pop(name, None)
            self._mark(name)

    async def _apply_logged(self, t: Task, desired: dict[str, DesiredUnit],
                            touched: set[str], failed: set[str]) -> bool:
        """One task of `apply`, with its bookkeeping; False if it failed (its unit only)."""
        name = getattr(t, "name", "")
        t0 = time.perf_counter()
        try:
            await self._apply_one(t, desired)
        except (SystemdError, OSError) as e:
            if isinstance(t, DaemonReload | LoadNew):
                raise  # the whole batch depends on it: the loop retries
            log.error("%s failed: %s", _describe(t), e)
            metrics.AGENT_TASKS.labels("failed").inc()
            self.errors[name] = str(e)
            failed.add(name)
            touched.add(name)
            return False
        self.tasks_applied += 1
        elapsed = time.perf_counter() - t0
        metrics.AGENT_TASKS.labels(type(t).__name__).inc()
        metrics.AGENT_TASK_SECONDS.labels(type(t).__name__).observe(elapsed)
        log.info("%s (%.1f ms)", _describe(t), elapsed * 1000)
        if name:
            touched.add(name)
            if name not in failed:
                self.errors.pop(name, None)
        return True

    async def _add_missing_drop_ins(self) -> None:
        """Units adopted from a fleetd that wrote no fencing drop-in get one (once, at the
        first reconcile): otherwise the dead-man switch would not stop them."""
        added = []
        for name, want in self.desired().items():
            if self.file_hashes.get(name) != want.hash or self.systemd.has_drop_in(name):
                continue
            drop_in = _drop_in(want)
            if drop_in is not None:
                try:
                    self.systemd.write_unit_file(name, want.text, drop_in)
                except SystemdError as e:
                    log.error("adding the fencing drop-in to %s failed: %s", name, e)
                    continue
                added.append(name)
        if added:
            await self.systemd.daemon_reload()
            log.info("added the fencing drop-in to %d adopted units: %s", len(added),
                     ", ".join(sorted(added)))
        self._drop_ins_checked = True

    def _may_start(self, unit: DesiredUnit | None) -> bool:
        """Checked right before each StartUnit: the fence may have fallen since the plan."""
        if unit is None:
            return False
        # The deadline, not just a lease id: callbacks parked through a freeze or VM pause
        # run before the watchdog notices the lease lapsed.
        return unit.is_global or (not self.fenced and bool(self.session.lease)
                                  and clock.now() < self.session.fence_deadline)

    async def _apply_one(self, t: Task, desired: dict[str, DesiredUnit]) -> None:
        if isinstance(t, StopUnit):
            await self.systemd.stop_unit(t.name)
            if t.name in self.applied:
                self.applied[t.name] = "loaded"
        elif isinstance(t, WriteUnitFile):
            want = desired[t.name]
            self._install_links(t.name, None)
            self.systemd.write_unit_file(t.name, t.text, _drop_in(want))
            self._install_links(t.name, t.text)
            self.file_hashes[t.name] = want.hash
            if has_install_section(t.text):
                self.with_links.add(t.name)
            else:
                self.with_links.discard(t.name)
            self.applied.setdefault(t.name, "loaded")
        elif isinstance(t, RemoveUnitFile):
            self._install_links(t.name, None)
            self.systemd.remove_unit_file(t.name)
            self.file_hashes.pop(t.name, None)
            self.with_links.discard(t.name)
            self.applied.pop(t.name, None)
            self.errors.pop(t.name, None)
        elif isinstance(t, DaemonReload):
            await self._daemon_reload()
        elif isinstance(t, LoadNew):
            names = [n for n in t.names if n in self.file_hashes]  # written in this batch
            unseen = await self.systemd.not_loaded_as_written(names)
            if unseen:
                log.info("systemd has not loaded %s as written: daemon-reload",
                         ", ".join(unseen[:5]) + (" ..." if len(unseen) > 5 else ""))
                await self._daemon_reload()
        elif isinstance(t, StartUnit):
            await self.systemd.reset_failed_unit(t.name)
            if not self._may_start(desired.get(t.name)):  # again, right before: see apply
                log.warning("not starting %s: fenced or without a lease", t.name)
                return
            if t.restart:
                await self.systemd.restart_unit(t.name)
            else:
                await self.systemd.start_unit(t.name)
            self.applied[t.name] = "launched"

    async def _daemon_reload(self) -> None:
        # systemd answers nothing while it reloads (0.3-0.8 s with 100 units on the lab),
        # so a renewal's re-arm queued behind back-to-back reloads can come after the
        # armed timer's deadline: it fires on a good lease. Re-arm from the latest renewal
        # first (the deadline never moves past it), so each reload starts with a fresh one.
        if not self.fenced and self.session.lease:
            await self._arm()
        await self.systemd.daemon_reload()

    def _install_links(self, name: str, text: str | None) -> None:
        """Remove (None) or create the links of the unit's [Install] section, as `systemctl
        enable` would (fleetd/systemd/install.py); a manager without directories has none."""
        link_dir = getattr(self.systemd, "unit_dir", None)
        files_dir = getattr(self.systemd, "files_dir", None)
        if link_dir is None or files_dir is None:
            return
        if text is None:
            install.unlink_installed(name, link_dir, files_dir)
        else:
            install.link_installed(name, text, link_dir, files_dir)

    # --- state publication ----------------------------------------------------------------
    def _on_systemd_change(self, status: UnitStatus) -> None:
        if status.name == fencing.FENCE_TARGET:
            if status.active_state != "active" or self.fenced or not self.session.lease:
                return
            if clock.now() >= self.session.fence_deadline - FIRED_SLACK_S:
                # The dead-man timer fired at our deadline (we were frozen, or could not renew
                # in time). The units are stopping: give the lease up, come back with a new one.
                log.error("%s started by the dead-man timer: fenced", status.name)
                self._spawn(self.session.lose("the dead-man timer fired"))
            else:
                # Not ours to act on: left active by an earlier fleetd, or an older timer
                # generation that fired just as we re-armed. Our lease is good: the plan starts
                # the units again (each start stops the target, Conflicts=). The plan does not
                # start a unit it launched that merely exited: these were stopped by the fence.
                for name, applied in self.applied.items():
                    entry = self.schedule.get(name)
                    if applied == "launched" and entry is not None and not entry.is_global:
                        self.applied[name] = "loaded"
                self._wake.set()
            return
        old = self.statuses.get(status.name)
        self.statuses[status.name] = status
        if old != status:
            self._mark(status.name)
            if status.active_state in RUNNING_STATES and not self._should_run(status.name):
                self._wake.set()  # e.g. a start queued behind a slow stop ran after all

    def _should_run(self, name: str) -> bool:
        e = self.schedule.get(name)
        return (e is not None and e.target_state == "launched"
                and (e.is_global or not self.fenced))

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
        st = self.statuses.get(name)
        if name in self.errors:
            # systemd's own LoadState for "could not be loaded"; the reason is in fleetd's log.
            return UnitStateRecord(
                unit=name, machine_id=self.machine_id, hash=self.file_hashes.get(name, ""),
                state=applied or "inactive", load_state="error",
                active_state=st.active_state if st else "inactive",
                sub_state=st.sub_state if st else "dead", main_pid=st.main_pid if st else 0,
                updated_ns=time.time_ns(), error=self.errors[name])
        if applied is None:
            if name in self.host_units and name in self.schedule:
                return UnitStateRecord(
                    unit=name, machine_id=self.machine_id, hash=self.schedule[name].hash,
                    state="inactive", load_state="error", active_state="inactive",
                    sub_state="refused", updated_ns=time.time_ns(),
                    error=f"refused: the host's own unit {self.host_units[name]} exists; "
                          "fleet does not override it")
            return None
        return UnitStateRecord(
            unit=name, machine_id=self.machine_id, hash=self.file_hashes.get(name, ""),
            state=applied, load_state=st.load_state if st else "",
            active_state=st.active_state if st else "", sub_state=st.sub_state if st else "",
            main_pid=st.main_pid if st else 0, updated_ns=time.time_ns())

    # --- lease loss, recovery and the dead-man switch -------------------------------------
    async def _on_lease_lost(self) -> None:
        """Fencing: without a lease the engine may soon move our units elsewhere. Returns once
        every non-global unit is inactive (or the stop bound ran out, logged)."""
        log.error("lease lost: stopping non-global units (fencing)")
        self.fenced = True  # before the lock: an apply in progress skips its remaining starts
        async with self._lock:
            try:
                bound = self._stop_bound_s()
                done = await self.systemd.fence(bound + fencing.FENCE_TIMER_LATENCY_S)
                if not done:
                    log.error("fence: units still stopping after %.0fs", bound)
            except SystemdError as e:
                log.error("fence: starting %s failed: %s (the plan stops the units)",
                          fencing.FENCE_TARGET, e)
            await self._reconcile_locked()
        self._wake.set()

    async def _on_new_lease(self, lease: int) -> None:
        async with self._lock:
            if not self._fence_installed:
                if self.systemd.install_fence():
                    await self.systemd.daemon_reload()
                self._fence_installed = True
            if not await self._arm():
                raise SystemdError("cannot arm the dead-man switch")
            if self.fenced:
                # Only resume from a fresh read: the engine may have moved units meanwhile.
                entries, rev = await self.registry.machine_schedule(self.machine_id)
                await self._set_schedule(entries, rev)
            self.fenced = False
        self._dirty_states |= set(self.applied)
        self._publish_wake.set()
        self._wake.set()

    async def _on_renewed(self) -> bool:
        if self.fenced:
            return True
        return await self._arm()

    async def _arm(self) -> bool:
        """Arm a new generation of the dead-man timer at the current fence deadline, then stop
        every older one (ours or an earlier fleetd's). False if systemd refused. One at a time:
        two interleaved generations would each stop the other's timer."""
        return await self._arm_at(self.session.fence_delay_s, "")

    async def _arm_at(self, delay_s: Callable[[], float], why: str) -> bool:
        """Arm the next timer generation `delay_s()` from now (read once the lock is held)
        and stop the older ones; False, logged with `why`, if systemd refused."""
        async with self._arm_lock:
            self._arm_seq += 1
            name = fence_timer_name(self._arm_seq)
            try:
                await arm_replacing_older(self.systemd, name, delay_s())
            except SystemdError as e:
                log.error("arming the dead-man switch%s failed: %s", why, e)
                return False
            self._armed = name
            return True

    async def hand_over(self) -> bool:
        """`systemctl restart fleetd`: move the machine to a restart lease and arm the dead-man
        timer for it, so the next fleetd adopts the units instead of finding them fenced
        (`fencing.HANDOVER_TTL_S`). Call after the components stopped. False if it could not
        (the armed timer then fences at the old lease's fence point, as after a crash)."""
        if self.fenced:
            return False
        got = await self.session.hand_over()
        if got is None:
            return False
        lease, sent = got
        async with self._lock:
            records = [r for r in map(self.state_record, sorted(self.applied)) if r is not None]
            try:
                if records:
                    await asyncio.wait_for(self.registry.publish_states(records, lease),
                                           fencing.HANDOVER_TIMEOUT_S)
            except (EtcdError, TimeoutError) as e:
                log.warning("republishing states for the restart failed: %s", e)
            # The machine key is on the new lease now: arm its timer before the old one goes.
            return await self._arm_at(lambda: fencing.fence_delay_s(
                fencing.HANDOVER_TTL_S, clock.now() - sent), " for the restart")

    def _stop_bound_s(self) -> float:
        """The longest stop a unit known here may take (`fencing.unit_stop_bound_s`: a unit
        stating its own TimeoutStopSec= keeps it): how long a fence or purge waits."""
        bound = fencing.FENCE_STOP_BOUND_S
        for name, (_, text) in self.texts.items():
            if name.endswith(".service"):
                bound = max(bound, _stop_bound(name, text))
        return bound

    async def disarm(self) -> None:
        """Stop every dead-man timer (after a purge: nothing is left to fence)."""
        for name in await self.systemd.list_fence_timers():
            await self.systemd.stop_unit(name)
        self._armed = None

    def purge_bound_s(self) -> float:
        """The longest `purge` waits for stops: the fenced units to inactive, then the rest
        (the global units), each bounded by the longest stop a unit here may take."""
        return 2 * self._stop_bound_s() + fencing.FENCE_TIMER_LATENCY_S

    async def purge(self, before_reload: Callable[[], object] | None = None,
                    after_reload: Callable[[], object] | None = None) -> bool:
        """`systemctl stop fleetd`: stop every fleet unit (non-global ones through the fence,
        to inactive), unload them (files removed; a daemon-reload only if one had [Install]
        links, as for a destroy, between `before_reload` and `after_reload`) and disarm the
        switch. True if the non-global units are known inactive (then the lease may be
        revoked)."""
        self.fenced = True
        fenced = False
        async with self._lock:
            files = self.systemd.read_unit_files()
            names = set(files)
            bound = self._stop_bound_s()
            try:
                fenced = await self.systemd.fence(bound + fencing.FENCE_TIMER_LATENCY_S)
            except SystemdError as e:
                log.error("purge: fence failed: %s", e)
            if not fenced:
                # The armed timer stays: it fences at the lease deadline whatever happens next.
                log.error("purge: non-global units not known inactive; keeping the switch")
            for name in sorted(names):
                try:
                    await self.systemd.stop_unit(name)
                except SystemdError as e:
                    log.error("purge: stopping %s failed: %s", name, e)
            await self._wait_inactive(names, bound)
            for name in sorted(names):
                try:
                    self.systemd.remove_unit_file(name)
                except SystemdError as e:
                    log.error("purge: %s", e)
            if any(has_install_section(text) for text in files.values()):
                if before_reload is not None:
                    before_reload()
                await self.systemd.daemon_reload()
                if after_reload is not None:
                    after_reload()
            if fenced:
                await self.disarm()
                # Leave no active fence target behind: the next fleetd must not take it for a
                # firing of its own timer.
                try:
                    await self.systemd.stop_unit(fencing.FENCE_TARGET)
                except SystemdError as e:
                    log.warning("purge: stopping %s failed: %s", fencing.FENCE_TARGET, e)
            log.info("purged %d units: %s", len(names), ", ".join(sorted(names)) or "none")
        return fenced

    async def _wait_inactive(self, names: set[str], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while names:
            statuses = await self.systemd.list_units(names)
            names = {n for n, st in statuses.items()
                     if st.active_state not in ("inactive", "failed")}
            if not names or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if names:
            log.error("purge: still stopping after %.0fs: %s", timeout_s, ", ".join(names))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)


def _options(name: str, text: str) -> tuple[tuple[str, str, str], ...] | None:
    try:
        return UnitFile.parse(text, name=name).options
    except UnitError:
        return None


def _stop_bound(name: str, text: str) -> float:
    return fencing.stop_bound_of(_options(name, text))


def _drop_in(unit: DesiredUnit) -> str | None:
    return fencing.fence_drop_in(unit.name, _options(unit.name, unit.text), unit.is_global)


def _describe(task: Task) -> str:
    kind = type(task).__name__
    if isinstance(task, LoadNew):
        return f"{kind} ({len(task.names)} units)"
    if isinstance(task, StartUnit) and task.restart:
        kind = "RestartUnit"
    name = getattr(task, "name", "")
    return f"{kind} {name}".strip()
