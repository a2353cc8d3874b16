"""The unit model: parsed unit files, their [X-Fleet] options and named units."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

from fleetd.unit._errors import InvalidUnitFile, InvalidUnitName, InvalidXFleetOptions, quote
from fleetd.unit._glob import BadPattern, compile_glob, glob_match
from fleetd.unit._name import UnitName, parse_name
from fleetd.unit._parse import (
    Option,
    decode,
    group_by_section,
    parse_options,
    serialize_options,
)
from fleetd.unit._record import Record
from fleetd.unit.resources import CPU_RESERVATION, MEMORY_RESERVATION, demand_of

TYPE_CHECKING = False  # typing's import is a cost of every fleetctl start
if TYPE_CHECKING:
    from typing import Any

XFLEET_SECTION = "X-Fleet"


class UnitFile(Record):
    """A parsed systemd unit file. sections preserve order; an option may repeat.

    ``options`` are (section, name, value) in file order, grouped by section the way the
    serializer writes them, so equal files have equal hashes and vice versa.
    """

    options: tuple[tuple[str, str, str], ...] = ()

    @classmethod
    def parse(cls, text: str | bytes, *, name: str = "") -> UnitFile:
        """Parse unit file text; raise InvalidUnitFile naming ``name`` and the line number."""
        return cls(parse_options(text, name))

    @classmethod
    def from_options(cls, options: Iterable[tuple[str, str, str]], *, name: str = "") -> UnitFile:
        """Build a file from option triples (e.g. from the API), grouped by section.

        Raises InvalidUnitFile unless the options survive serialize-then-parse unchanged.
        """
        grouped = group_by_section((str(s), str(n), str(v)) for s, n, v in options)
        candidate = cls(grouped)
        try:
            reparsed = parse_options(candidate.serialize(), name)
        except InvalidUnitFile as exc:
            raise InvalidUnitFile(
                f"options do not form a valid unit file: {exc.problem}", unit=name
            ) from None
        if reparsed != grouped:
            for index, original in enumerate(grouped):
                if index >= len(reparsed) or reparsed[index] != original:
                    raise InvalidUnitFile(
                        f"option {_show(original)} cannot be represented in a unit file",
                        unit=name,
                    )
            raise InvalidUnitFile("options cannot be represented in a unit file", unit=name)
        return candidate

    def serialize(self) -> str:
        """Canonical text as go-systemd's serializer writes it (what fleet hashes)."""
        return serialize_options(self.options)

    def hash(self) -> str:
        """40-char hex SHA1 of serialize() encoded as UTF-8, as fleet computes a unit hash."""
        return hashlib.sha1(self.serialize().encode("utf-8")).hexdigest()

    def sections(self) -> list[str]:
        """Section names in order of first appearance."""
        return list(dict.fromkeys(section for section, _, _ in self.options))

    def values(self, section: str, option: str) -> list[str]:
        """Every value of ``option`` in ``section``, in file order (raw, not split)."""
        return [v for s, n, v in self.options if s == section and n == option]

    def description(self) -> str:
        """The first [Unit] Description, or ''."""
        found = self.values("Unit", "Description")
        return found[0] if found else ""


def _show(option: Option) -> str:
    section, name, value = option
    return f"[{section}] {name}={quote(value)}"


# ---------------------------------------------------------------------------
# [X-Fleet]

_MACHINE_ID = "MachineID"
_MACHINE_OF = "MachineOf"
_METADATA = "MachineMetadata"
_CONFLICTS = "Conflicts"
_GLOBAL = "Global"
_REPLACES = "Replaces"
_MOVE_BEFORE_STOP = "MoveBeforeStop"  # fleet-py's: may a move overlap the two copies

#: Option name (current and deprecated spellings) -> canonical option.
XFLEET_OPTION_ALIASES: dict[str, str] = {
    _MACHINE_ID: _MACHINE_ID,
    "X-ConditionMachineID": _MACHINE_ID,
    "X-ConditionMachineBootID": _MACHINE_ID,  # legacy; fleet treats it as a machine ID
    _MACHINE_OF: _MACHINE_OF,
    "X-ConditionMachineOf": _MACHINE_OF,
    _METADATA: _METADATA,
    "X-ConditionMachineMetadata": _METADATA,
    _CONFLICTS: _CONFLICTS,
    "X-Conflicts": _CONFLICTS,
    _GLOBAL: _GLOBAL,
    _REPLACES: _REPLACES,
    _MOVE_BEFORE_STOP: _MOVE_BEFORE_STOP,
    # -- resources (fleetd/unit/resources.py reads their values) --
    CPU_RESERVATION: CPU_RESERVATION,
    MEMORY_RESERVATION: MEMORY_RESERVATION,
    # -- end resources --
}

_TRUE = frozenset({"true", "yes", "1", "on", "t"})
_FALSE = frozenset({"false", "no", "0", "off", "f"})


