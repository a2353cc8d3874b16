"""Typed operations over the etcd schema (see `schema.py`): the only code that talks to etcd."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fleetd.metadata import MAX_METADATA_KEYS, check_count
from fleetd.registry._etcd import (
    MAX_TXN_OPS,
    Cmp,
    Delete,
    EtcdClient,
    EtcdError,
    Op,
    Put,
    WatchCompacted,
    WatchEvent,
    backoff_sleep,
)
from fleetd.registry.changes import Event, WatchView, diff
from fleetd.registry.model import (
    Change,
    ClusterState,
    UnitView,
    decode_change,
    state_from,
)
from fleetd.registry.schema import (
    TARGET_STATES,
    DrainRecord,
    Keys,
    MachineRecord,
    MoveRecord,
    ScheduleEntry,
    UnitRecord,
    UnitStateRecord,
    decode,
    decode_metadata,
    encode,
    merge_metadata,
)

log = logging.getLogger("fleetd.registry")

__all__ = [
    "Change",
    "ClusterState",
    "EtcdError",
    "Follower",
    "MachineIdConflict",
    "NotLeader",
    "Registry",
    "RegistryError",
    "UnitConflict",
    "UnitNotFound",
    "UnitView",
    "Update",
    "WatchCompacted",
    "WatchEvent",
]


class RegistryError(Exception):
    """A registry operation was refused; the message names the unit and the reason."""


class UnitNotFound(RegistryError):
    pass


class UnitConflict(RegistryError):
    """A different file already exists under the name, or a concurrent change won."""


class NotLeader(RegistryError):
    """The engine lost its leadership while writing decisions."""


class MachineIdConflict(RegistryError):
    """Another live machine (another lease, another host) holds this machine id's registration.

    Two hosts with one /etc/machine-id (a cloned image) must not share a registration: the
    second would take over the first's units. `other` is the registration found."""

    def __init__(self, machine_id: str, other: MachineRecord) -> None:
        where = ", ".join(p for p in (f"ip {other.ip}" if other.ip else "",
                                      f"hostname {other.hostname}" if other.hostname else "")
                          if p) or "unknown address"
        super().__init__(
            f"machine id {machine_id} is already registered by another live machine ({where}); "
            "refusing to take over its registration: give this host its own /etc/machine-id "
            "(e.g. rm /etc/machine-id && systemd-machine-id-setup)")
        self.machine_id = machine_id
        self.other = other


@dataclass(frozen=True)
class Update:
    """One step of a `Follower`.

    kind: "reset" (a fresh read: `state` is a new object; `compacted` when it replaces a state
    whose watch history was compacted away, and `events` then says what changed in between),
    "changes" (one watch batch: `changes` applied to `state`, `events` what they touched),
    "progress" (etcd confirmed every change up to `revision` is in `state`), or "interrupted"
    (the watch broke; the follower resumes it after a backoff)."""

    kind: str
    revision: int
    state: ClusterState
    changes: tuple[Change, ...] = ()
    events: tuple[Event, ...] = ()
    compacted: bool = False
    reason: str = ""  # why a "reset" after the first, or an "interrupted", came


