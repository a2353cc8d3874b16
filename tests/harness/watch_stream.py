"""A gRPC `Watch` stream drained by a thread into a queue, as a dashboard reads it."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc

from fleetd.api.pb import fleet_pb2 as pb


class WatchStream:
    """`stub.Watch(WatchRequest(**request))`, its events queued as they arrive; `error` is the
    RpcError that ended it, if any."""

    def __init__(self, stub: Any, **request: Any) -> None:
        self.call = stub.Watch(pb.WatchRequest(**request))
        self.events: queue.Queue[Any] = queue.Queue()
        self.error: grpc.RpcError | None = None
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        try:
            for ev in self.call:
                self.events.put(ev)
        except grpc.RpcError as e:
            self.error = e
        self.events.put(None)  # the stream ended

    def next(self, timeout_s: float = 10) -> Any:
        return self.events.get(timeout=timeout_s)

    def until(self, pred: Callable[[Any], bool], timeout_s: float = 15, what: str = "event",
              context: Callable[[], str] = lambda: "") -> list[Any]:
        """Events up to and including the first one `pred` accepts; fails if the stream ends
        or after timeout_s, with what was seen and `context()`."""
        seen: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} in {timeout_s}s; saw "
                                     f"{[str(e)[:200] for e in seen]}; {context()}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if ev is None:
                raise AssertionError(f"the Watch stream ended: {self.error}")
            seen.append(ev)
            if pred(ev):
                return seen

    def close(self) -> None:
        self.call.cancel()
