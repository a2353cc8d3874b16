"""A `Registry` with no etcd behind it that records the decisions an engine would write, for
driving the real `Engine` pass by pass in unit tests."""

from __future__ import annotations

from collections.abc import Sequence

from fleetd.registry import Registry
from fleetd.registry._etcd import Op


class RecordingRegistry(Registry):
    def __init__(self) -> None:
        super().__init__(None, "/t/")  # type: ignore[arg-type]
        self.written: list[Op] = []

    async def write_decisions(self, machine_id: str, lease: int, ops: Sequence[Op]) -> None:
        self.written.extend(ops)
