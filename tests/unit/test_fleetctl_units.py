"""fleetctl's rules for turning submit/load/start arguments into units (fleet's
lazyCreateUnits, getUnitFileFromTemplate and checkReplaceUnitState), against a fake API."""

from __future__ import annotations

import hashlib
import pathlib
from types import SimpleNamespace
from typing import Any

import pytest

from fleetctl.cli import ensure_units
from fleetctl.command import Exit
from fleetctl.units import FEW_UNITS
from fleetd.unit import UnitFile

V1 = "[Service]\nExecStart=/bin/sleep 1\n"
V2 = "[Service]\nExecStart=/bin/sleep 2\n"


def file_hash(text: str) -> str:
    return UnitFile.parse(text).hash()


class FakeApi:
    """ListUnits/GetUnit over `units` (name -> (text, desired state)); records CreateUnit."""

    def __init__(self, units: dict[str, tuple[str, str]]) -> None:
        self.units = units
        self.created: list[tuple[str, str, str, bool]] = []

    def list_units(self) -> list[Any]:
        self.listed = getattr(self, "listed", 0) + 1
        return [SimpleNamespace(name=n, hash=file_hash(t), desired_state=d)
                for n, (t, d) in sorted(self.units.items())]

    def get_units(self, names: Any) -> dict[str, Any]:
        names = list(names)
        self.looked_up = getattr(self, "looked_up", []) + names
        return {n: SimpleNamespace(name=n, hash=file_hash(t), desired_state=d)
                for n, (t, d) in self.units.items() if n in names}

    def get_unit(self, name: str) -> Any:
        return SimpleNamespace(text=self.units[name][0])

    def create_unit(self, name: str, text: str = "", desired_state: str = "",
                    replace: bool = False) -> None:
        self.created.append((name, text, desired_state, replace))

    def create_units(self, units: Any) -> Any:
        for u in units:
            self.created.append(u)
            yield None


CASES = [
    # (id, files on disk, cluster units, command, args, replace, created, stderr/stdout words)
    ("file_not_in_cluster", {"a.service": V1}, {}, "submit", ["a.service"], False,
     [("a.service", V1, False)], []),
    ("instance_from_template_file_next_to_it", {"d/t@.service": V1}, {}, "start",
     ["d/t@1.service", "d/t@2.service"], False,
     [("t@1.service", V1, False), ("t@2.service", V1, False)], []),
    ("instance_from_the_clusters_template", {}, {"t@.service": (V1, "inactive")}, "start",
     ["t@1.service"], False, [("t@1.service", "", False)], []),
    ("clusters_template_wins_over_a_differing_local_one", {"d/t@.service": V2},
     {"t@.service": (V1, "inactive")}, "submit", ["d/t@1.service"], False,
     [("t@1.service", "", False)], ["differs"]),
    ("existing_unit_same_file_is_used_silently", {"a.service": V1},
     {"a.service": (V1, "launched")}, "start", ["a.service"], False, [], []),
    ("existing_unit_differing_file_warns", {"a.service": V2}, {"a.service": (V1, "launched")},
     "start", ["a.service"], False, [], ["differs", "--replace"]),
    ("existing_instance_differing_local_template_warns", {"d/t@.service": V2},
     {"t@1.service": (V1, "launched")}, "start", ["d/t@1.service"], False, [], ["differs"]),
    ("start_replace_of_a_launched_unit", {"a.service": V2}, {"a.service": (V1, "launched")},
     "start", ["a.service"], True, [("a.service", V2, True)], []),
    ("load_replace_of_a_loaded_unit", {"a.service": V2}, {"a.service": (V1, "loaded")},
     "load", ["a.service"], True, [("a.service", V2, True)], []),
    ("load_replace_of_a_launched_unit_is_refused", {"a.service": V2},
     {"a.service": (V1, "launched")}, "load", ["a.service"], True, [], ["can not replace"]),
    ("submit_replace_of_a_loaded_unit_is_refused", {"a.service": V2},
     {"a.service": (V1, "loaded")}, "submit", ["a.service"], True, [], ["can not replace"]),
    ("replace_of_an_instance_takes_the_local_template", {"d/t@.service": V2},
     {"t@1.service": (V1, "launched")}, "start", ["d/t@1.service"], True,
     [("t@1.service", V2, True)], []),
    ("replace_with_the_same_file_does_nothing", {"a.service": V1},
     {"a.service": (V1, "inactive")}, "submit", ["a.service"], True, [], ["nothing to do"]),
    ("name_without_suffix_means_service", {"a.service": V1}, {}, "submit", ["a"], False,
     [("a.service", V1, False)], []),
]


