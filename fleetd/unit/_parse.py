"""systemd unit file syntax: a parser and serializer following go-systemd's unit package.

Options are ``(section, name, value)`` triples. The serializer groups options by section in
the order sections first appear, writes ``[Section]`` then ``Name=Value`` lines, and puts a
blank line between sections; its output is what fleet hashes.
"""

from __future__ import annotations

from collections.abc import Iterable

from fleetd.unit._errors import InvalidUnitFile, quote

#: Largest unit file accepted, in bytes of UTF-8.
MAX_UNIT_FILE_BYTES = 1024 * 1024

Option = tuple[str, str, str]

# Go's unicode.IsSpace set (what strings.TrimSpace strips); Python's str.strip() also strips
# U+001C..U+001F, which Go keeps.
_SPACE = (
    "\t\n\v\f\r \x85\xa0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_COMMENT = "#;"
_BOM = "\ufeff"
# C0 controls and DEL: systemd refuses NUL, and none of them belongs in a unit file (a tab may
# separate words in a value; a newline only continues one).
_CONTROL = frozenset(chr(c) for c in (*range(0x20), 0x7F)) - {"\t"}


def _strip(text: str) -> str:
    return text.strip(_SPACE)


def decode(text: str | bytes, name: str = "") -> str:
    """Return ``text`` as str, checking size and UTF-8; raise InvalidUnitFile otherwise."""
    if isinstance(text, bytes):
        raw = text
        if len(raw) > MAX_UNIT_FILE_BYTES:
            raise InvalidUnitFile(_too_large(len(raw)), unit=name)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise InvalidUnitFile(
                f"not valid UTF-8 (byte offset {exc.start})", unit=name, line=line
            ) from None
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError as exc:
        line = text.count("\n", 0, exc.start) + 1
        raise InvalidUnitFile(
            f"not valid UTF-8 (unpaired surrogate at character {exc.start})", unit=name, line=line
        ) from None
    if size > MAX_UNIT_FILE_BYTES:
        raise InvalidUnitFile(_too_large(size), unit=name)
    return text


def _too_large(size: int) -> str:
    return f"too large ({size} bytes, limit {MAX_UNIT_FILE_BYTES})"


def parse_options(text: str | bytes, name: str = "") -> tuple[Option, ...]:
    """Parse unit file text into options grouped by section (file order within a section).

    Raises InvalidUnitFile naming ``name`` and the line for syntax errors, non-UTF-8 input
    and files over MAX_UNIT_FILE_BYTES.
    """
    source = decode(text, name)
    if source.startswith(_BOM):
        source = source[1:]
    lines = [line.removesuffix("\r") for line in source.split("\n")]
    count = len(lines)
    options: list[Option] = []
    section: str | None = None
    index = 0

    def fail(problem: str, at: int) -> InvalidUnitFile:
        return InvalidUnitFile(problem, unit=name, line=at + 1)

    while index < count:
        start = index
        body = lines[index].lstrip(_SPACE)
        index += 1
        if not body:
            continue
        if body[0] in _COMMENT:
            # A comment ending in a backslash (one trailing blank allowed) swallows the next line.
            rest = body[1:]
            while index < count:
                trimmed = rest.removesuffix(" ")
                if not trimmed.endswith("\\"):
                    break
                rest = lines[index]
                index += 1
            continue
        if body[0] == "[":
            close = body.find("]")
            if close == -1:
                raise fail(f'section header {quote(body)} has no closing "]"', start)
            garbage = _strip(body[close + 1 :])
            if garbage:
                raise fail(f"unexpected text {quote(garbage)} after section header", start)
            section = body[1:close]
            if not _strip(section):
                raise fail("empty section name []", start)
            if problem := _control(section, "section name"):
                raise fail(problem, start)
            continue
        equals = body.find("=")
        if section is None:
            what = "option" if equals != -1 else "text"
            raise fail(f"{what} {quote(body)} before the first [Section] header", start)
        if equals == -1:
            raise fail(f"expected Name=Value, got {quote(body)}", start)
        option_name = _strip(body[:equals])
        if not option_name:
            raise fail(f"option without a name: {quote(body)}", start)
        value, index = _read_value(body[equals + 1 :], lines, index)
        if problem := (_control(option_name, "option name")
                       or _control(value.replace("\n", ""), f"value of {option_name}")):
            raise fail(problem, start)
        options.append((section, option_name, value))
    return group_by_section(options)


def _control(text: str, what: str) -> str:
    """The problem if ``text`` holds a control character, else ''."""
    for char in text:
        if char in _CONTROL:
            return f"{what} contains control character {quote(char)}"
    return ""


def _read_value(first: str, lines: list[str], index: int) -> tuple[str, int]:
    """Read a value starting with ``first``, following backslash continuations.

    As go-systemd does, continued lines are kept verbatim (backslash and newline included) and a
    blank line ends the value. Returns (value, index of the next unread line).
    """
    parts: list[str] = []
    current = first
    while _strip(current):
        parts.append(current)
        if not current.endswith("\\"):
            break
        parts.append("\n")
        if index >= len(lines):
            break
        current = lines[index]
        index += 1
    value = "".join(parts)
    if value.endswith("\n"):
        return _strip(value) + "\n", index
    return _strip(value), index


def group_by_section(options: Iterable[Option]) -> tuple[Option, ...]:
    """Stable-group options by section, sections in order of first appearance."""
    grouped: dict[str, list[Option]] = {}
    for option in options:
        grouped.setdefault(option[0], []).append(option)
    return tuple(option for group in grouped.values() for option in group)


def serialize_options(options: Iterable[Option]) -> str:
    """Canonical text: "[Section]\\n" then "Name=Value\\n" lines, a blank line between sections."""
    grouped: dict[str, list[Option]] = {}
    for option in options:
        grouped.setdefault(option[0], []).append(option)
    chunks = []
    for section, group in grouped.items():
        body = "".join(f"{name}={value}\n" for _, name, value in group)
        chunks.append(f"[{section}]\n{body}")
    return "\n".join(chunks)
