"""The registry: fleet-py's cluster state in etcd v3. The only package that talks to etcd."""

from fleetd.registry._etcd import (
    EtcdApi,
    EtcdClient,
    EtcdError,
    WatchCompacted,
    WatchEvent,
    backoff_sleep,
)
from fleetd.registry.registry import (
    Change,
    ClusterState,
    MachineIdConflict,
    NotLeader,
    Registry,
    RegistryError,
    UnitConflict,
    UnitNotFound,
    UnitView,
)
from fleetd.registry.schema import (
    DEFAULT_PREFIX,
    TARGET_STATES,
    Keys,
    MachineRecord,
    ScheduleEntry,
    UnitRecord,
    UnitStateRecord,
    decode,
)

__all__ = [
    "DEFAULT_PREFIX",
    "TARGET_STATES",
    "Change",
    "ClusterState",
    "EtcdApi",
    "EtcdClient",
    "EtcdError",
    "Keys",
    "MachineIdConflict",
    "MachineRecord",
    "NotLeader",
    "Registry",
    "RegistryError",
    "ScheduleEntry",
    "UnitConflict",
    "UnitNotFound",
    "UnitRecord",
    "UnitStateRecord",
    "UnitView",
    "WatchCompacted",
    "WatchEvent",
    "backoff_sleep",
    "decode",
]
