"""A virtual-time asyncio event loop for the deterministic simulation (a test double).

Time never passes by itself: when every runnable callback has run, the clock jumps to the next
timer. Every callback belongs to a *process* (the `PROCESS` context variable that the callback
was scheduled under, inherited by every task and future callback a process creates), so a
process can be frozen (its callbacks are parked until thawed, like SIGSTOP) or killed (its
callbacks are dropped for good, like kill -9: no `finally` runs), while other processes (etcd,
each machine's systemd) keep running on the same clock.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

#: The simulated process the running callback belongs to ("" = the simulation driver).
PROCESS: contextvars.ContextVar[str] = contextvars.ContextVar("sim_process", default="")


class Deadlock(RuntimeError):
    """Nothing is runnable and no timer is pending: the awaited result can never come."""


def context_of(process: str) -> contextvars.Context:
    """A fresh context whose callbacks belong to `process`."""
    ctx = contextvars.copy_context()
    ctx.run(PROCESS.set, process)
    return ctx


class VirtualLoop(asyncio.BaseEventLoop):
    """asyncio loop on virtual time with per-process freeze and kill (no real I/O at all)."""

    def __init__(self, start_s: float = 1000.0) -> None:
        super().__init__()
        self._now = start_s
        self._clock_resolution = 1e-9
        self.frozen: set[str] = set()
        self.killed: set[str] = set()
        self._parked: dict[str, list[asyncio.Handle]] = {}
        #: Called after every callback that ran (the invariant checker hooks in here).
        self.after_step: Callable[[], None] | None = None
        self.steps = 0
        self.set_exception_handler(self._on_exception)
        self.errors: list[dict[str, Any]] = []

    def time(self) -> float:
        return self._now

    # BaseEventLoop's abstract I/O hooks: there is no I/O and no other thread.
    def _process_events(self, event_list: Any) -> None:
        pass

    def _write_to_self(self) -> None:
        pass

    def _on_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # A killed process's pending tasks being collected is expected; anything else is noted
        # (the simulation reports it) but must not stop other processes.
        msg = str(context.get("message", ""))
        if "was destroyed but it is pending" in msg:
            return
        self.errors.append(context)

    # --- processes ------------------------------------------------------------------------
    def spawn(self, process: str, coro: Any) -> asyncio.Task[Any]:
        """Start `coro` as a task of `process`."""
        return self.create_task(coro, context=context_of(process))

    def call_in(self, process: str, delay_s: float, fn: Callable[..., Any], *args: Any
                ) -> asyncio.TimerHandle:
        """`call_later` on behalf of `process` (whatever process is running now)."""
        return self.call_later(delay_s, fn, *args, context=context_of(process))

    def freeze(self, process: str) -> None:
        self.frozen.add(process)

    def thaw(self, process: str) -> None:
        self.frozen.discard(process)
        for h in self._parked.pop(process, []):
            self._ready.append(h)  # type: ignore[attr-defined]

    def kill(self, process: str) -> None:
        self.killed.add(process)
        self.frozen.discard(process)
        self._parked.pop(process, None)

    # --- the loop -------------------------------------------------------------------------
    def _run_once(self) -> None:
        ready: deque[asyncio.Handle] = self._ready  # type: ignore[attr-defined]
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        while scheduled and scheduled[0]._cancelled:  # type: ignore[attr-defined]
            heapq.heappop(scheduled)._scheduled = False  # type: ignore[attr-defined]
        if not ready and not self._stopping:  # type: ignore[attr-defined]
            if not scheduled:
                raise Deadlock("no runnable callback and no timer: the simulation is stuck")
            self._now = max(self._now, scheduled[0]._when)  # type: ignore[attr-defined]
        while scheduled and scheduled[0]._when <= self._now:  # type: ignore[attr-defined]
            h = heapq.heappop(scheduled)
            h._scheduled = False  # type: ignore[attr-defined]
            ready.append(h)
        for _ in range(len(ready)):
            h = ready.popleft()
            if h._cancelled:  # type: ignore[attr-defined]
                continue
            ctx = h._context  # type: ignore[attr-defined]
            proc = ctx.get(PROCESS, "") if ctx is not None else ""
            if proc in self.killed:
                continue
            if proc in self.frozen:
                self._parked.setdefault(proc, []).append(h)
                continue
            h._run()  # type: ignore[attr-defined]
            self.steps += 1
            if self.after_step is not None:
                self.after_step()


async def sleep_until(loop: VirtualLoop, when: float) -> None:
    await asyncio.sleep(max(0.0, when - loop.time()))
