"""Tests for fleetd.unit: names, unit file parsing/serialization and hashing."""

from __future__ import annotations

import hashlib
import json

import pytest

from fleetd.unit import (
    MAX_UNIT_FILE_BYTES,
    UNIT_SUFFIXES,
    InvalidUnitFile,
    InvalidUnitName,
    UnitError,
    UnitFile,
    UnitName,
    normalize_name,
    parse_name,
    validate_name,
)

# ---------------------------------------------------------------------------
# names


def test_suffixes_follow_fleet() -> None:
    assert set(UNIT_SUFFIXES) == {
        "service",
        "socket",
        "timer",
        "path",
        "device",
        "mount",
        "automount",
    }


@pytest.mark.parametrize(
    "name",
    [
        "hello.service",
        "hello.socket",
        "hello.timer",
        "hello.path",
        "hello.device",
        "hello.mount",
        "hello.automount",
        "hello@.service",
        "hello@1.service",
        "foo.1@2.service",
        "foo@1.2.service",
        "a:b_c-d\\x2d.service",
        "UPPER123.service",
        "x" * 247 + ".service",
        "dev-sda1.device",
    ],
)
def test_valid_names(name: str) -> None:
    validate_name(name)
    assert parse_name(name).full == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("", "name is empty"),
        ("x" * 248 + ".service", "longer than 255 characters"),
        ("a/b.service", 'contains "/"'),
        ("../etc.service", 'contains "/"'),
        ("a\nb.service", "control character"),
        ("a\x00b.service", "control character"),
        ("a\x7fb.service", "control character"),
        ("a\tb.service", "control character"),
        ("hello", "has no unit type suffix"),
        ("hello.", "unsupported unit type"),
        ("hello.target", 'unsupported unit type "target"'),
        ("hello.swap", "unsupported unit type"),
        ("hello.Service", "unsupported unit type"),
        ("hel lo.service", 'invalid character " "'),
        ("hel*lo.service", 'invalid character "*"'),
        ("héllo.service", 'invalid character "é"'),
        (".service", "name before the unit type suffix is empty"),
        ("..service", 'starts with "."'),
        (".hidden.service", 'starts with "."'),
        ("a..b.service", 'contains ".."'),
        ("a@b@c.service", 'more than one "@"'),
        ("@.service", 'prefix before "@" is empty'),
        ("@foo.service", 'prefix before "@" is empty'),
    ],
)
def test_invalid_names(name: str, problem: str) -> None:
    with pytest.raises(InvalidUnitName) as info:
        validate_name(name)
    assert problem in str(info.value)
    assert str(info.value).startswith("invalid unit name")
    assert info.value.unit == name
    if name:
        assert json.dumps(name, ensure_ascii=False) in str(info.value)
    assert isinstance(info.value, UnitError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidUnitName):
        UnitName.parse(name)


def test_invalid_name_message_exact() -> None:
    with pytest.raises(InvalidUnitName) as info:
        validate_name("a/b.service")
    assert str(info.value) == 'invalid unit name "a/b.service": contains "/"'
    assert info.value.unit == "a/b.service"
    assert info.value.problem == 'contains "/"'


def test_name_length_boundary() -> None:
    validate_name("x" * (255 - len(".service")) + ".service")
    with pytest.raises(InvalidUnitName):
        validate_name("x" * (256 - len(".service")) + ".service")


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("hello", "hello.service"),
        ("hello.service", "hello.service"),
        ("hello.socket", "hello.socket"),
        ("hello.timer", "hello.timer"),
        ("hello@", "hello@.service"),
        ("hello@1", "hello@1.service"),
        ("hello@1.service", "hello@1.service"),
        ("foo.link", "foo.link.service"),
        ("foo.target", "foo.target.service"),
        ("v1.2", "v1.2.service"),
    ],
)
def test_normalize_name(arg: str, expected: str) -> None:
    assert normalize_name(arg) == expected


@pytest.mark.parametrize(
    ("name", "prefix", "instance", "suffix", "stem", "is_template", "is_instance"),
    [
        ("foo.service", "foo", "", "service", "foo", False, False),
        ("foo@.service", "foo", "", "service", "foo@", True, False),
        ("foo@bar.service", "foo", "bar", "service", "foo@bar", False, True),
        ("foo.1@.service", "foo.1", "", "service", "foo.1@", True, False),
        ("foo.1@2.service", "foo.1", "2", "service", "foo.1@2", False, True),
        ("ssh@.socket", "ssh", "", "socket", "ssh@", True, False),
        ("ssh@1.socket", "ssh", "1", "socket", "ssh@1", False, True),
        ("web@1.2.timer", "web", "1.2", "timer", "web@1.2", False, True),
    ],
)
def test_parse_name(
    name: str,
    prefix: str,
    instance: str,
    suffix: str,
    stem: str,
    is_template: bool,
    is_instance: bool,
) -> None:
    parsed = parse_name(name)
    assert parsed == UnitName(full=name, prefix=prefix, instance=instance, suffix=suffix)
    assert parsed.stem == stem
    assert parsed.is_template is is_template
    assert parsed.is_instance is is_instance


