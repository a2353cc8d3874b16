"""systemd adapter: the only code in fleetd that talks D-Bus (see :class:`SystemdManager`)."""

from fleetd.systemd._manager import (
    SystemdError,
    SystemdManager,
    UnitStatus,
    is_unit_name,
    unit_name_from_path,
    unit_object_path,
)
from fleetd.systemd._protocol import UnitManager

__all__ = [
    "SystemdError",
    "SystemdManager",
    "UnitManager",
    "UnitStatus",
    "is_unit_name",
    "unit_name_from_path",
    "unit_object_path",
]
