"""The scheduler's input, built from registry values: one builder and one parse cache, used by
the engine (to decide) and by the API's `explain_unit` (`fleetctl why`), so both judge the same
cluster. Pure: no I/O, no asyncio.

`build_snapshot` turns units, desired states, machines (with API-set metadata), assignments and
the machines in their grace into a `ClusterSnapshot`, plus the units it cannot schedule: an
invalid file, or a template (`UnitName.is_template`) with an active desired state (the API
refuses that, see `template_refusal`; one written past it is reported, not silently skipped).
Given the previous result and what changed since, it rebuilds only that (the engine calls it
on every decision); the result is the same as a full build.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fleetd.engine.scheduler import ClusterSnapshot, JobView, MachineView, TargetState
from fleetd.registry.schema import merge_metadata
from fleetd.unit import Unit, UnitError, UnitName, XFleet

if TYPE_CHECKING:
    from fleetd.registry.schema import MachineRecord, UnitRecord

__all__ = [
    "BuiltSnapshot",
    "ParsedUnit",
    "UnitParseCache",
    "build_snapshot",
    "template_refusal",
    "unseen_machines",
]

_MAX_CACHED = 200_000
"""Parsed files kept before the cache starts over (a bound, not a tuning knob)."""


def template_refusal(name: UnitName) -> str:
    """Why template ``name`` cannot be loaded or started: only its instances are scheduled."""
    return (f"cannot activate template {name.full}: a template is only submitted; start its "
            f"instances (e.g. {name.prefix}@1.{name.suffix})")


@dataclass(frozen=True)
class ParsedUnit:
    """What the cluster needs from one unit file version."""

    is_template: bool
    xfleet: XFleet | None  # None when the file is invalid
    error: str  # why it is invalid, or ''
    description: str


class UnitParseCache:
    """Parsed unit files by (unit name, hash): each file version is parsed once.

    A valid file without specifiers (no "%"), MachineOf or Replaces, of a unit without "@",
    reads the same under any valid name (the name enters a parse only through specifiers,
    templates, error texts and the rule that a unit may not follow or replace itself): such
    parses are shared by text, so 10,000 units submitted from one file cost one parse and a
    name check each."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], ParsedUnit] = {}
        self._by_text: dict[str, ParsedUnit] = {}  # successful name-independent parses

    def parsed(self, rec: UnitRecord) -> ParsedUnit:
        """The parsed form of ``rec`` (parsing it on first sight)."""
        key = (rec.name, rec.hash)
        hit = self._cache.get(key)
        if hit is None:
            shared = "@" not in rec.name and "%" not in rec.text
            hit = self._by_text.get(rec.text) if shared else None
            if hit is not None and not _valid_name(rec.name):
                hit = None  # parsing it says why
            if hit is None:
                hit = self._parse(rec)
                if (shared and hit.xfleet is not None and not hit.xfleet.machine_of
                        and not hit.xfleet.replaces):  # (those may not name the unit itself)
                    if len(self._by_text) >= _MAX_CACHED:
                        self._by_text.clear()
                    self._by_text[rec.text] = hit
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = hit
        return hit

    @staticmethod
    def _parse(rec: UnitRecord) -> ParsedUnit:
        try:  # (a name without "@" is no template: skip parsing it twice)
            template = "@" in rec.name and UnitName.parse(rec.name).is_template
        except UnitError:
            template = False
        try:
            unit = Unit.from_text(rec.name, rec.text)
            return ParsedUnit(template, unit.xfleet, "", unit.file.description())
        except UnitError as e:
            return ParsedUnit(template, None, str(e), "")

    def get(self, rec: UnitRecord) -> XFleet | str:
        """The unit's [X-Fleet] options, or the error text when its file is invalid."""
        hit = self.parsed(rec)
        return hit.xfleet if hit.xfleet is not None else hit.error

    def prune(self, live: Mapping[str, UnitRecord]) -> None:
        """Forget file versions that are no longer the current one of a unit in ``live``."""
        for key in [k for k in self._cache if (rec := live.get(k[0])) is None
                    or rec.hash != k[1]]:
            del self._cache[key]
        texts = {rec.text for rec in live.values()}
        for text in [t for t in self._by_text if t not in texts]:
            del self._by_text[text]


def _valid_name(name: str) -> bool:
    try:
        UnitName.parse(name)
    except UnitError:
        return False
    return True


