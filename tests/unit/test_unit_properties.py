"""Property tests (hypothesis) for fleetd.unit parsing, hashing and name validation."""

from __future__ import annotations

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from fleetd.unit import (
    InvalidUnitFile,
    InvalidUnitName,
    UnitFile,
    UnitName,
    XFleet,
    glob_match,
    normalize_name,
    validate_name,
)

# No example database: keep the source tree free of .hypothesis/ files.
_SETTINGS = settings(max_examples=300, database=None)
_TEXT = st.characters(
    codec="utf-8",  # no surrogates
    blacklist_characters="\n\r",
)


def _option_name() -> st.SearchStrategy[str]:
    return st.text(_TEXT, min_size=1, max_size=12).filter(
        lambda s: "=" not in s and s == s.strip() and s[0] not in "[#;" and s.isprintable()
    )


def _section_name() -> st.SearchStrategy[str]:
    return st.text(_TEXT, min_size=1, max_size=12).filter(
        lambda s: "]" not in s and s.isprintable() and s.strip() != "")


def _simple_value() -> st.SearchStrategy[str]:
    return st.text(_TEXT, max_size=30).filter(
        lambda s: s == s.strip() and s.isprintable() and not s.endswith("\\")
    )


def _continued_value() -> st.SearchStrategy[str]:
    line = st.text(_TEXT, min_size=1, max_size=10).filter(
        lambda s: s.strip() != "" and s.isprintable() and not s.rstrip().endswith("\\")
    )
    return st.lists(line, min_size=2, max_size=4).map(lambda ls: "\\\n".join(ls).strip())


@st.composite
def unit_files(draw: st.DrawFn) -> UnitFile:
    """Unit files in canonical form (options grouped by section)."""
    sections = draw(st.lists(_section_name(), unique=True, max_size=4))
    options: list[tuple[str, str, str]] = []
    for section in sections:
        entries = draw(
            st.lists(
                st.tuples(_option_name(), st.one_of(_simple_value(), _continued_value())),
                max_size=5,
            )
        )
        options.extend((section, name, value) for name, value in entries)
    return UnitFile(tuple(options))


@given(unit_files())
@_SETTINGS
def test_parse_serialize_round_trip(unit_file: UnitFile) -> None:
    text = unit_file.serialize()
    assert UnitFile.parse(text) == unit_file
    assert UnitFile.parse(text.encode("utf-8")) == unit_file
    assert UnitFile.from_options(unit_file.options) == unit_file


@given(st.text(st.characters(codec="utf-8"), max_size=200))
@_SETTINGS
@example("[A]\nx=1 \\")
@example("[A]\nx=\\\n\n[B]\ny=2\n[A]\nz=3")
def test_serialize_is_a_fixpoint_of_parse(text: str) -> None:
    try:
        unit_file = UnitFile.parse(text)
    except InvalidUnitFile:
        return
    again = UnitFile.parse(unit_file.serialize())
    assert again == unit_file
    assert again.hash() == unit_file.hash()


@st.composite
def _noisy(draw: st.DrawFn, unit_file: UnitFile) -> str:
    """Render ``unit_file`` with random comments, blank lines and padding around options."""
    noise = st.sampled_from(["", "\n", "# a comment\n", "; other comment\n", "  \n", "\t\n"])
    pad = st.sampled_from(["", " ", "  ", "\t"])
    out: list[str] = [draw(noise)]
    current: str | None = None
    for section, name, value in unit_file.options:
        if section != current:
            out.append(f"{draw(pad)}[{section}]{draw(pad)}\n{draw(noise)}")
            current = section
        out.append(f"{draw(pad)}{name}{draw(pad)}={draw(pad)}{value}\n{draw(noise)}")
    return "".join(out)


@given(st.data(), unit_files())
@_SETTINGS
def test_hash_stable_under_comments_and_blank_lines(data: st.DataObject, f: UnitFile) -> None:
    assume(all(not value.endswith("\\") for _, _, value in f.options))
    noisy = data.draw(_noisy(f))
    parsed = UnitFile.parse(noisy)
    assert parsed == f
    assert parsed.hash() == f.hash()


@given(unit_files(), unit_files())
@settings(database=None)
def test_hash_equality_iff_file_equality(a: UnitFile, b: UnitFile) -> None:
    assert (a.hash() == b.hash()) == (a == b)


_NAME_CHARS = st.characters(
    whitelist_categories=("Lu", "Ll", "Nd", "Cc", "Po", "Pd", "Zs", "Sm"),
)


@given(st.text(_NAME_CHARS, max_size=40), st.sampled_from(["/", "\x00", "\n", "\x1f", "\x7f"]))
@_SETTINGS
def test_validate_name_refuses_slash_and_controls(stem: str, bad: str) -> None:
    for name in (f"{bad}{stem}.service", f"{stem}{bad}.service", f"a{bad}{stem}@x.socket"):
        try:
            validate_name(name)
        except InvalidUnitName:
            continue
        raise AssertionError(f"accepted {name!r}")


@given(st.text(_NAME_CHARS, max_size=300))
@settings(max_examples=500, database=None)
def test_accepted_names_are_safe(name: str) -> None:
    try:
        parsed = UnitName.parse(name)
    except InvalidUnitName:
        return
    assert "/" not in name and ".." not in name
    assert all(ch.isprintable() and ch.isascii() for ch in name)
    assert 0 < len(name) <= 255
    assert parsed.prefix and name.count("@") <= 1
    assert normalize_name(name) == name


@given(st.from_regex(r"\A[a-z0-9_-]{1,20}(@[a-z0-9.]{0,10})?\Z"))
@settings(database=None)
def test_normalized_plain_names_are_services(arg: str) -> None:
    name = normalize_name(arg)
    assume(".." not in name and not name.startswith("."))
    validate_name(name)
    assert name.endswith(".service")


@given(st.text(st.characters(whitelist_categories=("Ll", "Nd")), max_size=15))
@settings(database=None)
def test_glob_literal_and_star(name: str) -> None:
    assert glob_match(name, name)
    assert glob_match("*", name)
    assert XFleet(conflicts=(name + "*",)).conflicts_with(name + "x")