@pytest.mark.parametrize(("files", "units", "command", "args", "replace", "created", "words"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_ensure_units(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str], files: dict[str, str],
                      units: dict[str, tuple[str, str]], command: str, args: list[str],
                      replace: bool, created: list[tuple[str, str, bool]],
                      words: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    api = FakeApi(units)
    names = ensure_units(api, args, command, "", replace=replace)  # type: ignore[arg-type]
    assert [(n, t, r) for n, t, _, r in api.created] == created
    assert names == [pathlib.Path(a).name if "." in pathlib.Path(a).name
                     else pathlib.Path(a).name + ".service" for a in args]
    out = capsys.readouterr()
    for word in words:
        assert word in out.err + out.out


def test_a_few_arguments_are_looked_up_by_name_and_many_by_one_listing(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A start of a few units does not list a large cluster: it asks for those units (and an
    instance's template); past FEW_UNITS names one listing is cheaper."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.service").write_text(V1)
    api = FakeApi({"t@.service": (V1, "inactive")})
    ensure_units(api, ["a.service", "t@1.service"], "start", "")  # type: ignore[arg-type]
    assert api.looked_up == ["a.service", "t@1.service", "t@.service"]
    assert getattr(api, "listed", 0) == 0
    assert [n for n, *_ in api.created] == ["a.service", "t@1.service"]
    many = [f"u{i}.service" for i in range(FEW_UNITS + 1)]
    for name in many:
        (tmp_path / name).write_text(V1)
    api = FakeApi({"u0.service": (V1, "launched")})
    ensure_units(api, many, "start", "")  # type: ignore[arg-type]
    assert api.listed == 1 and not hasattr(api, "looked_up")
    assert [n for n, *_ in api.created] == many[1:]  # u0 is in the cluster already


@pytest.mark.parametrize(("files", "args", "word"), [
    pytest.param({}, ["nope.service"], "unable to find unit file nope.service",
                 id="nothing_anywhere"),
    pytest.param({}, ["d/t@1.service"], "t@.service", id="instance_without_template"),
    pytest.param({"a.service": V1, "b.service": "[X-Fleet]\nGlobal=maybe\n"},
                 ["a.service", "b.service"], "not a boolean", id="one_invalid_file_of_two"),
    pytest.param({"d/h@.service": "[X-Fleet]\nMachineOf=%n\n"}, ["d/h@1.service"],
                 "MachineOf names the unit itself", id="instance_invalid_after_expansion"),
])
def test_bad_arguments_change_nothing(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str],
                                      files: dict[str, str], args: list[str],
                                      word: str) -> None:
    monkeypatch.chdir(tmp_path)
    for path, text in files.items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    api = FakeApi({})
    with pytest.raises(Exit) as e:
        ensure_units(api, args, "start", "launched")  # type: ignore[arg-type]
    assert e.value.exit_code == 1
    assert api.created == []
    assert word in capsys.readouterr().err


def test_hash_helper_matches_fleets_unit_hash() -> None:
    assert file_hash(V1) == hashlib.sha1(UnitFile.parse(V1).serialize().encode()).hexdigest()
