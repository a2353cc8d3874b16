"""The agent's pure core: (desired units, current units) -> ordered tasks for systemd.

No I/O here: `fleetd.agent.agent` reads the state, calls `plan`, and applies the tasks through
`fleetd.systemd`. Order of a plan: stop what must stop, write/remove unit files, one
daemon-reload for the whole batch (or, when every file is new, `LoadNew`: systemd loads new
unit files on demand), then start what must run. Removing a file needs no reload unless it
had [Install] links: systemd drops a stopped unit whose file is gone by itself, and a later
file of that name is checked as loaded-as-written (`LoadNew`) like any new one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

AppliedState = Literal["loaded", "launched"]

#: Most new files checked one by one (`LoadNew`: one ListUnitsByNames, two property reads
#: each, all sent at once) instead of one daemon-reload. Measured (medians of 7-9 runs of 100
#: units started on the 3-machine lab, ~33 new files per machine in one batch): 0.56 s with
#: LoadNew, 0.65 s with the reload. On one uncontended machine the two are alike (1,000 new
#: files: reload 4.9 s, LoadNew 5.1 s), so big batches keep the reload.
LOAD_NEW_MAX = 64


@dataclass(frozen=True)
class DesiredUnit:
    """What the engine scheduled here: the unit's file and the state it should be in."""

    name: str
    target_state: AppliedState
    hash: str
    text: str
    is_global: bool = False


@dataclass(frozen=True)
class CurrentUnit:
    """What this machine has: the file fleet wrote (by hash), what the agent applied to it, and
    whether systemd reports it running (active, activating or reloading)."""

    name: str
    file_hash: str | None
    applied: AppliedState | None
    running: bool
    #: Its file has an [Install] section (links in other units' .wants/ directories).
    links: bool = True


@dataclass(frozen=True)
class WriteUnitFile:
    name: str
    text: str


@dataclass(frozen=True)
class RemoveUnitFile:
    name: str


@dataclass(frozen=True)
class DaemonReload:
    pass


@dataclass(frozen=True)
class LoadNew:
    """Unit files written here for the first time, nothing rewritten or removed: systemd
    (since v246) loads a new file on demand, rebuilding its unit-file cache when the unit
    directories changed, so no daemon-reload (0.1-0.8 s during which systemd answers nothing)
    is needed. The agent checks that systemd loaded each one as written, with its fence
    drop-in, and reloads if not (a change in the same clock tick as the last cache build
    goes unseen)."""

    names: tuple[str, ...]


@dataclass(frozen=True)
class StartUnit:
    """Start the unit; with `restart`, by RestartUnit: the plan stopped it (its file was
    replaced) and a start must not be a no-op even if systemd has not run that stop yet."""

    name: str
    restart: bool = False


@dataclass(frozen=True)
class StopUnit:
    name: str


Task = WriteUnitFile | RemoveUnitFile | DaemonReload | LoadNew | StartUnit | StopUnit


def has_install_section(text: str) -> bool:
    """The file may make [Install] links (dependencies of other units): loading or removing
    it then needs a daemon-reload."""
    return "[Install]" in text


def plan(desired: Mapping[str, DesiredUnit], current: Mapping[str, CurrentUnit]) -> list[Task]:
    """Ordered tasks that bring `current` to `desired`; empty when they already agree.

    A unit whose file changed while running, or that the agent launched, is stopped, rewritten
    and restarted (a `--replace`): by RestartUnit, since a StartUnit would leave the old process
    running if the StopUnit's job had not run yet, or if the unit's status lags behind a start
    still queued. A unit that is running with the desired file is left alone, so an agent
    restart adopts it without a restart. A unit the agent launched that has since exited is not
    started again: restarting is systemd's job (Restart=), as in fleet."""
    stops: list[Task] = []
    files: list[Task] = []
    starts: list[Task] = []
    fresh: list[str] = []  # files new here, whose loading needs no daemon-reload
    quiet = 0  # removals that need no daemon-reload either
    for name in sorted(current.keys() - desired.keys()):
        cur = current[name]
        # A unit the agent started may not look running yet: StartUnit returns once the job is
        # queued (behind a reload, say), and systemd reports it inactive until the job runs.
        # Its StopUnit cancels that job; without it the unit would start with nobody left to
        # stop it (its file removed, no longer watched).
        if cur.running or cur.applied == "launched":
            stops.append(StopUnit(name))
        if cur.file_hash is not None:
            files.append(RemoveUnitFile(name))
            quiet += not cur.links
    for name in sorted(desired):
        want = desired[name]
        cur = current.get(name) or CurrentUnit(name, None, None, False)
        changed = cur.file_hash != want.hash
        replaced = changed and (cur.running or cur.applied == "launched")
        # "loaded" means the agent does not start it (fleet): a unit systemd started as a
        # dependency ([Install] WantedBy= of a running unit) is left running.
        if replaced or (cur.running and want.target_state == "loaded"
                        and cur.applied == "launched"):
            stops.append(StopUnit(name))
        if changed:
            files.append(WriteUnitFile(name, want.text))
            # [Install] links change other units' dependencies: those need a reload.
            if cur.file_hash is None and not has_install_section(want.text):
                fresh.append(name)
        if want.target_state == "launched" and (changed or cur.applied != "launched"):
            starts.append(StartUnit(name, restart=replaced))
    reload: list[Task] = []
    if len(fresh) + quiet < len(files) or len(fresh) > LOAD_NEW_MAX:
        reload = [DaemonReload()]
    elif fresh:
        reload = [LoadNew(tuple(fresh))]
    return stops + files + reload + starts


def fence(desired: Mapping[str, DesiredUnit]) -> dict[str, DesiredUnit]:
    """The desired set while this machine has lost its lease: global units only, so a
    partitioned machine never runs a unit the engine has moved elsewhere."""
    return {n: d for n, d in desired.items() if d.is_global}
