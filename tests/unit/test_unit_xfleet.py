"""Tests for fleetd.unit: [X-Fleet] options, specifiers, globs and the Unit type."""

from __future__ import annotations

import json

import pytest

from fleetd.unit import (
    InvalidUnitFile,
    InvalidUnitName,
    InvalidXFleetOptions,
    Unit,
    UnitFile,
    XFleet,
    expand_specifiers,
    glob_match,
    parse_name,
    split_items,
    xfleet_options,
)


def xf(body: str, name: str = "foo.service") -> XFleet:
    """Effective X-Fleet options of a file whose [X-Fleet] section is ``body``."""
    return xfleet_options(UnitFile.parse("[X-Fleet]\n" + body), name)


# ---------------------------------------------------------------------------
# options and aliases


def test_no_xfleet_section() -> None:
    assert xfleet_options(UnitFile.parse("[Service]\nExecStart=x\n"), "a.service") == XFleet()
    assert xf("") == XFleet()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("MachineID=abc123", XFleet(machine_id="abc123")),
        ("X-ConditionMachineID=abc123", XFleet(machine_id="abc123")),
        ("X-ConditionMachineBootID=abc123", XFleet(machine_id="abc123")),
        ("MachineID=abc\nX-ConditionMachineID=abc", XFleet(machine_id="abc")),
        ("MachineOf=bar.service", XFleet(machine_of=("bar.service",))),
        ("X-ConditionMachineOf=bar.service", XFleet(machine_of=("bar.service",))),
        (
            "MachineOf=a.service\nMachineOf=b.service\nX-ConditionMachineOf=a.service",
            XFleet(machine_of=("a.service", "b.service")),
        ),
        ("MachineMetadata=region=us", XFleet(metadata=(("region", ("us",)),))),
        ("X-ConditionMachineMetadata=region=us", XFleet(metadata=(("region", ("us",)),))),
        ("Conflicts=bar*", XFleet(conflicts=("bar*",))),
        ("X-Conflicts=bar*", XFleet(conflicts=("bar*",))),
        (
            "Conflicts=a.service\nX-Conflicts=b*.service",
            XFleet(conflicts=("a.service", "b*.service")),
        ),
        ("Conflicts=a.service b*.service", XFleet(conflicts=("a.service", "b*.service"))),
        ('Conflicts="a.service" "b*.service"', XFleet(conflicts=("a.service", "b*.service"))),
        ("Global=true", XFleet(global_=True)),
        ("Global=false", XFleet(global_=False)),
        ("Replaces=old.service", XFleet(replaces=("old.service",))),
        ("Replaces=old.service older.service", XFleet(replaces=("old.service", "older.service"))),
        ("MachineID=", XFleet()),
        ("Conflicts=", XFleet()),
        ("Global=", XFleet()),
    ],
)
def test_options_and_aliases(body: str, expected: XFleet) -> None:
    assert xf(body) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("true", True),
        ("True", True),
        ("TRUE", True),
        ("yes", True),
        ("1", True),
        ("on", True),
        ("t", True),
        ("false", False),
        ("no", False),
        ("0", False),
        ("off", False),
        ("f", False),
    ],
)
def test_global_booleans(value: str, expected: bool) -> None:
    assert xf(f"Global={value}").global_ is expected


def test_global_last_value_wins() -> None:
    assert xf("Global=true\nGlobal=false").global_ is False
    assert xf("Global=false\nGlobal=true").global_ is True


@pytest.mark.parametrize("value", ["maybe", "2", "truee", "true false"])
def test_global_rejects_non_boolean(value: str) -> None:
    with pytest.raises(InvalidXFleetOptions, match="Global"):
        xf(f"Global={value}")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("MachineMetadata=region=us-east-1", (("region", ("us-east-1",)),)),
        (
            'MachineMetadata="region=us-east-1" "diskType=SSD"',
            (("diskType", ("SSD",)), ("region", ("us-east-1",))),
        ),
        (
            "MachineMetadata=region=us-east-1 diskType=SSD",
            (("diskType", ("SSD",)), ("region", ("us-east-1",))),
        ),
        (
            "MachineMetadata=region=us-east-1\nMachineMetadata=region=us-west-1",
            (("region", ("us-east-1", "us-west-1")),),
        ),
        (
            "MachineMetadata=region=b\nX-ConditionMachineMetadata=region=a\nMachineMetadata=b=1",
            (("b", ("1",)), ("region", ("a", "b"))),
        ),
        ('MachineMetadata="role=web server"', (("role", ("web server",)),)),
        ("MachineMetadata=zone=%i", (("zone", ("",)),)),
    ],
)
def test_metadata_parsing(body: str, expected: tuple[tuple[str, tuple[str, ...]], ...]) -> None:
    if "%i" in body:
        with pytest.raises(InvalidXFleetOptions, match="key=value"):
            xf(body)
        assert xf(body, "foo@3.service").metadata == (("zone", ("3",)),)
        return
    assert xf(body).metadata == expected