@pytest.mark.parametrize(
    ("name", "template"),
    [
        ("hello@1.service", "hello@.service"),
        ("ssh@10.0.0.1.socket", "ssh@.socket"),
        ("foo.1@2.service", "foo.1@.service"),
    ],
)
def test_template_of_instance(name: str, template: str) -> None:
    assert parse_name(name).template() == template


@pytest.mark.parametrize("name", ["hello.service", "hello@.service"])
def test_template_of_non_instance_raises(name: str) -> None:
    with pytest.raises(InvalidUnitName, match="not an instance"):
        parse_name(name).template()


def test_with_instance() -> None:
    assert parse_name("hello@.service").with_instance("7").full == "hello@7.service"
    with pytest.raises(InvalidUnitName, match="not a template"):
        parse_name("hello.service").with_instance("7")
    with pytest.raises(InvalidUnitName, match="/"):
        parse_name("hello@.service").with_instance("a/b")


# ---------------------------------------------------------------------------
# parsing


def test_parse_basic() -> None:
    text = """
[Unit]
;ignore this guy
Description = Foo

[Service]
ExecStart=echo "ping";
ExecStop=echo "pong"
# ignore me, too
ExecStop=echo post

[X-Fleet]
MachineMetadata=foo=bar
MachineMetadata=baz=qux
"""
    unit_file = UnitFile.parse(text)
    assert unit_file.options == (
        ("Unit", "Description", "Foo"),
        ("Service", "ExecStart", 'echo "ping";'),
        ("Service", "ExecStop", 'echo "pong"'),
        ("Service", "ExecStop", "echo post"),
        ("X-Fleet", "MachineMetadata", "foo=bar"),
        ("X-Fleet", "MachineMetadata", "baz=qux"),
    )
    assert unit_file.values("Service", "ExecStop") == ['echo "pong"', "echo post"]
    assert unit_file.values("Service", "Nope") == []
    assert unit_file.values("Nope", "ExecStop") == []
    assert unit_file.description() == "Foo"
    assert unit_file.sections() == ["Unit", "Service", "X-Fleet"]


def test_parse_garbage_key_with_equals_passes_through() -> None:
    unit_file = UnitFile.parse("[Service]\nExecStart=jim\n<<<<<<<<<<<=bar\n")
    assert unit_file.values("Service", "<<<<<<<<<<<") == ["bar"]


def test_parse_continuations_kept_verbatim() -> None:
    text = (
        "[Service]\n"
        'ExecStart=echo \\\n  "pi\\\n  ng"\n'
        'ExecStop=\\\necho "po\\\nng"\n'
        "# comments within continuation should not be ignored\n"
        "ExecStopPre=echo\\\n#pang\n"
        "ExecStopPost=echo\\\n#peng\\\npung\n"
    )
    unit_file = UnitFile.parse(text)
    assert unit_file.options == (
        ("Service", "ExecStart", 'echo \\\n  "pi\\\n  ng"'),
        ("Service", "ExecStop", '\\\necho "po\\\nng"'),
        ("Service", "ExecStopPre", "echo\\\n#pang"),
        ("Service", "ExecStopPost", "echo\\\n#peng\\\npung"),
    )


def test_continuation_ended_by_blank_line() -> None:
    unit_file = UnitFile.parse("[Service]\nExecStart=foo \\\n\nUser=me\n")
    assert unit_file.values("Service", "ExecStart") == ["foo \\\n"]
    assert unit_file.values("Service", "User") == ["me"]


def test_continuation_at_end_of_file() -> None:
    unit_file = UnitFile.parse("[Service]\nExecStart=foo \\")
    assert unit_file.values("Service", "ExecStart") == ["foo \\\n"]
    assert UnitFile.parse(unit_file.serialize()) == unit_file


