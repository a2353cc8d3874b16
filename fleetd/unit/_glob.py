"""Glob patterns with the semantics of Go's path.Match (used by fleet's Conflicts option)."""

from __future__ import annotations

import re
from functools import lru_cache


class BadPattern(ValueError):
    """The pattern is malformed (Go's path.ErrBadPattern)."""


def _class_char(pattern: str, pos: int) -> tuple[str, int]:
    """Read one (possibly escaped) character of a character class; return (char, next pos)."""
    if pos >= len(pattern):
        raise BadPattern("unterminated character class")
    char = pattern[pos]
    if char in "-]":
        raise BadPattern(f"unexpected {char!r} in character class")
    if char == "\\":
        pos += 1
        if pos >= len(pattern):
            raise BadPattern("trailing backslash")
        char = pattern[pos]
    return char, pos + 1


@lru_cache(maxsize=1024)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """Translate a Go path.Match pattern to a compiled regex; raise BadPattern if malformed.

    '*' matches any run of characters other than '/', '?' one character other than '/',
    '[...]' / '[^...]' a character class with ranges, and '\\\\' escapes the next character.
    """
    out: list[str] = []
    pos = 0
    size = len(pattern)
    while pos < size:
        char = pattern[pos]
        if char == "*":
            out.append("[^/]*")
            pos += 1
        elif char == "?":
            out.append("[^/]")
            pos += 1
        elif char == "\\":
            if pos + 1 >= size:
                raise BadPattern("trailing backslash")
            out.append(re.escape(pattern[pos + 1]))
            pos += 2
        elif char == "[":
            pos += 1
            negate = pos < size and pattern[pos] == "^"
            if negate:
                pos += 1
            ranges: list[str] = []
            while True:
                if pos < size and pattern[pos] == "]" and ranges:
                    pos += 1
                    break
                low, pos = _class_char(pattern, pos)
                high = low
                if pos < size and pattern[pos] == "-":
                    high, pos = _class_char(pattern, pos + 1)
                    if high < low:
                        raise BadPattern(f"bad range {low}-{high}")
                ranges.append(re.escape(low) + ("-" + re.escape(high) if high != low else ""))
            out.append("[" + ("^" if negate else "") + "".join(ranges) + "]")
        else:
            out.append(re.escape(char))
            pos += 1
    return re.compile("".join(out), re.DOTALL)


def glob_match(pattern: str, name: str) -> bool:
    """True if ``name`` matches ``pattern`` as Go's path.Match would; a bad pattern matches nothing
    (as fleet ignores path.Match errors)."""
    try:
        regex = compile_glob(pattern)
    except BadPattern:
        return False
    return regex.fullmatch(name) is not None
