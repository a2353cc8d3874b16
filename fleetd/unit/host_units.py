"""Host units: names fleet refuses to manage because the host itself runs on them.

fleet writes unit files into a directory systemd searches before `/usr/lib` (the runtime
directory), so a submitted `ssh.service` or `dbus.service` would override, and on destroy stop,
the host's own. Two checks keep them out: this fixed set, refused at submit for every machine
(pure; `host_unit_reason`), and, on each machine, any name systemd already loads from outside
fleet's directory, which the agent refuses to write (`SystemdManager.host_unit_file`).
"""

from __future__ import annotations

from fnmatch import fnmatchcase

#: Names (glob patterns) of the units every host needs, refused at submit.
HOST_UNIT_PATTERNS = (
    "fleetd.service", "fleet.service", "fleet.socket",
    "dbus.service", "dbus.socket", "dbus-broker.service",
    "systemd-*", "getty@*", "serial-getty@*", "console-getty.service", "container-getty@*",
    "ssh.service", "sshd.service", "ssh.socket", "sshd.socket", "ssh@*", "sshd@*",
    "user@*", "user-runtime-dir@*", "init.scope", "-.slice", "-.mount", "system.slice",
    "user.slice",
)


def host_unit_reason(name: str) -> str | None:
    """Why fleet refuses to manage unit `name` on any host, or None if it may."""
    for pattern in HOST_UNIT_PATTERNS:
        if fnmatchcase(name, pattern):
            return (f"unit {name} is one of the host's own units ({pattern}); fleet does not "
                    "manage it (it would override the host's copy on every machine)")
    return None