@pytest.mark.parametrize("item", ["region", "=us", "region=", "a=b=c"])
def test_metadata_malformed_item(item: str) -> None:
    with pytest.raises(InvalidXFleetOptions) as info:
        xf(f"MachineMetadata={item}")
    assert json.dumps(item) in str(info.value)
    assert "key=value" in str(info.value)
    assert '"foo.service"' in str(info.value)


@pytest.mark.parametrize("option", ["Foo", "machineid", "X-Foo", "Weight", "MachineBootID"])
def test_unknown_option(option: str) -> None:
    with pytest.raises(InvalidXFleetOptions) as info:
        xf(f"{option}=1")
    assert str(info.value) == (
        f'invalid [X-Fleet] options in "foo.service": unknown option {json.dumps(option)}'
    )


def test_unbalanced_quote() -> None:
    with pytest.raises(InvalidXFleetOptions, match="unbalanced"):
        xf('MachineMetadata="region=us')


@pytest.mark.parametrize(
    ("value", "items"),
    [
        ("a", ["a"]),
        ("a b  c", ["a", "b", "c"]),
        ("  a\tb  ", ["a", "b"]),
        ('"a" "b"', ["a", "b"]),
        ('"a b" c', ["a b", "c"]),
        ('x"y z"', ["xy z"]),
        ('""', [""]),
        ("", []),
    ],
)
def test_split_items(value: str, items: list[str]) -> None:
    assert split_items(value) == items


def test_other_sections_are_not_xfleet() -> None:
    unit_file = UnitFile.parse("[Unit]\nConflicts=x.service\nMachineID=zzz\n")
    assert xfleet_options(unit_file, "a.service") == XFleet()


def test_invalid_name_raises_name_error() -> None:
    with pytest.raises(InvalidUnitName):
        xfleet_options(UnitFile(), "bad/name.service")


# ---------------------------------------------------------------------------
# specifiers


@pytest.mark.parametrize(
    ("value", "name", "expected"),
    [
        ("%n", "foo@bar.service", "foo@bar.service"),
        ("%N", "foo@bar.service", "foo@bar"),
        ("%p", "foo@bar.service", "foo"),
        ("%i", "foo@bar.service", "bar"),
        ("%p.socket", "foo.service", "foo.socket"),
        ("%i", "foo.service", ""),
        ("%N", "foo.service", "foo"),
        ("%p@%i.socket", "foo@.service", "foo@.socket"),
        ("100%%", "foo.service", "100%"),
        ("%%n", "foo.service", "%n"),
        ("%%%n", "foo.service", "%foo.service"),
        ("%x %", "foo.service", "%x %"),
        ("%p-%i-%N-%n", "a.b@c.d.timer", "a.b-c.d-a.b@c.d-a.b@c.d.timer"),
    ],
)
def test_expand_specifiers(value: str, name: str, expected: str) -> None:
    assert expand_specifiers(value, parse_name(name)) == expected