class Follower:
    """A `ClusterState` of one prefix, kept current by one watch: the only read-watch-resync
    loop of fleetd. Iterate it for its `Update`s; `state` is the latest state.

    The first read is linearizable (at `revision` when non-zero, for a watcher resuming its
    own history); its failure is raised unless `retry_first_read`. Then the watch runs from
    the revision after the read; a compacted watch (its history is gone) re-reads and yields a
    "reset"; a connection fault, or a stream that ends, resumes the watch from the last
    revision applied, after a backoff (an "interrupted" update first)."""

    def __init__(self, registry: Registry, prefix: str, revision: int = 0,
                 retry_first_read: bool = False) -> None:
        self.registry = registry
        self.prefix = prefix
        self.revision = revision
        self.retry_first_read = retry_first_read
        self.state: ClusterState | None = None
        self._view: WatchView | None = None

    def __aiter__(self) -> AsyncGenerator[Update, None]:
        return self._run()

    async def _read(self, revision: int) -> ClusterState:
        kvs, rev = await self.registry.etcd.get_prefix(self.prefix, revision)
        st = state_from(self.registry.keys, kvs, rev)
        if revision:
            st.revision = revision  # the header says etcd's current one
        return st

    async def _run(self) -> AsyncGenerator[Update, None]:
        keys = self.registry.keys
        attempt = 0
        need_read = True
        compacted = False
        why = ""
        while True:
            try:
                if need_read:
                    old = self.state
                    fresh = await self._read(self.revision if old is None else 0)
                    need_read = False
                    self.state, self._view = fresh, WatchView(fresh)
                    events = tuple(diff(old, fresh)) if old is not None and compacted else ()
                    yield Update("reset", fresh.revision, fresh, events=events,
                                 compacted=compacted, reason=why)
                    compacted = False
                view, st = self._view, self.state
                assert view is not None and st is not None
                stream = self.registry.etcd.open_watch(self.prefix, st.revision + 1)
                async for batch, revision in stream.responses():
                    attempt = 0
                    if batch:
                        changes = tuple(c for c in (decode_change(keys, ev.kv.key,
                                                                  None if ev.kind == "delete"
                                                                  else ev.kv.value,
                                                                  ev.revision)
                                                    for ev in batch) if c is not None)
                        events = tuple(view.apply(changes))
                        st.revision = max(st.revision, max(ev.revision for ev in batch))
                        yield Update("changes", st.revision, st, changes, events)
                    else:  # a progress notification: every event up to `revision` is in
                        st.revision = max(st.revision, revision)
                        yield Update("progress", st.revision, st)
                raise EtcdError(f"etcd watch on {self.prefix} ended")
            except WatchCompacted as e:
                log.info("%s; reading %s again", e, self.prefix)
                need_read = compacted = True
                why = str(e)
            except EtcdError as e:
                if self.state is None and not self.retry_first_read:
                    raise
                log.warning("following %s: %s; resuming", self.prefix, e)
                if self.state is not None:
                    yield Update("interrupted", self.state.revision, self.state, reason=str(e))
                await backoff_sleep(attempt)
                attempt += 1


