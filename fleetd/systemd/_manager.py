"""Async adapter to one systemd manager over D-Bus (dbus-fast, raw messages, no introspection).

This module is the only place in fleetd that talks D-Bus. Every method call is a single raw
``Message`` (no proxy objects, no introspection round trips); unit state changes arrive as
``PropertiesChanged`` signals and are fanned out to ``watch()`` callbacks without polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

from dbus_fast import BusType, Message, MessageType, Variant
from dbus_fast.aio import MessageBus

from fleetd.fencing import (
    FENCE_DROP_IN,
    FENCE_SERVICE_TEMPLATE,
    FENCE_TARGET,
    FENCE_TIMER_ACCURACY_S,
    FENCE_TIMER_PREFIX,
)

log = logging.getLogger(__name__)

SD_BUS_NAME = "org.freedesktop.systemd1"
SD_PATH = "/org/freedesktop/systemd1"
SD_UNIT_PATH_PREFIX = SD_PATH + "/unit/"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
#: fleetd's drop-in for its own unit while it stops (`SystemdManager.set_stop_timeout`), named
#: to sort after the drop-ins an administrator writes (`systemctl edit`: override.conf).
STOP_TIMEOUT_DROP_IN = "zzzz-fleetd-stopping.conf"
TIMER_IFACE = "org.freedesktop.systemd1.Timer"
JOB_IFACE = "org.freedesktop.systemd1.Job"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPS_IFACE = "org.freedesktop.DBus.Properties"

DBUS_NAME = "org.freedesktop.DBus"
DBUS_PATH = "/org/freedesktop/DBus"

# Errors meaning "systemd has no such unit (loaded)"; treated as benign where the API says so.
_NO_UNIT_ERRORS = frozenset(
    {
        "org.freedesktop.systemd1.NoSuchUnit",
        "org.freedesktop.systemd1.LoadFailed",
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownInterface",
        "org.freedesktop.DBus.Error.UnknownProperty",
    }
)

_UNIT_TYPES = (
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
)
_UNIT_NAME_RE = re.compile(
    r"^[A-Za-z0-9:_\\@-][A-Za-z0-9:_.\\@-]*\.(?:" + "|".join(_UNIT_TYPES) + r")$"
)
_UNIT_NAME_MAX = 255

# ActiveStates in which a service can have a main process worth asking about.
_LIVE_STATES = frozenset({"active", "activating", "deactivating", "reloading", "refreshing"})

_PROPS_MATCH = (
    "type='signal',sender='org.freedesktop.systemd1',interface='org.freedesktop.DBus.Properties',"
    "member='PropertiesChanged',path_namespace='/org/freedesktop/systemd1/unit'"
)
_RELOADING_MATCH = (
    "type='signal',sender='org.freedesktop.systemd1',path='/org/freedesktop/systemd1',"
    "interface='org.freedesktop.systemd1.Manager',member='Reloading'"
)

DEFAULT_SYSTEM_UNIT_DIR = "/run/systemd/system"
MAX_INFLIGHT_CALLS = 16
# fleet keeps the unit files it writes in a directory of its own and links them into the
# manager's search path (as fleet did with /run/fleet/units): the agent then never mistakes a
# unit someone else put in the runtime directory (fleetd.service itself, say) for one of its own.
DEFAULT_SYSTEM_FILES_DIR = "/run/fleet/units"
DEFAULT_CALL_TIMEOUT_S = 25.0


@dataclass(frozen=True)
class UnitStatus:
    """Snapshot of one unit as systemd reports it (names are systemd's own state strings)."""

    name: str
    load_state: str  # systemd LoadState: loaded / not-found / bad-setting / masked / ...
    active_state: str  # active / inactive / failed / activating / deactivating / reloading
    sub_state: str  # running / dead / exited / failed / ...
    main_pid: int = 0


class SystemdError(Exception):
    """D-Bus/systemd failure, message names the unit and the operation."""

    def __init__(self, message: str, *, dbus_error: str | None = None) -> None:
        super().__init__(message)
        #: D-Bus error name (e.g. ``org.freedesktop.systemd1.NoSuchUnit``), None otherwise.
        self.dbus_error = dbus_error


def is_unit_name(name: str) -> bool:
    """True iff ``name`` is a plain systemd unit file name (no path parts, known unit type)."""
    return len(name) <= _UNIT_NAME_MAX and _UNIT_NAME_RE.match(name) is not None


def unit_object_path(name: str) -> str:
    """D-Bus object path systemd uses for unit ``name`` (sd-bus label escaping)."""
    if not name:
        return SD_UNIT_PATH_PREFIX + "_"
    out = []
    for ch in name:
        if ("a" <= ch <= "z") or ("A" <= ch <= "Z") or ("0" <= ch <= "9"):
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode())
    return SD_UNIT_PATH_PREFIX + "".join(out)


