"""An in-memory copy of the cluster state, kept current by one etcd watch, for the API's reads.

Listing 10,000 units by re-reading and decoding every key costs most of a second; the view
answers from memory. Reads stay linearizable: `snapshot()` first takes etcd's current revision
with a quorum read, then waits until the view has applied everything up to it (events, or a
progress notification on the view's own watch stream, which etcd sends only once every event up
to its revision has been delivered), so a write acknowledged before the read (by any fleetd) is
always visible. Each read waits for its own revision: a notification answering an earlier read
releases only the reads it covers. If the view is not in sync (starting, resyncing, or etcd
does not answer in time) the read falls back to a full `Registry.cluster_state()`.
"""

from __future__ import annotations

import asyncio
import logging

from fleetd.registry._etcd import (
    EtcdError,
    WatchCompacted,
    WatchEvent,
    WatchStream,
    backoff_sleep,
)
from fleetd.registry.changes import WatchView
from fleetd.registry.registry import ClusterState, Registry
from fleetd.registry.schema import MachineRecord

log = logging.getLogger("fleetd.registry.view")


class ClusterView:
    """The registry's state in memory; `snapshot()` returns it once proven current."""

    def __init__(self, registry: Registry, *, progress_timeout_s: float = 1.0) -> None:
        self.registry = registry
        self.progress_timeout_s = progress_timeout_s
        self.state: ClusterState | None = None
        self._changes: WatchView | None = None  # applies watch events to `state`
        self._stream: WatchStream | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None
        self.fallbacks = 0

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def snapshot(self) -> ClusterState:
        """The cluster state, at least as new as every write etcd acknowledged before the
        call. The object is shared: read it, do not mutate it."""
        if self._stream is not None and self.state is not None:
            try:
                need = await asyncio.wait_for(self.registry.etcd.current_revision(),
                                              self.progress_timeout_s)
            except (TimeoutError, EtcdError):
                need = 0
            if need and await self._reached(need):
                assert self.state is not None
                return self.state
        self.fallbacks += 1
        return await self.registry.cluster_state()

    async def _reached(self, need: int) -> bool:
        """True once the view has applied every change up to revision `need` (within the
        progress timeout)."""
        st, stream = self.state, self._stream
        if st is None or stream is None:
            return False
        if st.revision >= need:
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((need, fut))
        try:
            if await stream.request_progress():
                await asyncio.wait_for(asyncio.shield(fut), self.progress_timeout_s)
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

    # --- keeping it current ---------------------------------------------------------------
    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                st = await self.registry.cluster_state()
                # cluster_state() merges API metadata into machines: keep the raw records too.
                # A machine changed between the two reads comes again through the watch.
                self._load(st, await self.registry.list_machines())
                self._stream = WatchStream(self.registry.etcd, self.registry.keys.root,
                                           st.revision + 1)
                attempt = 0
                async for events, revision in self._stream.responses():
                    if events:
                        self._apply(events)
                    elif self.state is not None:
                        # a progress notification: every event up to `revision` is in
                        self.state.revision = max(self.state.revision, revision)
                    if self.state is not None:
                        self._release(self.state.revision)
            except WatchCompacted as e:
                log.info("cluster view: %s; reloading", e)
            except EtcdError as e:
                log.warning("cluster view out of sync: %s", e)
                await backoff_sleep(attempt)
                attempt += 1
            finally:
                self._stream = None
                self.state = None
                for _, fut in self._waiters:  # they fall back to a full read
                    if not fut.done():
                        fut.set_result(None)
                self._waiters = []

    def _load(self, st: ClusterState, raw_machines: dict[str, MachineRecord]) -> None:
        self._changes = WatchView(st, configured=raw_machines)
        self.state = st

    def _apply(self, events: list[WatchEvent]) -> None:
        if self.state is None or self._changes is None:
            return
        self._changes.apply(c for c in map(self.registry.decode_change, events)
                            if c is not None)
