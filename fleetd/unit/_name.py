"""Unit names: validation, normalisation and the template/instance structure."""

from __future__ import annotations

import string
import unicodedata

from fleetd.unit._errors import InvalidUnitName, quote
from fleetd.unit._record import Record

#: Unit types fleet schedules (fleet's ``RecognizedUnitType``).
UNIT_SUFFIXES: tuple[str, ...] = (
    "service",
    "socket",
    "timer",
    "path",
    "device",
    "mount",
    "automount",
)

#: systemd's UNIT_NAME_MAX is 256 bytes including the terminating NUL.
MAX_UNIT_NAME_LENGTH = 255

#: Characters allowed in the part of a name before the type suffix (systemd's VALID_CHARS + '@').
_NAME_CHARS = frozenset(string.ascii_letters + string.digits + ":-_.\\@")

_DEFAULT_SUFFIX = "service"


def _is_control(char: str) -> bool:
    return unicodedata.category(char) == "Cc"


def _describe_char(char: str) -> str:
    if _is_control(char):
        return f"control character {quote(char)}"
    return f"character {quote(char)}"


def _check(name: str) -> tuple[str, str]:
    """Validate ``name``; return (part before the last '.', suffix) or raise InvalidUnitName."""

    def bad(problem: str) -> InvalidUnitName:
        return InvalidUnitName(problem, unit=name)

    if not name:
        raise InvalidUnitName("name is empty")
    if len(name) > MAX_UNIT_NAME_LENGTH:
        raise bad(f"longer than {MAX_UNIT_NAME_LENGTH} characters ({len(name)})")
    if "/" in name:
        raise bad('contains "/"')
    for char in name:
        if _is_control(char):
            raise bad(f"contains {_describe_char(char)}")
    dot = name.rfind(".")
    if dot == -1:
        raise bad("has no unit type suffix (expected one of " + _suffix_list() + ")")
    stem, suffix = name[:dot], name[dot + 1 :]
    if suffix not in UNIT_SUFFIXES:
        raise bad(f"unsupported unit type {quote(suffix)} (expected one of {_suffix_list()})")
    for char in stem:
        if char not in _NAME_CHARS:
            raise bad(f"contains invalid {_describe_char(char)}")
    if not stem:
        raise bad("name before the unit type suffix is empty")
    if stem.startswith("."):
        raise bad('starts with "."')
    if ".." in name:
        raise bad('contains ".."')
    if stem.count("@") > 1:
        raise bad('contains more than one "@"')
    if stem.startswith("@"):
        raise bad('prefix before "@" is empty')
    return stem, suffix


def _suffix_list() -> str:
    return ", ".join("." + s for s in UNIT_SUFFIXES)


def validate_name(name: str) -> None:
    """Check ``name`` against fleet's unit name rules; raise InvalidUnitName saying why not."""
    _check(name)


def has_known_suffix(name: str) -> bool:
    """True if ``name`` ends in '.' plus one of UNIT_SUFFIXES (fleet's RecognizedUnitType)."""
    return any(name.endswith("." + suffix) for suffix in UNIT_SUFFIXES)


def normalize_name(arg: str) -> str:
    """Return ``arg`` unchanged if it ends in a known unit suffix, else ``arg + ".service"``.

    This is fleetctl's rule for command-line names; it does not validate the result.
    """
    if has_known_suffix(arg):
        return arg
    return f"{arg}.{_DEFAULT_SUFFIX}"


class UnitName(Record):
    """A validated unit name split into prefix (%p), instance (%i) and suffix."""

    full: str
    prefix: str
    instance: str
    suffix: str

    @property
    def stem(self) -> str:
        """The name without its type suffix (%N), e.g. "hello@1"."""
        return self.full[: -(len(self.suffix) + 1)]

    @property
    def is_template(self) -> bool:
        """True for "hello@.service" (an '@' with nothing after it)."""
        return "@" in self.stem and not self.instance

    @property
    def is_instance(self) -> bool:
        """True for "hello@1.service" (an '@' followed by an instance name)."""
        return bool(self.instance)

    def template(self) -> str:
        """Return the template name of an instance ("hello@.service"); raise InvalidUnitName
        for a name that is not an instance."""
        if not self.is_instance:
            raise InvalidUnitName("not an instance of a template unit", unit=self.full)
        return f"{self.prefix}@.{self.suffix}"

    def with_instance(self, instance: str) -> UnitName:
        """Return the instance ``instance`` of this template (validated); raise InvalidUnitName
        if this name is not a template."""
        if not self.is_template:
            raise InvalidUnitName("not a template unit", unit=self.full)
        return UnitName.parse(f"{self.prefix}@{instance}.{self.suffix}")

    @classmethod
    def parse(cls, name: str) -> UnitName:
        """Validate ``name`` and split it; raise InvalidUnitName if it is invalid."""
        stem, suffix = _check(name)
        prefix, _, instance = stem.partition("@")
        return cls(full=name, prefix=prefix, instance=instance, suffix=suffix)


def parse_name(name: str) -> UnitName:
    """Validate and split ``name``; same as UnitName.parse."""
    return UnitName.parse(name)