def test_comment_continuation_swallows_next_line() -> None:
    unit_file = UnitFile.parse("[Service]\n# note \\ \nExecStart=hidden\nUser=me\n")
    assert unit_file.options == (("Service", "User", "me"),)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("\n\n   \n", ()),
        ("# only a comment\n; another\n", ()),
        ("[Unit]\n", ()),
        ("[Unit]\n[Service]\n", ()),
        ("[Unit]\nDescription=\n", (("Unit", "Description", ""),)),
        ("[Unit]\n  Description  =  spaced  \n", (("Unit", "Description", "spaced"),)),
        ("  [Unit]  \nA=1\n", (("Unit", "A", "1"),)),
        ("[Unit]\r\nA=1\r\nB=2\r\n", (("Unit", "A", "1"), ("Unit", "B", "2"))),
        ("\ufeff[Unit]\nA=1\n", (("Unit", "A", "1"),)),
        ("[Unit]\nA=x=y\n", (("Unit", "A", "x=y"),)),
        ("[Unit]\nA=1 # not a comment\n", (("Unit", "A", "1 # not a comment"),)),
        ("[Unit]\n\t# indented comment\nA=1", (("Unit", "A", "1"),)),
        ("[X-Fleet]\nGlobal=true", (("X-Fleet", "Global", "true"),)),
        (
            "[Unit]\nA=1\n[Service]\nB=2\n[Unit]\nC=3\n",
            (
                ("Unit", "A", "1"),
                ("Unit", "C", "3"),
                ("Service", "B", "2"),
            ),
        ),
    ],
)
def test_parse_table(text: str, expected: tuple[tuple[str, str, str], ...]) -> None:
    assert UnitFile.parse(text).options == expected


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("[Unit]\n\n[Service]\n<<<<<<<<<<<<<<<<\n", 4, "expected Name=Value"),
        ("[Unit]\nnonsense upon stilts\n", 2, "expected Name=Value"),
        ("[Unit]\nnonsense", 2, "expected Name=Value"),
        ("Description=Foo\n[Unit]\n", 1, "before the first [Section] header"),
        ("\n\nhello\n[Unit]\n", 3, "before the first [Section] header"),
        ("[Unit\nA=1\n", 1, 'has no closing "]"'),
        ("[Unit] trailing\nA=1\n", 1, "after section header"),
        ("[Unit]\nA=1\n[Service]x\n", 3, "after section header"),
        ("[Unit]\n=orphan\n", 2, "option without a name"),
    ],
)
def test_parse_errors_name_line(text: str, line: int, problem: str) -> None:
    with pytest.raises(InvalidUnitFile) as info:
        UnitFile.parse(text, name="hello.service")
    message = str(info.value)
    assert message.startswith('invalid unit file "hello.service": ')
    assert f"line {line}:" in message
    assert problem in message
    assert info.value.line == line


def test_parse_error_without_name() -> None:
    with pytest.raises(InvalidUnitFile) as info:
        UnitFile.parse("[Unit]\nbogus\n")
    assert str(info.value) == 'invalid unit file: line 2: expected Name=Value, got "bogus"'


@pytest.mark.parametrize(
    "data",
    [
        b"[Unit]\nDescription=\xff\xfe\n",
        b"[Unit]\nDescription=\xc3\n",
        b"\x80",
    ],
)
def test_non_utf8_rejected(data: bytes) -> None:
    with pytest.raises(InvalidUnitFile, match="not valid UTF-8"):
        UnitFile.parse(data, name="x.service")


def test_non_utf8_names_line() -> None:
    with pytest.raises(InvalidUnitFile) as info:
        UnitFile.parse(b"[Unit]\nA=1\nB=\xff\n")
    assert info.value.line == 3


def test_lone_surrogate_str_rejected() -> None:
    with pytest.raises(InvalidUnitFile, match="not valid UTF-8"):
        UnitFile.parse("[Unit]\nA=\udcff\n")


def test_bytes_and_str_parse_alike() -> None:
    text = "[Unit]\nDescription=Grüße ☃\n"
    assert UnitFile.parse(text) == UnitFile.parse(text.encode())


def test_size_limit() -> None:
    assert MAX_UNIT_FILE_BYTES == 1024 * 1024
    head = "[Service]\nX="
    fits = head + "a" * (MAX_UNIT_FILE_BYTES - len(head))
    assert len(UnitFile.parse(fits).options) == 1
    assert len(UnitFile.parse(fits.encode()).options) == 1
    too_big = fits + "a"
    for data in (too_big, too_big.encode()):
        with pytest.raises(InvalidUnitFile, match="too large"):
            UnitFile.parse(data, name="big.service")


