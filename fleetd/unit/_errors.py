"""Exceptions raised by the unit model for invalid input."""

from __future__ import annotations


def quote(text: str) -> str:
    """Return ``text`` double-quoted with control characters escaped, for error messages."""
    import json  # only when there is an error to word: its import is 2-3 ms of each run

    return json.dumps(text, ensure_ascii=False)


class UnitError(ValueError):
    """Base: every invalid-input error; str(e) names the unit and the problem.

    Attributes: ``unit`` (the unit name, may be ''), ``problem`` (what is wrong) and
    ``line`` (1-based line number in the unit file, or None).
    """

    what = "invalid unit"
    joiner = ""

    def __init__(self, problem: str, *, unit: str = "", line: int | None = None) -> None:
        self.unit = unit
        self.problem = problem
        self.line = line
        message = self.what
        if unit:
            message += f"{self.joiner} {quote(unit)}"
        message += ": "
        if line is not None:
            message += f"line {line}: "
        message += problem
        super().__init__(message)


class InvalidUnitName(UnitError):
    """The unit name breaks fleet's naming rules."""

    what = "invalid unit name"


class InvalidUnitFile(UnitError):
    """The unit file cannot be parsed: syntax error, non-UTF-8 text or too large."""

    what = "invalid unit file"


class InvalidXFleetOptions(UnitError):
    """The [X-Fleet] section holds an unknown option, a malformed value or a contradiction."""

    what = "invalid [X-Fleet] options"
    joiner = " in"