class Registry:
    """fleet-py's cluster state in etcd, through typed operations and transactions."""

    def __init__(self, client: EtcdClient, prefix: str) -> None:
        self.etcd = client
        self.keys = Keys(prefix)

    async def close(self) -> None:
        await self.etcd.close()

    # --- units and desired state (API) ----------------------------------------------------
    async def get_unit(self, name: str) -> UnitView | None:
        kv = await self.etcd.get(self.keys.unit(name))
        if kv is None:
            return None
        d = await self.etcd.get(self.keys.desired_state(name))
        return state_from(self.keys, [kv, d] if d else [kv], 0).units.get(name)

    async def create_unit(self, record: UnitRecord, target_state: str = "inactive") -> bool:
        """Submit `record`; returns False if the very same file already existed (nothing changed).

        Raises UnitConflict if a different file exists under the name: fleet refuses to change a
        unit in place (use replace_unit for that)."""
        _check_state(target_state)
        key = self.keys.unit(record.name)
        ok, _ = await self.etcd.txn(
            [Cmp(key, "create", "==", 0)],
            [Put(key, encode(record)),
             Put(self.keys.desired_state(record.name), encode(target_state))],
        )
        if ok:
            return True
        existing = await self.etcd.get(key)
        if existing is None:  # destroyed in between: try once more
            return await self.create_unit(record, target_state)
        old = decode(UnitRecord, existing.value)
        if old.hash != record.hash:
            raise UnitConflict(
                f"unit {record.name} already exists with a different file (hash {old.hash[:7]}, "
                f"new {record.hash[:7]}); destroy it first or use --replace")
        return False

    async def create_units(self, records: Sequence[tuple[UnitRecord, str]]
                           ) -> list[bool | RegistryError | EtcdError]:
        """`create_unit` of each (record, target state), answers in order (a refused unit as
        its error). The new ones are written together, in transactions of 64 (a guard and two
        puts each) one right after the other, so watchers see them as one change (the engine
        waits for the rest after a transaction of 64: `BULK_UNITS`). A transaction refused
        because some of its names exist already is done again unit by unit: each of them then
        gets exactly the answer `create_unit` gives. If etcd fails, the units of the
        transactions it failed get that error; those written stay written."""
        for _, state in records:
            _check_state(state)
        per_txn = MAX_TXN_OPS // 2
        chunks = [records[i:i + per_txn] for i in range(0, len(records), per_txn)]
        return [a for c in chunks for a in await self._create_chunk(c)]

    async def _create_chunk(self, chunk: Sequence[tuple[UnitRecord, str]]
                            ) -> list[bool | RegistryError | EtcdError]:
        keys = [self.keys.unit(r.name) for r, _ in chunk]
        out: list[bool | RegistryError | EtcdError] = []
        try:
            if len(set(keys)) == len(keys):
                ok, _ = await self.etcd.txn(
                    [Cmp(k, "create", "==", 0) for k in keys],
                    [op for (r, state), k in zip(chunk, keys, strict=True)
                     for op in (Put(k, encode(r)),
                                Put(self.keys.desired_state(r.name), encode(state)))])
                if ok:
                    return [True] * len(chunk)
            for r, state in chunk:
                try:
                    out.append(await self.create_unit(r, state))
                except RegistryError as e:
                    out.append(e)
        except EtcdError as e:
            out.extend([e] * (len(chunk) - len(out)))
        return out

    async def replace_unit(self, record: UnitRecord) -> None:
        """Replace the file of an existing unit in place (its desired state is kept)."""
        key = self.keys.unit(record.name)
        ok, _ = await self.etcd.txn([Cmp(key, "create", ">", 0)], [Put(key, encode(record))])
        if not ok:
            raise UnitNotFound(f"unit {record.name} does not exist")

    async def set_target_state(self, name: str, target_state: str) -> None:
        """Set the desired state of an existing unit, atomically with its existence check."""
        _check_state(target_state)
        ok, _ = await self.etcd.txn(
            [Cmp(self.keys.unit(name), "create", ">", 0)],
            [Put(self.keys.desired_state(name), encode(target_state))],
        )
        if not ok:
            raise UnitNotFound(f"unit {name} does not exist")

    async def destroy_unit(self, name: str) -> None:
        """Remove a unit and its desired state; the engine then unschedules it everywhere."""
        ok, _ = await self.etcd.txn(
            [Cmp(self.keys.unit(name), "create", ">", 0)],
            [Delete(self.keys.unit(name)), Delete(self.keys.desired_state(name)),
             Delete(self.keys.unschedulable_reason(name))],
        )
        if not ok:
            raise UnitNotFound(f"unit {name} does not exist")

    # --- whole-cluster reads --------------------------------------------------------------
    async def cluster_state(self, revision: int = 0) -> ClusterState:
        """Read every unit, machine, assignment and state under the prefix at one revision
        (the current one, or `revision` when non-zero)."""
        kvs, rev = await self.etcd.get_prefix(self.keys.root, revision)
        return state_from(self.keys, kvs, rev)

    async def current_revision(self) -> int:
        """etcd's current revision, by a linearizable (quorum) read: every write acknowledged
        before the call has a revision at most this."""
        return await self.etcd.current_revision()

    async def sync_barrier(self) -> int:
        """Write the sync key; its revision. That revision is above every write acknowledged
        before the call, and a watch of the root delivers the sync event after all of those
        (a watch sends events in revision order, without gaps)."""
        return await self.etcd.put(self.keys.sync, b"")

    def follow(self, prefix: str | None = None, *, revision: int = 0,
               retry_first_read: bool = False) -> Follower:
        """Follow `prefix` (default: everything): a `ClusterState` kept current by one watch.

        See `Follower`: a linearizable read first (at `revision` when non-zero), then a watch
        from the revision after it; a compacted watch re-reads and starts over, a connection
        fault resumes the watch where it stopped."""
        return Follower(self, self.keys.root if prefix is None else prefix, revision,
                        retry_first_read)

    async def states_and_machines(self, units: Iterable[str] | None = None
                                  ) -> tuple[list[UnitStateRecord], list[MachineRecord]]:
        """Published unit states (of `units`, or all) and live machines, in one round trip."""
        k = self.keys
        ranges = ([(k.states + u + "/", True, False) for u in units] if units is not None
                  else [(k.states, True, False)])
        groups, rev = await self.etcd.get_many([*ranges, (k.machines, True, False)])
        st = state_from(k, [kv for group in groups for kv in group], rev)
        return ([s for per in st.states.values() for s in per.values()],
                list(st.configured.values()))

    async def unit_state(self, name: str) -> ClusterState | None:
        """Everything about one unit (record, desired state, assignments, reported states,
        unschedulable reason) in one round trip; None if the unit does not exist. Machines
        are not filled in."""
        k = self.keys
        (unit, desired, states, reason, sched), rev = await self.etcd.get_many([
            (k.unit(name), False, False), (k.desired_state(name), False, False),
            (k.states + name + "/", True, False), (k.unschedulable_reason(name), False, False),
            (k.schedule, True, True)])
        if not unit:
            return None
        st = state_from(k, [*unit, *desired, *states, *reason], rev)
        if name not in st.units:
            return None  # (an undecodable record counts as none)
        rec = st.units[name].record
        for kv in sched:
            machine_id, assigned = k.split_assignment(kv.key)
            if assigned == name:  # keys only: the entry's details are not needed here
                st.schedule.setdefault(name, {})[machine_id] = ScheduleEntry(
                    name, machine_id, "", rec.hash)
        return st

    # --- machine drain (fleetctl drain/undrain) ------------------------------------------
    async def set_drain(self, record: DrainRecord) -> None:
        """Mark a machine draining (or change how it drains); persistent until `clear_drain`."""
        await self._apply([Put(self.keys.machine_drain(record.machine_id), encode(record))])

    async def clear_drain(self, machine_id: str) -> None:
        await self._apply([Delete(self.keys.machine_drain(machine_id))])

    async def request_move(self, record: MoveRecord) -> bool:
        """Ask the engine to move a unit (phase "requested"); False if a move of it is already
        in flight."""
        key = self.keys.move(record.unit)
        kv = await self.etcd.get(key)
        guard = Cmp(key, "create", "==", 0)
        if kv is not None:  # a pinned, blocked or failed move is over: a request replaces it
            c = decode_change(self.keys, key, kv.value, kv.mod_revision)
            if c is not None and c.record is not None and c.record.phase not in (
                    "pinned", "blocked", "failed"):
                return False
            guard = Cmp(key, "mod", "==", kv.mod_revision)
        ok, _ = await self.etcd.txn([guard], [Put(key, encode(record))])
        return bool(ok)

    def move_op(self, unit: str, record: MoveRecord | None) -> Op:
        """The engine's write of a move record (None: delete it)."""
        key = self.keys.move(unit)
        return Delete(key) if record is None else Put(key, encode(record))

    # --- machine metadata set through the API ------------------------------------------
    async def machine_metadata(self, machine_id: str) -> dict[str, str | None]:
        """The persisted (API-set) metadata of one machine; null values are removals."""
        kv = await self.etcd.get(self.keys.machine_metadata(machine_id))
        return decode_metadata(kv.value) if kv else {}

    async def update_machine_metadata(
            self, changes: Mapping[str, Sequence[tuple[str, str | None]]],
            attempts: int = 20) -> None:
        """Apply (key, value) changes per machine id, in order, in one transaction.

        A None value records a removal (it hides the key of the machine's configured metadata).
        Each machine's document is compared by mod revision, so concurrent patches never lose
        each other's changes; the whole batch retries on a conflict."""
        for _ in range(attempts):
            guards: list[Cmp] = []
            ops: list[Op] = []
            for mid, items in changes.items():
                key = self.keys.machine_metadata(mid)
                kv = await self.etcd.get(key)
                doc = decode_metadata(kv.value) if kv else {}
                guards.append(Cmp(key, "mod", "==", kv.mod_revision if kv else 0))
                for k, v in items:
                    doc[k] = v
                await self._check_metadata_count(mid, doc)
                ops.append(Put(key, encode(doc)))
            if not ops:
                return
            if len(guards) + len(ops) > MAX_TXN_OPS:
                raise RegistryError(f"too many machines in one metadata change "
                                    f"({len(ops)}, at most {MAX_TXN_OPS // 2})")
            ok, _ = await self.etcd.txn(guards, ops)
            if ok:
                return
        raise RegistryError("machine metadata kept changing concurrently; try again")

    async def _check_metadata_count(self, machine_id: str, doc: dict[str, str | None]) -> None:
        """MetadataError if the machine's effective metadata would exceed its key limit."""
        configured: dict[str, str] = {}
        kv = await self.etcd.get(self.keys.machine(machine_id))
        if kv is not None:
            configured = decode(MachineRecord, kv.value).metadata
        check_count(len(merge_metadata(configured, doc)), machine_id)
        if len(doc) > 2 * MAX_METADATA_KEYS:  # tombstones count too: they are stored
            check_count(len(doc), machine_id)

    # --- machines and leases (agent) ------------------------------------------------------
    async def grant_lease(self, ttl_s: int) -> int:
        return await self.etcd.grant(ttl_s)

    async def renew_lease(self, lease: int, timeout_s: float | None = None) -> int:
        return await self.etcd.keepalive_once(lease, timeout_s)

    async def revoke_lease(self, lease: int) -> None:
        await self.etcd.revoke(lease)

    async def register_machine(self, machine: MachineRecord, lease: int) -> None:
        """Register `machine` on `lease`: create-if-absent, never over another machine's key.

        The key may be written when it is absent, already on `lease`, or held by a registration
        from the same host (same IP and hostname: this host's previous fleetd, whose lease has
        not expired yet, e.g. a restart that adopts its units). Anything else is another live
        machine with the same id: MachineIdConflict, nothing written. Every write is a
        transaction guarded by what was read, so two fleetds racing cannot both win."""
        key = self.keys.machine(machine.id)
        value = encode(machine)
        for _ in range(10):
            ok, _ = await self.etcd.txn([Cmp(key, "create", "==", 0)], [Put(key, value, lease)])
            if ok:
                return
            kv = await self.etcd.get(key)
            if kv is None:
                continue  # its lease expired in between: create it again
            if kv.lease != lease:
                other = decode(MachineRecord, kv.value)
                if (other.ip, other.hostname) != (machine.ip, machine.hostname):
                    raise MachineIdConflict(machine.id, other)
            ok, _ = await self.etcd.txn([Cmp(key, "mod", "==", kv.mod_revision)],
                                        [Put(key, value, lease)])
            if ok:
                return
        raise RegistryError(f"registration of machine {machine.id} kept changing "
                            "concurrently; try again")

    async def guard_registration(self, machine: Callable[[], MachineRecord],
                                 lease: Callable[[], int]) -> None:
        """Watch this machine's own key for as long as it runs: restore it when it vanishes
        while `lease()` is live (deleted by hand, or overwritten by an impostor whose lease
        then expired); raise MachineIdConflict when another lease holds it.

        `lease()` returning 0 means the session has no lease (it is registering anew): the
        key is then left alone. Returns never; raises EtcdError only for the caller to retry
        (the loop itself resumes its watch after connection faults)."""
        attempt = 0
        while True:
            try:
                mid = machine().id
                key = self.keys.machine(mid)
                kvs, rev = await self.etcd.get_prefix(key)
                await self._check_registration(machine, lease, next(
                    (kv for kv in kvs if kv.key == key), None))
                attempt = 0
                async for batch in self.etcd.watch_prefix(key, rev + 1):
                    if any(ev.kv.key == key for ev in batch):
                        await self._check_registration(machine, lease, await self.etcd.get(key))
            except (EtcdError, WatchCompacted):
                await backoff_sleep(attempt)
                attempt += 1

    async def _check_registration(self, machine: Callable[[], MachineRecord],
                                  lease: Callable[[], int], kv: Any) -> None:
        own = lease()
        if not own:
            return
        record = machine()
        if kv is None:
            log.warning("machine %s: its registration vanished while lease %x is live; "
                        "restoring it", record.id, own)
            await self.register_machine(record, own)
        elif kv.lease != own:
            other = decode(MachineRecord, kv.value)
            if lease() == own:  # not re-registering meanwhile
                log.error("machine %s: registration taken over by lease %x (ip %s, "
                          "hostname %s); this fleetd stops acting for it", record.id,
                          kv.lease, other.ip, other.hostname)
                raise MachineIdConflict(record.id, other)

    async def list_machines(self) -> dict[str, MachineRecord]:
        kvs, rev = await self.etcd.get_prefix(self.keys.machines)
        return state_from(self.keys, kvs, rev).configured

    async def machine_leases(self) -> dict[str, tuple[int, int]]:
        """Each registered machine's lease as etcd counts it: machine id -> (granted TTL,
        whole seconds left). One read of the machine keys, then one LeaseTimeToLive per
        machine, concurrently; a lease gone in between is left out."""
        kvs, _ = await self.etcd.get_prefix(self.keys.machines)
        owners = {kv.key[len(self.keys.machines):]: kv.lease for kv in kvs if kv.lease}
        owners = {mid: lease for mid, lease in owners.items() if mid and "/" not in mid}
        ttls = await asyncio.gather(*(self.etcd.lease_ttl(lease) for lease in owners.values()))
        return {mid: ttl for mid, ttl in zip(owners, ttls, strict=True) if ttl[1] >= 0}

    async def machine_registration(self, machine_id: str
                                   ) -> tuple[MachineRecord, int, int, int] | None:
        """`machine_id`'s registration: (record, lease, the lease's granted TTL, whole
        seconds it has left as etcd counts them, -1 when gone); None if not registered."""
        kv = await self.etcd.get(self.keys.machine(machine_id))
        if kv is None or not kv.lease:
            return None
        granted, left = await self.etcd.lease_ttl(kv.lease)
        return decode(MachineRecord, kv.value), kv.lease, granted, left

    async def move_machine_to_lease(self, machine_id: str, old_lease: int,
                                    new_lease: int) -> int:
        """Move `machine_id`'s live keys on `old_lease` (its registration, the unit states
        it published) to `new_lease`, guarded by their mod revisions; the engine leadership
        stays on `old_lease`. The registration moves in the first transaction or nothing
        does: returns how many keys moved, 0 if the registration is not on `old_lease` (gone,
        or changed meanwhile)."""
        registration = self.keys.machine(machine_id)
        on_lease = await self.etcd.lease_keys(old_lease)
        if registration not in on_lease:
            return 0
        keys = [registration] + [k for k in on_lease if k.startswith(self.keys.states)
                                 and k.endswith("/" + machine_id)]
        moved = 0
        per_txn = MAX_TXN_OPS // 2  # a guard and a put per key
        for i in range(0, len(keys), per_txn):
            got, _ = await self.etcd.get_many([(k, False, False)
                                               for k in keys[i:i + per_txn]])
            kvs = [kv[0] for kv in got if kv and kv[0].lease == old_lease]
            if i == 0 and not (kvs and kvs[0].key == registration):
                return 0
            ok, _ = await self.etcd.txn([Cmp(kv.key, "mod", "==", kv.mod_revision) for kv in kvs],
                                        [Put(kv.key, kv.value, new_lease) for kv in kvs])
            if ok:
                moved += len(kvs)
            elif i == 0:
                return 0
        return moved

    async def publish_states(self, states: Iterable[UnitStateRecord], lease: int) -> None:
        ops: list[Op] = [Put(self.keys.state(s.unit, s.machine_id), encode(s), lease)
                         for s in states]
        await self._apply(ops)

    async def clear_states(self, machine_id: str, units: Iterable[str]) -> None:
        await self._apply([Delete(self.keys.state(u, machine_id)) for u in units])

    async def machine_schedule(self, machine_id: str) -> tuple[dict[str, ScheduleEntry], int]:
        kvs, rev = await self.etcd.get_prefix(self.keys.machine_schedule(machine_id))
        sched = state_from(self.keys, kvs, rev).schedule
        return {u: per[machine_id] for u, per in sched.items() if machine_id in per}, rev

    async def unit_texts(self, names: Iterable[str]) -> dict[str, UnitRecord]:
        """The records of `names` (those that exist), in one read-only transaction per
        `MAX_TXN_OPS` names rather than one GET each."""
        wanted = list(dict.fromkeys(names))
        out = {}
        for i in range(0, len(wanted), MAX_TXN_OPS):
            chunk = wanted[i:i + MAX_TXN_OPS]
            groups, _ = await self.etcd.get_many([(self.keys.unit(n), False, False)
                                                  for n in chunk])
            for n, kvs in zip(chunk, groups, strict=True):
                if kvs:
                    out[n] = decode(UnitRecord, kvs[0].value)
        return out

    # --- engine ---------------------------------------------------------------------------
    async def try_acquire_leadership(self, machine_id: str, lease: int) -> bool:
        ok, _ = await self.etcd.txn(
            [Cmp(self.keys.leader, "create", "==", 0)],
            [Put(self.keys.leader, machine_id.encode(), lease)],
        )
        if ok:
            return True
        cur = await self.etcd.get(self.keys.leader)
        return cur is not None and cur.value.decode() == machine_id and cur.lease == lease

    async def leader(self) -> str | None:
        cur = await self.etcd.get(self.keys.leader)
        return cur.value.decode() if cur else None

    async def resign_leadership(self, machine_id: str) -> None:
        await self.etcd.txn([Cmp(self.keys.leader, "value", "==", machine_id.encode())],
                            [Delete(self.keys.leader)])

    async def write_decisions(self, machine_id: str, lease: int, ops: Sequence[Op]) -> None:
        """Apply engine writes, each transaction guarded by this engine still being the leader."""
        guard = [Cmp(self.keys.leader, "value", "==", machine_id.encode()),
                 Cmp(self.keys.leader, "lease", "==", lease)]
        for i in range(0, len(ops), MAX_TXN_OPS):
            ok, _ = await self.etcd.txn(guard, ops[i:i + MAX_TXN_OPS])
            if not ok:
                raise NotLeader(f"machine {machine_id} is no longer the engine leader")

    def assign_op(self, entry: ScheduleEntry) -> Op:
        return Put(self.keys.assignment(entry.machine_id, entry.unit), encode(entry))

    def unassign_op(self, machine_id: str, unit: str) -> Op:
        return Delete(self.keys.assignment(machine_id, unit))

    def unschedulable_op(self, unit: str, reason: str | None) -> Op:
        key = self.keys.unschedulable_reason(unit)
        if reason is None:
            return Delete(key)
        return Put(key, encode({"reason": reason, "since_ns": time.time_ns()}))

    async def _apply(self, ops: Sequence[Op]) -> None:
        for i in range(0, len(ops), MAX_TXN_OPS):
            await self.etcd.txn([], ops[i:i + MAX_TXN_OPS])


def _check_state(state: str) -> None:
    if state not in TARGET_STATES:
        raise RegistryError(f"invalid target state {state!r}: expected one of "
                            + ", ".join(TARGET_STATES))

