"""An in-memory copy of the cluster state, kept current by one etcd watch, for the API's reads.

Listing 10,000 units by re-reading and decoding every key costs most of a second; the view
answers from memory. Reads stay linearizable: `snapshot()` first writes the sync key (a
"barrier", `Registry.sync_barrier`), whose revision is above every write etcd acknowledged
before the read, by any fleetd; then it waits until the view's own watch has delivered that
event. A watch sends events in revision order without gaps, so by then the view holds every
one of those writes. Reads that arrive while a barrier is in flight share the next one.
(The view used to wait for a progress notification at etcd's current revision instead: etcd
3.4.23, Debian 12's, sends a requested notification ahead of events still queued for the
watch, etcd-io/etcd#15220, fixed in 3.4.26 and 3.5.8; reads then missed writes acknowledged
before them, 5-6 of 150 in tests/integration/test_view_linearizable.py.) If the view is
not in sync (starting, resyncing, or etcd does not answer in time) the read falls back to a
full `Registry.cluster_state()`.

The view also stamps the units each change touched (`unit_stamps`; `generation` counts fresh
reads), so a list answer can re-encode only the rows whose object changed since
the last one (`fleetd.api.service.RowCache`).

And it feeds the API's Watch streams (`subscribe`): one etcd watch for all of them. A stream
of some units (a blocking fleetctl waits on its own) costs a snapshot of those units and the
events that touch them, whatever the size of the cluster: the view hands each event only to
the subscriptions of its unit (`Subscription`).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

from fleetd.registry._etcd import EtcdError
from fleetd.registry.changes import Event
from fleetd.registry.model import UNIT_DELETED, UNIT_PUT, ClusterState
from fleetd.registry.registry import Follower, Registry, Update

log = logging.getLogger("fleetd.registry.view")


#: What `Subscription.next()` returns instead of an item: the subscription fell more than its
#: limit behind (its items are gone: send a fresh snapshot, then go on), or the view stopped.
OVERFLOWED = "overflowed"
ENDED = "ended"
#: Items a subscription holds before it overflows.
SUBSCRIPTION_LIMIT = 10_000


class Subscription:
    """The events of a `ClusterView` for some units (all when `names` is None), each turned
    by `convert(state, event)` into an item (None: not wanted) as the view applies it, so an
    item shows the state right after its event. Read them with `next()`; `close()` when
    done."""

    def __init__(self, view: ClusterView, names: frozenset[str] | None, machines: bool,
                 convert: Callable[[ClusterState, Event], Any], limit: int) -> None:
        self.view, self.names, self.machines = view, names, machines
        self._convert, self._limit = convert, limit
        self._items: deque[Any] = deque()
        self._ready = asyncio.Event()
        self.overflowed = False  # items were dropped; cleared by `resume()`
        self.ended = False

    def offer(self, st: ClusterState, ev: Event) -> None:
        if self.overflowed or self.ended:
            return
        item = self._convert(st, ev)
        if item is None:
            return
        if len(self._items) >= self._limit:
            self.overflow()
            return
        self._items.append(item)
        self._ready.set()

    def overflow(self) -> None:
        self._items.clear()
        self.overflowed = True
        self._ready.set()

    def resume(self) -> None:
        """After an OVERFLOWED, take items again (call it as the fresh snapshot is made,
        without awaiting in between: no event falls between the two)."""
        self.overflowed = False

    def end(self) -> None:
        self.ended = True
        self._ready.set()

    async def next(self) -> Any:
        """The next item, or OVERFLOWED, or ENDED."""
        while True:
            if self.ended:
                return ENDED
            if self.overflowed:
                return OVERFLOWED
            if self._items:
                return self._items.popleft()
            self._ready.clear()
            await self._ready.wait()

    def close(self) -> None:
        self.view._unsubscribe(self)


class ClusterView:
    """The registry's state in memory; `snapshot()` returns it once proven current."""

    def __init__(self, registry: Registry, *, sync_timeout_s: float = 1.0) -> None:
        self.registry = registry
        self.sync_timeout_s = sync_timeout_s
        self.state: ClusterState | None = None  # None until the first read
        self._follower: Follower | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.fallbacks = 0
        # Change stamps of the current `state` (a fresh read bumps `generation` and clears
        # them): a unit's stamp changes whenever anything a list shows of it may have (its
        # record, desired state, schedule, reported states, reason, move); units untouched
        # since the read have none.
        self.generation = 0
        self.unit_stamps: dict[str, int] = {}
        self._tick = 0
        # Watch subscriptions: of every unit; of some units, by unit; those of some units
        # that also want the machines' events.
        self._subs_all: list[Subscription] = []
        self._subs_by_name: dict[str, list[Subscription]] = {}
        self._subs_machines: list[Subscription] = []
        self._stopped = False  # the view's task ended: subscriptions end too
        self._queued: asyncio.Future[int] | None = None  # the next barrier's revision
        self._inflight: asyncio.Future[None] | None = None  # the barrier being written

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def snapshot(self) -> ClusterState:
        """The cluster state, at least as new as every write etcd acknowledged before the
        call. The object is shared: read it, do not mutate it."""
        if self._follower is not None and self.state is not None:
            try:
                need = await asyncio.wait_for(asyncio.shield(self._join_barrier()),
                                              self.sync_timeout_s)
            except (TimeoutError, EtcdError):
                need = 0
            if need and await self._reached(need):
                assert self.state is not None
                return self.state
        self.fallbacks += 1
        return await self.registry.cluster_state()

    def subscribe(self, names: Collection[str] | None, machines: bool,
                  convert: Callable[[ClusterState, Event], Any],
                  limit: int = SUBSCRIPTION_LIMIT) -> Subscription:
        """A subscription to every event applied from now on (of the units `names`, or all;
        machine events too when `machines`). Call it right after `snapshot()` returned the
        view's own state, without awaiting in between: the subscription then starts exactly
        where that state ends."""
        sub = Subscription(self, frozenset(names) if names is not None else None, machines,
                           convert, limit)
        if sub.names is None:
            self._subs_all.append(sub)
        else:
            for n in sub.names:
                self._subs_by_name.setdefault(n, []).append(sub)
            if machines:
                self._subs_machines.append(sub)
        if self._stopped:
            sub.end()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub.names is None:
            if sub in self._subs_all:
                self._subs_all.remove(sub)
            return
        for n in sub.names:
            subs = self._subs_by_name.get(n)
            if subs and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._subs_by_name[n]
        if sub in self._subs_machines:
            self._subs_machines.remove(sub)

    def _subscriptions(self) -> list[Subscription]:
        subs = {id(s): s for per in self._subs_by_name.values() for s in per}
        return [*self._subs_all, *subs.values()]

    def _dispatch(self, st: ClusterState, events: Collection[Event]) -> None:
        every, by_name, machines = self._subs_all, self._subs_by_name, self._subs_machines
        for ev in events:
            for sub in every:
                sub.offer(st, ev)
            if ev.kind.startswith("machine"):
                for sub in machines:
                    sub.offer(st, ev)
            else:
                for sub in by_name.get(ev.name, ()):
                    sub.offer(st, ev)

    def _join_barrier(self) -> asyncio.Future[int]:
        """The revision of a barrier written after this call: the queued one (not yet
        written), else a new one, written at once unless one is in flight (then right after
        it: one in flight at a time, however many reads wait)."""
        fut = self._queued
        if fut is None:
            fut = self._queued = asyncio.get_running_loop().create_future()
            # a read that gave up waiting leaves the outcome unread: not an error to report
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            if self._inflight is None:
                self._write_barrier()
        return fut

    def _write_barrier(self) -> None:
        fut, self._queued = self._queued, None
        assert fut is not None

        async def write() -> None:
            try:
                fut.set_result(await self.registry.sync_barrier())
            except Exception as e:  # EtcdError, or whatever failed: the reads fall back
                fut.set_exception(e)
            finally:
                self._inflight = None
                if self._queued is not None:
                    self._write_barrier()

        self._inflight = asyncio.ensure_future(write())

    async def _reached(self, need: int) -> bool:
        """True once the view has applied every change up to revision `need` (within the
        timeout): its own watch delivers the barrier of `need` after all of them."""
        st = self.state
        if st is None or self._follower is None:
            return False
        if st.revision >= need:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((need, fut))
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.sync_timeout_s)
        except TimeoutError:
            pass
        finally:
            if (need, fut) in self._waiters:
                self._waiters.remove((need, fut))
        return self.state is st and st.revision >= need

    def _release(self, revision: int) -> None:
        """Wake the reads waiting for a revision at most `revision`; later ones keep waiting."""
        keep = []
        for need, fut in self._waiters:
            if need <= revision:
                if not fut.done():
                    fut.set_result(None)
            else:
                keep.append((need, fut))
        self._waiters = keep

    def _release_all(self) -> None:
        """Out of sync: every waiting read falls back to a full read."""
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_result(None)
        self._waiters = []

    # --- keeping it current ---------------------------------------------------------------
    async def _run(self) -> None:
        self._follower = follower = self.registry.follow(retry_first_read=True)
        try:
            async for update in follower:
                self._absorb(update)
        finally:
            self._follower = None
            self.state = None
            self._release_all()
            self._stopped = True
            for sub in self._subscriptions():
                sub.end()

    def _absorb(self, update: Update) -> None:
        """Take one update of the follower in (synchronously: `state` and the stamps never
        disagree for a reader)."""
        if update.kind == "interrupted":
            # The state stays a true prefix of history; a read proves it current again by
            # its barrier's event once the watch is back.
            self._release_all()
            return
        if update.kind == "reset":
            if self.state is not None:
                self._release_all()  # reads that waited on the old state re-check
                if not update.events:  # a fresh read that says nothing of what changed:
                    for sub in self._subscriptions():  # each stream starts over from it
                        sub.overflow()
            self.generation += 1
            self.unit_stamps = {}
        elif update.events:
            self._tick += 1
            tick, units = self._tick, self.unit_stamps
            for ev in update.events:
                if ev.kind == UNIT_PUT:
                    units[ev.name] = tick
                elif ev.kind == UNIT_DELETED:  # a unit added again gets a put, so a new stamp
                    units.pop(ev.name, None)
        self.state = update.state
        if update.events and (self._subs_all or self._subs_by_name):
            self._dispatch(update.state, update.events)
        self._release(update.state.revision)