@pytest.mark.parametrize(
    ("body", "name", "expected"),
    [
        ("MachineOf=%p.socket", "foo@1.service", XFleet(machine_of=("foo.socket",))),
        ("MachineOf=%p.socket", "bar.service", XFleet(machine_of=("bar.socket",))),
        ("MachineOf=db@%i.service", "web@7.service", XFleet(machine_of=("db@7.service",))),
        ("Conflicts=%p@*.service", "web@7.service", XFleet(conflicts=("web@*.service",))),
        ("MachineID=%i", "pin@abc.service", XFleet(machine_id="abc")),
        ("MachineID=%i", "pin@.service", XFleet(machine_id="%i")),  # templates: as written
        ("MachineMetadata=hostname=%i", "pinned@.service",
         XFleet(metadata=(("hostname", ("%i",)),))),
        ("MachineMetadata=hostname=%i", "pinned@m2.service",
         XFleet(metadata=(("hostname", ("m2",)),))),
        ("Conflicts=foo@%i.service", "bar@.service", XFleet(conflicts=("foo@%i.service",))),
        ("Conflicts=foo@%i.service", "bar@3.service", XFleet(conflicts=("foo@3.service",))),
        ("MachineMetadata=shard=%i", "s@2.service", XFleet(metadata=(("shard", ("2",)),))),
        ("Replaces=%p@old.service", "x@new.service", XFleet(replaces=("x@old.service",))),
        ('Conflicts="%n-%%"', "q.service", XFleet(conflicts=("q.service-%",))),
    ],
)
def test_specifiers_in_xfleet(body: str, name: str, expected: XFleet) -> None:
    assert xf(body, name) == expected


# ---------------------------------------------------------------------------
# contradictions


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("Global=true\nMachineID=abc", "Global=true cannot be used with MachineID"),
        ("Global=true\nMachineOf=a.service", "Global=true cannot be used with MachineOf"),
        ("Global=true\nReplaces=a.service", "Global=true cannot be used with Replaces"),
        ("Replaces=a.service\nConflicts=b*", "Replaces cannot be used with Conflicts"),
        ("MachineOf=foo.service", "MachineOf names the unit itself"),
        ("MachineOf=%n", "MachineOf names the unit itself"),
        ("X-ConditionMachineOf=%p.service", "MachineOf names the unit itself"),
        ("Replaces=foo.service", "Replaces names the unit itself"),
        ("Replaces=%N.service", "Replaces names the unit itself"),
        ("MachineID=a\nMachineID=b", "more than one MachineID"),
        ("MachineID=a b", "more than one MachineID"),
        ("MachineID=a\nX-ConditionMachineID=b", "more than one MachineID"),
        ("MachineID=a\nMachineOf=b.service", "MachineID cannot be used with MachineOf"),
        ("MachineID=a\nConflicts=b*", "MachineID cannot be used with Conflicts"),
        ("MachineOf=bar.service\nConflicts=bar*", 'MachineOf "bar.service" matches Conflicts'),
        ("Conflicts=[a", "malformed"),
        ("Conflicts=a\\", "malformed"),
    ],
)
def test_contradictions(body: str, problem: str) -> None:
    with pytest.raises(InvalidXFleetOptions) as info:
        xf(body)
    assert problem in str(info.value)
    assert str(info.value).startswith('invalid [X-Fleet] options in "foo.service": ')


@pytest.mark.parametrize(
    "body",
    [
        "Global=true\nMachineMetadata=role=web",
        "Global=true\nConflicts=a*",  # fleet: a global unit avoids machines of its conflicts
        "Global=true\nConflicts=foo*\nMachineMetadata=role=web",
        "Global=false\nMachineID=abc",
        "Global=false\nMachineOf=a.service\nConflicts=b*",
        "MachineID=abc\nMachineMetadata=a=b\nReplaces=old.service",
        "MachineID=abc\nMachineID=abc",
        "Conflicts=foo*",  # a unit may match its own Conflicts pattern
        "Conflicts=%p@*.service",
        "MachineOf=a.service\nReplaces=b.service",
    ],
)
def test_allowed_combinations(body: str) -> None:
    xf(body)


def test_template_self_reference_checked_for_instances() -> None:
    text = "[X-Fleet]\nMachineOf=%p@%i.service\n"
    Unit.from_text("foo@.service", text)  # the template: nothing to expand yet
    with pytest.raises(InvalidXFleetOptions, match="itself"):
        Unit.from_text("foo@1.service", text)


@pytest.mark.parametrize(
    ("body", "instance", "problem"),
    [
        ("MachineOf=%n", "h@a.service", "MachineOf names the unit itself"),
        ("Replaces=%p@%i.service", "h@b.service", "Replaces names the unit itself"),
        ("MachineOf=db@%i.service\nConflicts=db@1.service", "h@1.service", "matches Conflicts"),
    ],
)
def test_template_accepted_instance_refused_after_expansion(
        body: str, instance: str, problem: str) -> None:
    text = f"[X-Fleet]\n{body}\n"
    Unit.from_text("h@.service", text)
    with pytest.raises(InvalidXFleetOptions, match=problem):
        Unit.from_text(instance, text)