def test_size_limit_counts_utf8_bytes() -> None:
    head = "[Service]\nX="
    text = head + "é" * ((MAX_UNIT_FILE_BYTES - len(head)) // 2 + 1)
    assert len(text) < MAX_UNIT_FILE_BYTES
    with pytest.raises(InvalidUnitFile, match="too large"):
        UnitFile.parse(text)


def test_description() -> None:
    assert UnitFile.parse("[Unit]\nDescription=A\nDescription=B\n").description() == "A"
    assert UnitFile.parse("[Unit]\n\n[Service]\nExecStart=x\n").description() == ""
    assert UnitFile.parse("[Service]\nDescription=wrong section\n").description() == ""


# ---------------------------------------------------------------------------
# serialization and hashing


def test_serialize_canonical_form() -> None:
    unit_file = UnitFile.parse(
        "# header\n[Unit]\nDescription = Foo  \n\n\n[Service]\n  ExecStart=/bin/true\nUser=me\n"
    )
    assert unit_file.serialize() == (
        "[Unit]\nDescription=Foo\n\n[Service]\nExecStart=/bin/true\nUser=me\n"
    )


def test_serialize_empty() -> None:
    assert UnitFile().serialize() == ""
    assert UnitFile.parse("").hash() == hashlib.sha1(b"").hexdigest()


def test_hash_matches_fleet() -> None:
    # The value fleet's own unit tests expect for this file.
    unit_file = UnitFile.parse("[Service]\nExecStart=/bin/sleep 100\n")
    assert unit_file.hash() == "1c6fb6f3684bafb0c173d8b8b957ceff031180c1"


def test_hash_is_sha1_of_serialized_utf8() -> None:
    unit_file = UnitFile.parse("[Unit]\nDescription=☃\n")
    expected = hashlib.sha1(unit_file.serialize().encode("utf-8")).hexdigest()
    assert unit_file.hash() == expected
    assert len(expected) == 40


BASE = "[Unit]\nDescription=Foo\n\n[Service]\nExecStart=/bin/sleep 100\n"


@pytest.mark.parametrize(
    "variant",
    [
        BASE,
        "# leading comment\n" + BASE,
        BASE.replace("[Service]", "; comment\n[Service]"),
        BASE.replace("\n\n", "\n\n\n\n"),
        BASE.replace("\n\n", "\n"),
        BASE.replace("Description=Foo", "  Description   =   Foo   "),
        BASE.replace("\n", "\r\n"),
        BASE + "\n\n# trailing\n",
        BASE + "[Empty]\n",
        "[Unit]\nDescription=Foo\n[Service]\nExecStart=/bin/sleep 100",
    ],
)
def test_hash_ignores_comments_and_whitespace(variant: str) -> None:
    assert UnitFile.parse(variant).hash() == UnitFile.parse(BASE).hash()
    assert UnitFile.parse(variant) == UnitFile.parse(BASE)


@pytest.mark.parametrize(
    "variant",
    [
        BASE.replace("Foo", "Bar"),
        BASE.replace("Description", "description"),
        BASE.replace("sleep 100", "sleep  100"),
        BASE + "User=me\n",
        "[Service]\nExecStart=/bin/sleep 100\n\n[Unit]\nDescription=Foo\n",
        BASE.replace("[Service]", "[service]"),
    ],
)
def test_hash_differs_for_real_changes(variant: str) -> None:
    assert UnitFile.parse(variant).hash() != UnitFile.parse(BASE).hash()


def test_serialize_round_trip_of_continuations() -> None:
    text = '[Service]\nExecStart=echo \\\n  "pi\\\n  ng"\nUser=me\n'
    unit_file = UnitFile.parse(text)
    assert UnitFile.parse(unit_file.serialize()) == unit_file


def test_from_options_groups_and_validates() -> None:
    unit_file = UnitFile.from_options(
        [("Unit", "A", "1"), ("Service", "B", "2"), ("Unit", "C", "3")], name="x.service"
    )
    assert unit_file.options == (("Unit", "A", "1"), ("Unit", "C", "3"), ("Service", "B", "2"))


@pytest.mark.parametrize(
    "option",
    [
        ("Unit", "A", " padded"),
        ("Unit", "A=B", "1"),
        ("Unit", "A\nB", "1"),
        ("Un]it", "A", "1"),
        ("Unit", "#A", "1"),
        ("Unit", "A", "line\nbreak"),
    ],
)
def test_from_options_rejects_unrepresentable(option: tuple[str, str, str]) -> None:
    with pytest.raises(InvalidUnitFile) as info:
        UnitFile.from_options([option], name="x.service")
    assert '"x.service"' in str(info.value)