@dataclass(frozen=True)
class BuiltSnapshot:
    """The scheduler's input, and the units it leaves out: an invalid file, or a template with
    an active desired state (name -> why)."""

    machines: dict[str, MachineView]
    jobs: dict[str, JobView]
    schedule: dict[str, frozenset[str]]
    broken: dict[str, str] = field(default_factory=dict)  # unit -> why it cannot be scheduled
    departed: frozenset[str] = frozenset()
    held: frozenset[str] = frozenset()
    draining: frozenset[str] = frozenset()

    @property
    def snapshot(self) -> ClusterSnapshot:
        return ClusterSnapshot(self.machines, self.jobs, self.schedule, self.departed,
                               self.held, self.draining)


def _job(name: str, units: Mapping[str, UnitRecord], desired: Mapping[str, str],
         parsed: UnitParseCache) -> JobView | str | None:
    """The unit's JobView, why it cannot be scheduled, or None (gone, or a submitted
    template)."""
    rec = units.get(name)
    if rec is None:
        return None
    unit = parsed.parsed(rec)
    state: TargetState = desired.get(name, "inactive")  # type: ignore[assignment]
    if unit.is_template:
        return None if state == "inactive" else template_refusal(UnitName.parse(name))
    if unit.xfleet is None:
        return unit.error
    return JobView(name, state, unit.xfleet)


def build_snapshot(
    units: Mapping[str, UnitRecord],
    desired: Mapping[str, str],
    machines: Mapping[str, MachineRecord],
    schedule: Mapping[str, Collection[str]],
    *,
    parsed: UnitParseCache,
    metadata: Mapping[str, dict[str, str | None]] | None = None,
    departed: Mapping[str, MachineView] | None = None,
    held: Iterable[str] = (),
    previous: BuiltSnapshot | None = None,
    changed_units: Iterable[str] | None = None,
    changed_schedule: Iterable[str] | None = None,
    machines_changed: bool = True,
    draining: Iterable[str] = (),
) -> BuiltSnapshot:
    """The scheduler's input from registry values.

    ``units``/``desired`` by unit name (no desired state = inactive); ``machines`` the live ones
    and ``metadata`` the API-set metadata laid over theirs; ``schedule`` unit -> the machines
    it is assigned to; ``departed`` the machines in their grace (kept in view with their last
    metadata) and ``held`` the units they had. With ``previous``, only the units in
    ``changed_units`` and assignments in ``changed_schedule`` are rebuilt, and the machines
    only if ``machines_changed`` (machines, metadata or departed changed); ``draining``: the
    machines being drained (they get no new units). ``previous`` is
    consumed: its dicts are updated in place and reused (copying 10,000 entries on every
    decision would cost more than the decision), so the caller must not keep using it.
    """
    gone = departed or {}
    if previous is None or changed_units is None:
        jobs: dict[str, JobView] = {}
        broken: dict[str, str] = {}
        names: Iterable[str] = units
    else:
        jobs, broken, names = previous.jobs, previous.broken, changed_units
    for name in names:
        jobs.pop(name, None)
        broken.pop(name, None)
        job = _job(name, units, desired, parsed)
        if isinstance(job, JobView):
            jobs[name] = job
        elif job is not None:
            broken[name] = job
    if previous is None or changed_schedule is None:
        sched = {u: frozenset(per) for u, per in schedule.items() if per}
    else:
        sched = previous.schedule
        for name in changed_schedule:
            per = schedule.get(name)
            if per:
                sched[name] = frozenset(per)
            else:
                sched.pop(name, None)
    if previous is None or machines_changed:
        extra = metadata or {}
        views = {m.id: MachineView(m.id, merge_metadata(m.metadata, extra.get(m.id)),
                                   *m.allocatable())  # resources
                 for m in machines.values()}
        for mid, view in gone.items():
            views.setdefault(mid, view)
    else:
        views = previous.machines
    return BuiltSnapshot(views, jobs, sched, broken,
                         frozenset(mid for mid in gone if mid not in machines), frozenset(held),
                         frozenset(draining))


def unseen_machines(
    schedule: Mapping[str, Collection[str]], machines: Collection[str]
) -> tuple[dict[str, MachineView], frozenset[str]]:
    """Machines that still have assignments but no key, as departed machines in their grace,
    and the units they have: what a reader that cannot know when they left (the API; a new
    engine leader does the same) assumes. They may still run those units, so the schedule
    stands until the engine moves them. Their metadata went with their key."""
    views: dict[str, MachineView] = {}
    held: set[str] = set()
    for unit, per in schedule.items():
        for mid in per:
            if mid not in machines:
                held.add(unit)
                views.setdefault(mid, MachineView(mid, {}))
    return views, frozenset(held)