# ---------------------------------------------------------------------------
# matching


@pytest.mark.parametrize(
    ("body", "machine", "matches"),
    [
        ("", {}, True),
        ("", {"region": "us"}, True),
        ("MachineMetadata=region=us", {"region": "us"}, True),
        ("MachineMetadata=region=us", {"region": "eu"}, False),
        ("MachineMetadata=region=us", {}, False),
        ("MachineMetadata=region=us", {"region": "us", "disk": "ssd"}, True),
        ('MachineMetadata="region=us" "disk=ssd"', {"region": "us", "disk": "ssd"}, True),
        ('MachineMetadata="region=us" "disk=ssd"', {"region": "us", "disk": "hdd"}, False),
        ('MachineMetadata="region=us" "disk=ssd"', {"disk": "ssd"}, False),
        ("MachineMetadata=region=us\nMachineMetadata=region=eu", {"region": "eu"}, True),
        ("MachineMetadata=region=us\nMachineMetadata=region=eu", {"region": "ap"}, False),
        (
            "MachineMetadata=region=us region=eu disk=ssd",
            {"region": "eu", "disk": "ssd"},
            True,
        ),
        ("MachineMetadata=region=us region=eu disk=ssd", {"region": "eu"}, False),
        ("MachineMetadata=region=US", {"region": "us"}, False),
    ],
)
def test_metadata_matches(body: str, machine: dict[str, str], matches: bool) -> None:
    assert xf(body).metadata_matches(machine) is matches


@pytest.mark.parametrize(
    ("patterns", "other", "conflicts"),
    [
        (("bar.service",), "bar.service", True),
        (("bar.service",), "bar.socket", False),
        (("bar*",), "bar.service", True),
        (("bar*",), "foobar.service", False),
        (("*",), "anything@1.service", True),
        (("web@*.service",), "web@1.service", True),
        (("web@*.service",), "web@.service", True),
        (("web@*.service",), "web.service", False),
        (("web@?.service",), "web@1.service", True),
        (("web@?.service",), "web@10.service", False),
        (("web@[0-4].service",), "web@3.service", True),
        (("web@[0-4].service",), "web@5.service", False),
        (("web@[^0-4].service",), "web@5.service", True),
        (("web@[^0-4].service",), "web@3.service", False),
        (("web@[!0-4].service",), "web@!.service", True),
        (("a\\*b.service",), "a*b.service", True),
        (("a\\*b.service",), "axb.service", False),
        (("x.service", "y*"), "yak.socket", True),
        ((), "a.service", False),
        (("[",), "[", False),
    ],
)
def test_conflicts_with(patterns: tuple[str, ...], other: str, conflicts: bool) -> None:
    assert XFleet(conflicts=patterns).conflicts_with(other) is conflicts


@pytest.mark.parametrize(
    ("pattern", "name", "matches"),
    [
        ("*", "a/b", False),
        ("a/*", "a/b", True),
        ("?", "/", False),
        ("[a-c]x", "bx", True),
        ("[\\]]", "]", True),
        ("[\\-]", "-", True),
        ("[a\\-z]", "-", True),
        ("[a\\-z]", "m", False),
        ("[]a]", "]", False),
        ("[-a]", "-", False),
        ("[z-a]", "m", False),
        ("", "", True),
        ("", "a", False),
        ("a.c", "abc", False),
        ("(a|b)", "(a|b)", True),
    ],
)
def test_glob_match_go_semantics(pattern: str, name: str, matches: bool) -> None:
    assert glob_match(pattern, name) is matches


# ---------------------------------------------------------------------------
# dict round trip


@pytest.mark.parametrize(
    "value",
    [
        XFleet(),
        XFleet(machine_id="abc"),
        XFleet(
            machine_of=("a.service", "b.service"),
            metadata=(("disk", ("ssd",)), ("region", ("eu", "us"))),
            conflicts=("x*",),
        ),
        XFleet(global_=True, metadata=(("role", ("web",)),)),
        XFleet(replaces=("old.service",)),
    ],
)
def test_to_dict_round_trip(value: XFleet) -> None:
    data = value.to_dict()
    assert json.loads(json.dumps(data)) == data
    assert XFleet.from_dict(data) == value