def expand_specifiers(value: str, name: UnitName) -> str:
    """Expand %n (full name), %N (name without suffix), %p (prefix), %i (instance) and %%.

    Any other '%' sequence is left as written.
    """
    table = {"n": name.full, "N": name.stem, "p": name.prefix, "i": name.instance, "%": "%"}
    out: list[str] = []
    pos = 0
    while pos < len(value):
        char = value[pos]
        if char == "%" and pos + 1 < len(value) and value[pos + 1] in table:
            out.append(table[value[pos + 1]])
            pos += 2
        else:
            out.append(char)
            pos += 1
    return "".join(out)


def split_items(value: str) -> list[str]:
    """Split an [X-Fleet] value into whitespace-separated items; double quotes group text
    (and are removed). Raises ValueError for an unbalanced quote."""
    items: list[str] = []
    current: list[str] = []
    in_item = False
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
            in_item = True
        elif char.isspace() and not quoted:
            if in_item:
                items.append("".join(current))
                current = []
                in_item = False
        else:
            current.append(char)
            in_item = True
    if quoted:
        raise ValueError(f"unbalanced double quote in {quote(value)}")
    if in_item:
        items.append("".join(current))
    return items


def _unique(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


class XFleet(Record):
    """Effective [X-Fleet] options of one unit name, specifiers already expanded."""

    machine_id: str = ""
    machine_of: tuple[str, ...] = ()
    metadata: tuple[tuple[str, tuple[str, ...]], ...] = ()
    conflicts: tuple[str, ...] = ()
    global_: bool = False
    replaces: tuple[str, ...] = ()
    # False: the service must never run twice, even briefly, so a move (fleetctl move/drain)
    # stops it before starting it elsewhere instead of make-before-break.
    move_before_stop: bool = True
    # -- resources: what the unit reserves where it runs (fleetd/unit/resources.py) --
    cpu: int = 0  # milli-CPUs
    memory: int = 0  # bytes
    # -- end resources --

    def metadata_matches(self, machine_metadata: Mapping[str, str]) -> bool:
        """True if, for every required key, the machine's value is one of the allowed values."""
        return all(machine_metadata.get(key) in allowed for key, allowed in self.metadata)

    def conflicts_with(self, other_unit_name: str) -> bool:
        """True if ``other_unit_name`` matches one of the Conflicts globs (Go path.Match rules).

        The caller decides whether a unit matching its own pattern counts.
        """
        return any(glob_match(pattern, other_unit_name) for pattern in self.conflicts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: machine_id, machine_of, metadata {key: [values]}, conflicts,
        global, replaces; cpu (milli-CPUs) and memory (bytes) when reserved."""
        out: dict[str, Any] = {
            "machine_id": self.machine_id,
            "machine_of": list(self.machine_of),
            "metadata": {key: list(values) for key, values in self.metadata},
            "conflicts": list(self.conflicts),
            "global": self.global_,
            "replaces": list(self.replaces),
            **({} if self.move_before_stop else {"move_before_stop": False}),
        }
        # -- resources: only when reserved (the shape without them is unchanged) --
        if self.cpu:
            out["cpu"] = self.cpu
        if self.memory:
            out["memory"] = self.memory
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> XFleet:
        """Inverse of to_dict; missing keys take their defaults."""
        metadata = data.get("metadata") or {}
        return cls(
            machine_id=str(data.get("machine_id") or ""),
            machine_of=tuple(str(v) for v in data.get("machine_of") or ()),
            metadata=tuple(
                (str(key), tuple(sorted(dict.fromkeys(str(v) for v in metadata[key]))))
                for key in sorted(metadata)
            ),
            conflicts=tuple(str(v) for v in data.get("conflicts") or ()),
            global_=bool(data.get("global", False)),
            replaces=tuple(str(v) for v in data.get("replaces") or ()),
            move_before_stop=bool(data.get("move_before_stop", True)),
            cpu=int(data.get("cpu") or 0),
            memory=int(data.get("memory") or 0),
        )


def xfleet_options(unit_file: UnitFile, name: str) -> XFleet:
    """Read and check the [X-Fleet] options of ``unit_file`` as seen by the unit ``name``.

    Specifiers are expanded for the unit's own name. A template ("foo@.service") has no
    instance to expand them with: its values are checked as written (so
    ``MachineMetadata=host=%i`` is accepted) and each instance is checked after expansion.
    Raises InvalidUnitName for a bad ``name`` and InvalidXFleetOptions for an unknown option,
    a malformed value or contradictory options.
    """
    unit_name = parse_name(name)

    def expand(item: str) -> str:
        return item if unit_name.is_template else expand_specifiers(item, unit_name)

    def bad(problem: str) -> InvalidXFleetOptions:
        return InvalidXFleetOptions(problem, unit=name)

    collected: dict[str, list[str]] = {key: [] for key in set(XFLEET_OPTION_ALIASES.values())}
    for section, option, raw in unit_file.options:
        if section != XFLEET_SECTION:
            continue
        canonical = XFLEET_OPTION_ALIASES.get(option)
        if canonical is None:
            raise bad(f"unknown option {quote(option)}")
        try:
            items = split_items(raw)
        except ValueError as exc:
            raise bad(f"{option}: {exc}") from None
        if canonical in (_GLOBAL, _MOVE_BEFORE_STOP) and len(items) > 1:
            raise bad(f"{canonical} takes a single value, got {quote(raw)}")
        collected[canonical].extend(expand(item) for item in items)

    machine_ids = _unique(collected[_MACHINE_ID])
    if len(machine_ids) > 1:
        raise bad("more than one MachineID: " + ", ".join(quote(m) for m in machine_ids))
    machine_of = _unique(collected[_MACHINE_OF])
    conflicts = _unique(collected[_CONFLICTS])
    replaces = _unique(collected[_REPLACES])
    metadata = _metadata(collected[_METADATA], bad)
    global_ = _boolean("Global", collected[_GLOBAL], bad, False)
    move_before_stop = _boolean("MoveBeforeStop", collected[_MOVE_BEFORE_STOP], bad, True)

    for pattern in conflicts:
        try:
            compile_glob(pattern)
        except BadPattern as exc:
            raise bad(f"Conflicts pattern {quote(pattern)} is malformed: {exc}") from None

    if global_:
        # fleet: a global unit may filter machines (MachineMetadata) and avoid conflicting
        # units (Conflicts); it cannot be pinned to, follow or replace anything.
        for label, present in (
            (_MACHINE_ID, machine_ids),
            (_MACHINE_OF, machine_of),
            (_REPLACES, replaces),
        ):
            if present:
                raise bad(f"Global=true cannot be used with {label} "
                          "(only MachineMetadata and Conflicts)")
    if machine_ids and machine_of:
        raise bad("MachineID cannot be used with MachineOf")
    if machine_ids and conflicts:
        raise bad("MachineID cannot be used with Conflicts")
    if replaces and conflicts:
        raise bad("Replaces cannot be used with Conflicts")
    if name in machine_of:
        raise bad(f"MachineOf names the unit itself ({quote(name)})")
    if name in replaces:
        raise bad(f"Replaces names the unit itself ({quote(name)})")
    for peer in machine_of:
        for pattern in conflicts:
            if glob_match(pattern, peer):
                raise bad(f"MachineOf {quote(peer)} matches Conflicts {quote(pattern)}")

    # -- resources --
    try:
        cpu, memory = demand_of(unit_file.options)
    except ValueError as exc:
        raise bad(str(exc)) from None
    # -- end resources --

    return XFleet(
        machine_id=machine_ids[0] if machine_ids else "",
        machine_of=machine_of,
        metadata=metadata,
        conflicts=conflicts,
        global_=global_,
        replaces=replaces,
        move_before_stop=move_before_stop,
        cpu=cpu,
        memory=memory,
    )


def _drop_empty(items: Iterable[str]) -> list[str]:
    return [item for item in items if item]


_Fail = Callable[[str], InvalidXFleetOptions]


def _metadata(items: list[str], bad: _Fail) -> tuple[tuple[str, tuple[str, ...]], ...]:
    allowed: dict[str, set[str]] = {}
    for item in _drop_empty(items):
        key, sep, value = item.partition("=")
        if not sep or not key or not value or "=" in value:
            raise bad(f"MachineMetadata item {quote(item)} is not of the form key=value")
        allowed.setdefault(key, set()).add(value)
    return tuple((key, tuple(sorted(allowed[key]))) for key in sorted(allowed))


def _boolean(option: str, items: list[str], bad: _Fail, default: bool) -> bool:
    """The last non-empty value of a boolean option (true/false, yes/no, ...), else `default`."""
    result = default
    for item in _drop_empty(items):
        lowered = item.lower()
        if lowered in _TRUE:
            result = True
        elif lowered in _FALSE:
            result = False
        else:
            raise bad(f"{option} value {quote(item)} is not a boolean (true/false)")
    return result


# ---------------------------------------------------------------------------
# Units


class Unit(Record):
    """A named, fully validated unit: its file, original text, hash and effective [X-Fleet]."""

    name: str
    file: UnitFile
    text: str
    hash: str
    xfleet: XFleet

    @classmethod
    def from_text(cls, name: str, text: str | bytes) -> Unit:
        """Validate name, file and [X-Fleet] options; raise the matching UnitError subclass."""
        parse_name(name)
        source = decode(text, name)
        unit_file = UnitFile.parse(source, name=name)
        return cls(
            name=name,
            file=unit_file,
            text=source,
            hash=unit_file.hash(),
            xfleet=xfleet_options(unit_file, name),
        )

    @property
    def unit_name(self) -> UnitName:
        """The parsed name (prefix, instance, suffix)."""
        return parse_name(self.name)

    def instantiate(self, instance_name: str) -> Unit:
        """Build the instance ``instance_name`` (e.g. "hello@1.service") of this template with the
        same text; raise InvalidUnitName if this is not a template or the names don't match."""
        template = self.unit_name
        if not template.is_template:
            raise InvalidUnitName(
                f"not a template unit, cannot instantiate {quote(instance_name)}", unit=self.name
            )
        instance = parse_name(instance_name)
        if not instance.is_instance or instance.template() != self.name:
            raise InvalidUnitName(
                f"not an instance of template {quote(self.name)}", unit=instance_name
            )
        return Unit.from_text(instance_name, self.text)