def unit_name_from_path(path: str) -> str | None:
    """Inverse of :func:`unit_object_path`; None if ``path`` is not a unit object path."""
    if not path.startswith(SD_UNIT_PATH_PREFIX):
        return None
    label = path[len(SD_UNIT_PATH_PREFIX) :]
    if label == "_":
        return ""
    raw = bytearray()
    i = 0
    n = len(label)
    while i < n:
        ch = label[i]
        if ch == "_" and i + 2 < n and _is_hex(label[i + 1 : i + 3]):
            raw.append(int(label[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(ch.encode())
            i += 1
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return None


def _put_drop_in(path: pathlib.Path, text: str | None) -> None:
    """Write the drop-in ``path`` (its directory made if need be); None removes it, and its
    directory once empty. A missing file is fine."""
    if text is None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()
        return
    path.parent.mkdir(exist_ok=True)
    _write_atomic(path.parent, path, text)


def _write_atomic(directory: pathlib.Path, dest: pathlib.Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _is_hex(s: str) -> bool:
    return len(s) == 2 and all(c in "0123456789abcdefABCDEF" for c in s)


@dataclass
class _Watcher:
    names: Callable[[], AbstractSet[str]]
    on_change: Callable[[UnitStatus], None]


class SystemdManager:
    """A connection to one systemd manager (system or user) and the directory fleet writes
    unit files to."""

    unit_dir: pathlib.Path

    def __init__(self, bus: MessageBus, unit_dir: pathlib.Path, *, call_timeout_s: float,
                 files_dir: pathlib.Path | None = None) -> None:
        """Use :meth:`connect`; this only wires an already-connected bus."""
        self._bus = bus
        self.unit_dir = unit_dir
        self.files_dir = files_dir or unit_dir.parent / "fleet-units"
        self._timeout = call_timeout_s
        # Bounded in-flight calls: hundreds of concurrent calls (a status refresh of 1,000
        # units) fill the socket buffer, and dbus-fast does not survive EAGAIN on write.
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT_CALLS)
        self._watchers: list[_Watcher] = []
        # Latest knowledge per unit name, fed by signals and query replies (building blocks of
        # the statuses handed to watchers).
        self._load: dict[str, str] = {}
        self._active: dict[str, tuple[str, str]] = {}
        self._pid: dict[str, int] = {}
        # Last status handed to watchers per name (suppresses identical repeats).
        self._emitted: dict[str, UnitStatus] = {}
        # Signals handled per name (ActiveState/SubState ones, MainPID ones). A query whose
        # reply is used after such a signal may be older than it (its reply is resumed after
        # the signal's handler ran, or its Gets straddle it): its values must not overwrite
        # the signal's, or the last state of a unit that then stays put is never published.
        self._state_signals: dict[str, int] = {}
        self._pid_signals: dict[str, int] = {}
        self._path_names: dict[str, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # How to open the bus again (address, type, description), set by connect().
        self._bus_factory: tuple[str | None, BusType, str] = (None, BusType.SYSTEM, "")
        self._search_path: list[pathlib.Path] | None = None  # systemd's UnitPath minus ours

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    async def connect(
        cls,
        *,
        user: bool = False,
        bus_address: str | None = None,
        unit_dir: str | None = None,
        files_dir: str | None = None,
        call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S,
    ) -> SystemdManager:
        """Connect to the system (or ``user``) manager, create ``unit_dir``, Subscribe() to signals.

        user=False: system bus (or ``bus_address``), unit_dir defaults to /run/systemd/system.
        user=True: ``bus_address`` or $DBUS_SESSION_BUS_ADDRESS (or $XDG_RUNTIME_DIR/bus),
        unit_dir defaults to $XDG_RUNTIME_DIR/systemd/user.
        """
        if user:
            runtime = os.environ.get("XDG_RUNTIME_DIR")
            addr: str | None = bus_address or os.environ.get("DBUS_SESSION_BUS_ADDRESS")
            if not addr and runtime:
                addr = f"unix:path={runtime}/bus"
            if not addr:
                raise SystemdError(
                    "connect user manager: no bus address ($DBUS_SESSION_BUS_ADDRESS unset)"
                )
            if unit_dir is None:
                if not runtime:
                    raise SystemdError("connect user manager: $XDG_RUNTIME_DIR unset, no unit_dir")
                unit_dir = os.path.join(runtime, "systemd", "user")
            if files_dir is None and runtime:
                files_dir = os.path.join(runtime, "fleet", "units")
            bus = MessageBus(bus_address=addr, bus_type=BusType.SESSION)
        else:
            if unit_dir is None:
                unit_dir = DEFAULT_SYSTEM_UNIT_DIR
            if files_dir is None:
                files_dir = DEFAULT_SYSTEM_FILES_DIR
            bus = MessageBus(bus_address=bus_address, bus_type=BusType.SYSTEM)
        where = bus_address or ("session bus" if user else "system bus")
        try:
            await asyncio.wait_for(bus.connect(), call_timeout_s)
        except Exception as e:
            raise SystemdError(f"connect to systemd via {where}: {e}") from e
        udir = pathlib.Path(unit_dir)
        udir.mkdir(parents=True, exist_ok=True)
        fdir = pathlib.Path(files_dir) if files_dir else None
        self = cls(bus, udir, call_timeout_s=call_timeout_s, files_dir=fdir)
        self.files_dir.mkdir(parents=True, exist_ok=True)
        self._bus_factory = (addr if user else bus_address,
                             BusType.SESSION if user else BusType.SYSTEM, where)
        await self._subscribe()
        return self

    async def _subscribe(self) -> None:
        bus = self._bus
        bus.add_message_handler(self._on_message)
        try:
            await self._call_bus("AddMatch", "s", [_PROPS_MATCH])
            await self._call_bus("AddMatch", "s", [_RELOADING_MATCH])
            await self._call_manager("Subscribe", "", [], op="subscribe")
        except BaseException:
            bus.disconnect()
            raise

    async def reconnect(self) -> None:
        """Open a new bus connection after the old one dropped; watchers stay registered."""
        address, bus_type, where = self._bus_factory
        bus = MessageBus(bus_address=address, bus_type=bus_type)
        try:
            await asyncio.wait_for(bus.connect(), self._timeout)
        except Exception as e:
            raise SystemdError(f"reconnect to systemd via {where}: {e}") from e
        with contextlib.suppress(Exception):
            self._bus.disconnect()
        self._bus = bus
        self._closed = False
        await self._subscribe()

    @property
    def connected(self) -> bool:
        """False once closed or the bus connection dropped (then calls raise, watchers go quiet)."""
        return not self._closed and self._bus.connected

    async def close(self) -> None:
        """Disconnect from the bus; watchers get no further calls. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._watchers.clear()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._bus.disconnect()
        with contextlib.suppress(Exception):  # disconnect errors are irrelevant at close
            await asyncio.wait_for(self._bus.wait_for_disconnect(), 5)

    # ------------------------------------------------------------------ unit files

    def _unit_file(self, name: str) -> pathlib.Path:
        if not is_unit_name(name):
            raise SystemdError(f"unit file {name!r}: not a valid unit name")
        return self.files_dir / name

    def _link(self, name: str) -> pathlib.Path:
        return self.unit_dir / name

    def _is_our_link(self, link: pathlib.Path) -> bool:
        return link.is_symlink() and pathlib.Path(os.readlink(link)) == self.files_dir / link.name

    async def host_unit_file(self, name: str) -> str | None:
        """The file systemd would load unit `name` (or its template) from outside fleet's
        directories, i.e. the host's own unit, or None. See fleetd/unit/host_units.py."""
        if self._search_path is None:
            try:
                paths = await self._get_prop(SD_PATH, MANAGER_IFACE, "UnitPath", name)
            except SystemdError:
                return None  # unknown for now; asked again for the next unit
            ours = (self.unit_dir, self.files_dir)
            self._search_path = [pathlib.Path(p) for p in paths or () if pathlib.Path(p)
                                 not in ours]
        at, dot = name.find("@"), name.rfind(".")
        names = [name] + ([name[:at + 1] + name[dot:]] if 0 < at < dot - 1 else [])
        for d in self._search_path:
            for n in names:
                if os.path.lexists(d / n):
                    return str(d / n)
        link = self._link(name)
        if (link.exists() or link.is_symlink()) and not self._is_our_link(link):
            return str(link)
        return None

    def read_unit_files(self) -> dict[str, str]:
        """name -> text of every unit file fleet wrote (those in files_dir)."""
        out: dict[str, str] = {}
        try:
            entries = list(os.scandir(self.files_dir))
        except FileNotFoundError:
            return out
        for e in entries:
            if not is_unit_name(e.name) or not e.is_file(follow_symlinks=False):
                continue
            try:
                out[e.name] = pathlib.Path(e.path).read_text()
            except FileNotFoundError:
                continue  # removed concurrently
        return out

    def write_unit_file(self, name: str, text: str, drop_in: str | None = None) -> None:
        """Atomically (tmp file + rename) write unit file ``name`` into files_dir and link it
        into unit_dir, with fleet's fencing ``drop_in`` (None: none, removed if present).
        Refuses to shadow a unit file fleet did not write."""
        dest = self._unit_file(name)
        link = self._link(name)
        if (link.exists() or link.is_symlink()) and not self._is_our_link(link):
            raise SystemdError(f"write unit file {name}: {link} exists and was not written by "
                               "fleet; refusing to replace it")
        try:
            # The drop-in first: the unit must never be loadable without its fence.
            self._write_drop_in(name, drop_in)
            _write_atomic(self.files_dir, dest, text)
            if not link.is_symlink():
                os.symlink(dest, link)
        except OSError as e:
            raise SystemdError(f"write unit file {name}: {e}") from e

    def _drop_in_path(self, name: str) -> pathlib.Path:
        return self.unit_dir / f"{name}.d" / FENCE_DROP_IN

    def _write_drop_in(self, name: str, text: str | None) -> None:
        _put_drop_in(self._drop_in_path(name), text)

    def has_drop_in(self, name: str) -> bool:
        """True if fleet's fencing drop-in for ``name`` is on disk."""
        return self._drop_in_path(name).is_file()

    def remove_unit_file(self, name: str) -> None:
        """Delete unit file ``name``, its link and fleet's drop-in; a missing file is fine."""
        link = self._link(name)
        try:
            if self._is_our_link(link):
                link.unlink()
            self._write_drop_in(name, None)
            self._unit_file(name).unlink()
        except FileNotFoundError:
            pass
        except OSError as e:
            raise SystemdError(f"remove unit file {name}: {e}") from e

    # ------------------------------------------------------------------ the dead-man switch

    def install_fence(self) -> bool:
        """Write `fleet-fence.target` and the template its timers trigger into fleet's fence
        directory, linked into unit_dir; True if anything changed (then daemon-reload)."""
        true = shutil.which("true") or "/bin/true"
        files = {
            FENCE_TARGET: (
                "# Written by fleetd. Starting this target stops every non-global fleet unit\n"
                "# (they conflict with it and are ordered before it): fleet's fence.\n"
                "[Unit]\nDescription=fleet fence: this machine's non-global fleet units "
                "stopped\nDefaultDependencies=no\nRefuseManualStart=no\n"),
            FENCE_SERVICE_TEMPLATE: (
                "# Written by fleetd. Triggered by fleetd's dead-man timer at its lease deadline.\n"
                f"[Unit]\nDescription=fleet fence: lease deadline %i reached\n"
                f"DefaultDependencies=no\nRequires={FENCE_TARGET}\nAfter={FENCE_TARGET}\n\n"
                f"[Service]\nType=oneshot\nExecStart={true}\n"),
        }
        fence_dir = self.files_dir.parent / "fence"
        fence_dir.mkdir(parents=True, exist_ok=True)
        changed = False
        try:
            for name, text in files.items():
                dest = fence_dir / name
                link = self._link(name)
                if not dest.is_file() or dest.read_text() != text:
                    _write_atomic(fence_dir, dest, text)
                    changed = True
                if not (link.is_symlink() and os.readlink(link) == str(dest)):
                    with contextlib.suppress(FileNotFoundError):
                        link.unlink()
                    os.symlink(dest, link)
                    changed = True
        except OSError as e:
            raise SystemdError(f"install {FENCE_TARGET}: {e}") from e
        return changed

    async def arm_fence_timer(self, name: str, delay_s: float) -> None:
        """Start transient timer ``name`` firing in ``delay_s`` seconds both on the monotonic
        clock and on the wall clock, whichever comes first (see `fleetd.fencing`): it triggers
        an instance of the fence template, which starts the fence target."""
        usec = max(1, int(delay_s * 1e6))
        deadline = time.time() + delay_s
        calendar = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(deadline))
        calendar += f".{int((deadline % 1) * 1e6):06d} UTC"
        props = [
            ("Description", Variant("s", "fleet dead-man switch (re-armed at each renewal)")),
            ("AccuracyUSec", Variant("t", int(FENCE_TIMER_ACCURACY_S * 1e6))),
            ("RemainAfterElapse", Variant("b", True)),
            ("TimersMonotonic", Variant("a(st)", [["OnActiveSec", usec]])),
            ("TimersCalendar", Variant("a(ss)", [["OnCalendar", calendar]])),
        ]
        await self._call_manager("StartTransientUnit", "ssa(sv)a(sa(sv))",
                                 [name, "fail", props, []], op="arm", unit=name)

    async def list_fence_timers(self) -> list[str]:
        """Names of the fence timers systemd has loaded (any fleetd generation)."""
        reply = await self._call_manager("ListUnitsByPatterns", "asas",
                                         [[], [FENCE_TIMER_PREFIX + "*.timer"]],
                                         op="list fence timers")
        return sorted(row[0] for row in reply[0]) if reply else []

    async def timer_fired(self, name: str) -> bool:
        """True if timer ``name`` has triggered (or is gone: it cannot be trusted to fire)."""
        path = unit_object_path(name)
        last = await self._get_prop(path, TIMER_IFACE, "LastTriggerUSec", name)
        return last is None or int(last) != 0

    async def fence(self, timeout_s: float) -> bool:
        """Start the fence target and wait until it is active, i.e. every non-global fleet unit
        is inactive; False if that did not happen within ``timeout_s``."""
        await self._call_manager("StartUnit", "ss", [FENCE_TARGET, "replace"], op="fence",
                                 unit=FENCE_TARGET)
        deadline = time.monotonic() + timeout_s
        while True:
            st = await self.unit_status(FENCE_TARGET)
            if st.active_state == "active":
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.05)

    async def _unit_path_of_pid(self, pid: int) -> str | None:
        reply = await self._call(
            Message(destination=SD_BUS_NAME, path=SD_PATH, interface=MANAGER_IFACE,
                    member="GetUnitByPID", signature="u", body=[pid]), "unit of pid")
        if reply.message_type is MessageType.ERROR or not reply.body:
            return None
        return str(reply.body[0])

    async def unit_of_pid(self, pid: int) -> str | None:
        """The name of the unit running ``pid``; None if it is not in a unit of this
        manager."""
        path = await self._unit_path_of_pid(pid)
        name = path and await self._get_prop(path, UNIT_IFACE, "Id", "own unit")
        return str(name) if name else None

    def set_stop_timeout(self, unit: str, timeout_s: float | None) -> None:
        """A drop-in (`STOP_TIMEOUT_DROP_IN`) giving ``unit`` (fleetd's own) the
        TimeoutStopSec= ``timeout_s`` from the next daemon-reload on; None removes it. A
        stopping unit's timer is armed again from TimeoutStopSec= at a reload, which forgets
        an EXTEND_TIMEOUT_USEC= extension."""
        path = self.unit_dir / f"{unit}.d" / STOP_TIMEOUT_DROP_IN
        try:
            _put_drop_in(path, None if timeout_s is None else (
                "# Written by fleetd while it stops its units.\n"
                f"[Service]\nTimeoutStopSec={timeout_s:.0f}s\n"))
        except OSError as e:
            raise SystemdError(f"drop-in {path}: {e}") from e

    async def job_type_of_pid(self, pid: int) -> str | None:
        """The type of the job systemd has pending for the unit running ``pid`` ("restart",
        "stop", ...); None if there is none or ``pid`` is not in a unit of this manager."""
        path = await self._unit_path_of_pid(pid)
        job = path and await self._get_prop(path, UNIT_IFACE, "Job", "own unit")
        if not job or not job[0]:
            return None
        kind = await self._get_prop(job[1], JOB_IFACE, "JobType", "own job")
        return str(kind) if kind else None

    # ------------------------------------------------------------------ manager calls

    async def not_loaded_as_written(self, names: Iterable[str]) -> list[str]:
        """Of ``names`` (unit files just written here for the first time), those systemd has
        not loaded as they are on disk: loading them (ListUnitsByNames) leaves them other than
        "loaded", with
        NeedDaemonReload set, or without fleet's fence drop-in where one was written. systemd
        (since v246) loads a new file on demand, rebuilding its unit-file cache when a unit
        directory's mtime changed; a write within the same clock tick as the last rebuild
        goes unseen, and only a daemon-reload loads such a unit."""
        wanted = [n for n in dict.fromkeys(names) if is_unit_name(n)]
        if not wanted:
            return []
        # ListUnitsByNames loads each unit it does not know (one call for the batch)
        reply = await self._call_manager("ListUnitsByNames", "as", [wanted], op="load")
        rows = {row[0]: (row[2], row[6]) for row in reply[0]}

        async def check(name: str) -> bool:
            load, path = rows.get(name, ("not-found", ""))
            if load != "loaded":
                return False
            stale, drop_ins = await asyncio.gather(
                self._get_prop(path, UNIT_IFACE, "NeedDaemonReload", name),
                self._get_prop(path, UNIT_IFACE, "DropInPaths", name))
            if stale:
                return False
            want = self._drop_in_path(name)
            return not want.is_file() or str(want) in (drop_ins or [])

        ok = await asyncio.gather(*(check(n) for n in wanted))
        return [n for n, good in zip(wanted, ok, strict=True) if not good]

    async def daemon_reload(self) -> None:
        """Manager.Reload(); returns once systemd has finished reloading."""
        await self._call_manager("Reload", "", [], op="daemon-reload")

    async def start_unit(self, name: str) -> None:
        """StartUnit(name, "replace"); returns once the job is queued (not when active)."""
        await self._call_manager("StartUnit", "ss", [name, "replace"], op="start", unit=name)

    async def restart_unit(self, name: str) -> None:
        """RestartUnit(name, "replace"): a new main process for an active unit, a start for an
        inactive one. Unlike a StartUnit after a StopUnit, it is never a no-op on a running
        unit: a start cancels a stop job systemd has queued but not yet run (a StopUnit sent
        just before a daemon-reload, say), which leaves the old process running."""
        await self._call_manager("RestartUnit", "ss", [name, "replace"], op="restart", unit=name)

    async def stop_unit(self, name: str) -> None:
        """StopUnit(name, "replace"); a unit systemd does not know is not an error."""
        await self._call_manager(
            "StopUnit", "ss", [name, "replace"], op="stop", unit=name, ignore=_NO_UNIT_ERRORS
        )

    async def reset_failed_unit(self, name: str) -> None:
        """ResetFailedUnit(name); a unit that is not loaded is not an error."""
        await self._call_manager(
            "ResetFailedUnit", "s", [name], op="reset-failed", unit=name, ignore=_NO_UNIT_ERRORS
        )

    async def unit_status(self, name: str) -> UnitStatus:
        """Current status of ``name``; unknown units come back as not-found/inactive/dead."""
        path = unit_object_path(name)
        gets = [
            self._get_prop(path, UNIT_IFACE, "LoadState", name),
            self._get_prop(path, UNIT_IFACE, "ActiveState", name),
            self._get_prop(path, UNIT_IFACE, "SubState", name),
        ]
        if name.endswith(".service"):
            gets.append(self._get_prop(path, SERVICE_IFACE, "MainPID", name))
        seen = self._signals_seen([name])
        vals = await asyncio.gather(*gets)
        if vals[0] is None:
            st = UnitStatus(name, "not-found", "inactive", "dead", 0)
        else:
            pid = vals[3] if len(vals) > 3 and vals[3] is not None else 0
            st = UnitStatus(
                name, str(vals[0]), str(vals[1] or "inactive"), str(vals[2] or "dead"), int(pid)
            )
        return self._remember(self._newer_of(st, seen[name]))

    def _signals_seen(self, names: Iterable[str]) -> dict[str, tuple[int, int]]:
        return {n: (self._state_signals.get(n, 0), self._pid_signals.get(n, 0)) for n in names}

    def _newer_of(self, st: UnitStatus, seen: tuple[int, int]) -> UnitStatus:
        """A queried status, with what signals handled since the query was sent (`seen`: the
        counters then) said instead: those are at least as new as the reply."""
        state_seen, pid_seen = seen
        if self._state_signals.get(st.name, 0) != state_seen and st.name in self._active:
            active, sub = self._active[st.name]
            st = UnitStatus(st.name, st.load_state, active, sub, st.main_pid)
        if self._pid_signals.get(st.name, 0) != pid_seen:
            st = UnitStatus(st.name, st.load_state, st.active_state, st.sub_state,
                            self._pid.get(st.name, 0) if st.name.endswith(".service") else 0)
        return st

    async def list_units(self, names: Iterable[str]) -> dict[str, UnitStatus]:
        """Statuses of ``names`` in one ListUnitsByNames call (+ pipelined MainPID reads)."""
        wanted = list(dict.fromkeys(names))
        if not wanted:
            return {}
        valid = [n for n in wanted if is_unit_name(n)]
        rows: list[Any] = []
        seen = self._signals_seen(wanted)
        if valid:
            reply = await self._call_manager("ListUnitsByNames", "as", [valid], op="list-units")
            rows = reply[0]
        out: dict[str, UnitStatus] = {}
        need_pid: list[str] = []
        for row in rows:
            name, _desc, load, active, sub = row[0], row[1], row[2], row[3], row[4]
            out[name] = UnitStatus(name, load, active, sub, 0)
            self._path_names[row[6]] = name
            if name.endswith(".service") and active in _LIVE_STATES:
                need_pid.append(name)
        if need_pid:
            pids = await asyncio.gather(
                *(
                    self._get_prop(unit_object_path(n), SERVICE_IFACE, "MainPID", n)
                    for n in need_pid
                )
            )
            for n, pid in zip(need_pid, pids, strict=True):
                if pid:
                    st = out[n]
                    out[n] = UnitStatus(st.name, st.load_state, st.active_state, st.sub_state, pid)
        result: dict[str, UnitStatus] = {}
        for n in wanted:
            st = out.get(n) or UnitStatus(n, "not-found", "inactive", "dead", 0)
            result[n] = self._remember(self._newer_of(st, seen[n]))
        return result

    # ------------------------------------------------------------------ watching

    def watch(
        self,
        names_callback: Callable[[], AbstractSet[str]],
        on_change: Callable[[UnitStatus], None],
    ) -> None:
        """Call ``on_change(status)`` whenever systemd signals a change of a watched unit.

        Signal driven (PropertiesChanged on unit objects, plus a re-read of the watched units
        after every daemon reload); consecutive identical statuses of a unit are delivered once.
        Callbacks run on the event loop and must not block; exceptions are logged and dropped.
        """
        self._watchers.append(_Watcher(names_callback, on_change))

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        try:
            if msg.member == "PropertiesChanged":
                self._on_properties_changed(msg)
            elif (
                msg.member == "Reloading"
                and msg.interface == MANAGER_IFACE
                and msg.body
                and not msg.body[0]
                and self._watchers
            ):
                self._spawn(self._refresh_watched())
        except Exception:
            log.exception("systemd: failed to handle signal %s %s", msg.path, msg.member)

    def _on_properties_changed(self, msg: Message) -> None:
        path = msg.path
        if path is None or not path.startswith(SD_UNIT_PATH_PREFIX):
            return
        iface, changed, invalidated = msg.body
        name = self._path_names.get(path)
        if name is None:
            name = unit_name_from_path(path)
            if name is None:
                return
            self._path_names[path] = name
        if iface == SERVICE_IFACE:
            v = changed.get("MainPID")
            if v is not None:
                self._pid[name] = int(v.value)
            elif "MainPID" in invalidated:
                self._pid.pop(name, None)
            else:
                return
            self._pid_signals[name] = self._pid_signals.get(name, 0) + 1
            return
        if iface != UNIT_IFACE:
            return
        if "ActiveState" in changed or "SubState" in changed:
            self._state_signals[name] = self._state_signals.get(name, 0) + 1
        active, sub = self._active.get(name, ("inactive", "dead"))
        v = changed.get("ActiveState")
        if v is not None:
            active = v.value
        v = changed.get("SubState")
        if v is not None:
            sub = v.value
        self._active[name] = (active, sub)
        v = changed.get("LoadState")
        if v is not None:
            self._load[name] = v.value
        if not self._watchers:
            return
        # LoadState is not an emits-change property: use the last known value; a unit emitting
        # state changes is loaded unless a query/reload told us otherwise.
        st = UnitStatus(
            name,
            self._load.get(name, "loaded"),
            active,
            sub,
            self._pid.get(name, 0) if name.endswith(".service") else 0,
        )
        self._deliver(st)

    def _deliver(self, st: UnitStatus) -> None:
        if self._emitted.get(st.name) == st:
            return
        delivered = False
        for w in list(self._watchers):
            try:
                if st.name not in w.names():
                    continue
                delivered = True
                w.on_change(st)
            except Exception:
                log.exception("systemd: watch callback failed for %s", st.name)
        if delivered:
            self._emitted[st.name] = st
        else:  # nobody watches it now: forget, so a later re-watch sees its next change
            self._emitted.pop(st.name, None)

    async def _refresh_watched(self) -> None:
        """After a daemon reload, re-read watched units (LoadState may have changed) and deliver."""
        names: set[str] = set()
        for w in list(self._watchers):
            try:
                names.update(w.names())
            except Exception:
                log.exception("systemd: watch names callback failed")
        if not names:
            return
        try:
            statuses = await self.list_units(sorted(names))
        except SystemdError as e:
            log.warning("systemd: refresh after reload failed: %s", e)
            return
        for st in statuses.values():
            self._deliver(st)

    def _spawn(self, coro: Any) -> None:
        if self._closed:
            coro.close()
            return
        t: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def _remember(self, st: UnitStatus) -> UnitStatus:
        self._load[st.name] = st.load_state
        self._active[st.name] = (st.active_state, st.sub_state)
        self._pid[st.name] = st.main_pid
        return st

    # ------------------------------------------------------------------ raw D-Bus

    async def _call(self, msg: Message, what: str) -> Message:
        if self._closed:
            raise SystemdError(f"{what}: connection closed")
        try:
            async with self._inflight, asyncio.timeout(self._timeout):
                reply = await self._bus.call(msg)
        except TimeoutError as e:
            raise SystemdError(f"{what}: no reply from systemd within {self._timeout}s") from e
        except SystemdError:
            raise
        except Exception as e:
            raise SystemdError(f"{what}: D-Bus failure: {e}") from e
        if reply is None:
            raise SystemdError(f"{what}: no reply")
        return reply

    async def _call_manager(
        self,
        member: str,
        signature: str,
        body: list[Any],
        *,
        op: str,
        unit: str | None = None,
        ignore: AbstractSet[str] = frozenset(),
    ) -> list[Any]:
        what = f"{op} {unit}" if unit else op
        reply = await self._call(
            Message(
                destination=SD_BUS_NAME,
                path=SD_PATH,
                interface=MANAGER_IFACE,
                member=member,
                signature=signature,
                body=body,
            ),
            what,
        )
        if reply.message_type is MessageType.ERROR:
            if reply.error_name in ignore:
                return []
            detail = reply.body[0] if reply.body else ""
            raise SystemdError(f"{what}: {reply.error_name}: {detail}", dbus_error=reply.error_name)
        return list(reply.body)

    async def _call_bus(self, member: str, signature: str, body: list[Any]) -> None:
        reply = await self._call(
            Message(
                destination=DBUS_NAME,
                path=DBUS_PATH,
                interface=DBUS_NAME,
                member=member,
                signature=signature,
                body=body,
            ),
            f"bus {member}",
        )
        if reply.message_type is MessageType.ERROR:
            raise SystemdError(f"bus {member}: {reply.error_name}: {reply.body}")

    async def _get_prop(self, path: str, iface: str, prop: str, unit: str) -> Any:
        """Properties.Get; None if the unit/interface/property does not exist."""
        reply = await self._call(
            Message(
                destination=SD_BUS_NAME,
                path=path,
                interface=PROPS_IFACE,
                member="Get",
                signature="ss",
                body=[iface, prop],
            ),
            f"status {unit}",
        )
        if reply.message_type is MessageType.ERROR:
            if reply.error_name in _NO_UNIT_ERRORS:
                return None
            detail = reply.body[0] if reply.body else ""
            raise SystemdError(
                f"status {unit}: get {prop}: {reply.error_name}: {detail}",
                dbus_error=reply.error_name,
            )
        return reply.body[0].value