def test_to_dict_shape() -> None:
    value = xf('MachineMetadata="region=us" "region=eu"\nConflicts=x*\nMachineOf=m.service')
    assert value.to_dict() == {
        "machine_id": "",
        "machine_of": ["m.service"],
        "metadata": {"region": ["eu", "us"]},
        "conflicts": ["x*"],
        "global": False,
        "replaces": [],
    }


def test_from_dict_defaults() -> None:
    assert XFleet.from_dict({}) == XFleet()


# ---------------------------------------------------------------------------
# Unit

HELLO = """[Unit]
Description=Hello %i

[Service]
ExecStart=/bin/echo hello %i

[X-Fleet]
MachineOf=%p-sidekick@%i.service
Conflicts=%p@*.service
"""


def test_unit_from_text() -> None:
    unit = Unit.from_text("hello.service", "[Unit]\nDescription=Hi\n# c\n")
    assert unit.name == "hello.service"
    assert unit.text == "[Unit]\nDescription=Hi\n# c\n"
    assert unit.file == UnitFile.parse(unit.text)
    assert unit.hash == unit.file.hash()
    assert unit.xfleet == XFleet()
    assert unit.unit_name == parse_name("hello.service")
    assert unit.file.description() == "Hi"


def test_unit_from_bytes_keeps_text() -> None:
    unit = Unit.from_text("hello.service", "[Unit]\nDescription=☃\n".encode())
    assert unit.text == "[Unit]\nDescription=☃\n"


def test_unit_template_and_instance() -> None:
    template = Unit.from_text("hello@.service", HELLO)
    assert template.xfleet == XFleet(
        machine_of=("%p-sidekick@%i.service",), conflicts=("%p@*.service",)
    )  # a template's values are kept as written; its instances expand them
    instance = template.instantiate("hello@1.service")
    assert instance.name == "hello@1.service"
    assert instance.text == template.text
    assert instance.hash == template.hash
    assert instance.xfleet == XFleet(
        machine_of=("hello-sidekick@1.service",), conflicts=("hello@*.service",)
    )
    assert instance == Unit.from_text("hello@1.service", HELLO)


@pytest.mark.parametrize(
    ("template", "instance", "problem"),
    [
        ("hello.service", "hello@1.service", "not a template"),
        ("hello@1.service", "hello@2.service", "not a template"),
        ("hello@.service", "other@1.service", "not an instance of template"),
        ("hello@.service", "hello@1.socket", "not an instance of template"),
        ("hello@.service", "hello@.service", "not an instance of template"),
        ("hello@.service", "hello.service", "not an instance of template"),
        ("hello@.service", "hello@a/b.service", 'contains "/"'),
    ],
)
def test_instantiate_errors(template: str, instance: str, problem: str) -> None:
    unit = Unit.from_text(template, "[Service]\nExecStart=x\n")
    with pytest.raises(InvalidUnitName, match=problem):
        unit.instantiate(instance)


def test_instantiate_revalidates_xfleet() -> None:
    unit = Unit.from_text("db@.service", "[X-Fleet]\nMachineOf=db@1.service\n")
    unit.instantiate("db@2.service")
    with pytest.raises(InvalidXFleetOptions, match="itself"):
        unit.instantiate("db@1.service")


@pytest.mark.parametrize(
    ("name", "text", "error"),
    [
        ("bad name.service", "[Unit]\n", InvalidUnitName),
        ("hello", "[Unit]\n", InvalidUnitName),
        ("hello.service", "[Unit]\nbogus\n", InvalidUnitFile),
        ("hello.service", b"[Unit]\nA=\xff\n", InvalidUnitFile),
        ("hello.service", "[X-Fleet]\nBogus=1\n", InvalidXFleetOptions),
        ("hello.service", "[X-Fleet]\nGlobal=true\nMachineID=x\n", InvalidXFleetOptions),
    ],
)
def test_unit_from_text_errors(name: str, text: str | bytes, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        Unit.from_text(name, text)
    assert json.dumps(name) in str(info.value)
