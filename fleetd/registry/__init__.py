"""The registry: fleet-py's cluster state in etcd v3. The only package that talks to etcd.

The pure parts (the key schema, the decoder and cluster model, the watch events) import
nothing beyond the standard library; the etcd client (grpc, aetcd) is loaded only when a name
that needs it is first used, so `fleetd.registry.schema`, `.model` and `.changes` stay
importable by pure code (tests/unit/test_architecture_boundaries.py checks it).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fleetd.registry.model import Change, ClusterState, UnitView, decode_change
from fleetd.registry.schema import (
    DEFAULT_PREFIX,
    TARGET_STATES,
    DrainRecord,
    Keys,
    MachineRecord,
    MoveRecord,
    ScheduleEntry,
    UnitRecord,
    UnitStateRecord,
    decode,
)

if TYPE_CHECKING:
    from fleetd.registry._etcd import (
        EtcdApi,
        EtcdClient,
        EtcdError,
        Op,
        WatchCompacted,
        WatchEvent,
        backoff_sleep,
    )
    from fleetd.registry.registry import (
        Follower,
        MachineIdConflict,
        NotLeader,
        Registry,
        RegistryError,
        UnitConflict,
        UnitNotFound,
        Update,
    )

_LAZY = {
    **dict.fromkeys(("EtcdApi", "EtcdClient", "EtcdError", "Op", "WatchCompacted", "WatchEvent",
                     "backoff_sleep"), "fleetd.registry._etcd"),
    **dict.fromkeys(("Follower", "MachineIdConflict", "NotLeader", "Registry", "RegistryError",
                     "UnitConflict", "UnitNotFound", "Update"), "fleetd.registry.registry"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fleetd.registry' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_PREFIX",
    "TARGET_STATES",
    "Change",
    "ClusterState",
    "DrainRecord",
    "EtcdApi",
    "EtcdClient",
    "EtcdError",
    "Follower",
    "Keys",
    "MachineIdConflict",
    "MachineRecord",
    "MoveRecord",
    "NotLeader",
    "Op",
    "Registry",
    "RegistryError",
    "ScheduleEntry",
    "UnitConflict",
    "UnitNotFound",
    "UnitRecord",
    "UnitStateRecord",
    "UnitView",
    "Update",
    "WatchCompacted",
    "WatchEvent",
    "backoff_sleep",
    "decode",
    "decode_change",
]
