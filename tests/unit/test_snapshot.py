"""The scheduler's input builder (fleetd/engine/snapshot.py): one builder and one parse cache for
the engine and for `fleetctl why` (the API's explain_unit)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.api.service import FleetService
from fleetd.engine.engine import Engine, EngineCache
from fleetd.engine.scheduler import Assign, JobView, MachineView, reconcile
from fleetd.engine.snapshot import UnitParseCache, build_snapshot, unseen_machines
from fleetd.registry import ClusterState, Registry, UnitView
from fleetd.registry.schema import (
    MachineRecord,
    ScheduleEntry,
    UnitRecord,
    encode,
    merge_metadata,
)
from fleetd.unit import Unit, XFleet

PLAIN = "[Service]\nExecStart=/bin/true\n"
TEXTS = [PLAIN, PLAIN + "[X-Fleet]\nMachineMetadata=role=web\n",
         PLAIN + "[X-Fleet]\nGlobal=true\n", PLAIN + "[X-Fleet]\nConflicts=u*.service\n",
         PLAIN + "[X-Fleet]\nMachineOf=u1.service\n", PLAIN + "[X-Fleet]\nMachineMetadata=x\n"]
NAMES = ["u1.service", "u2.service", "u3.service", "t@.service", "t@1.service", "a@.b.service"]
MACHINES = ["m1", "m2", "m3"]


def record(name: str, text: str) -> UnitRecord:
    # The registry stores the hash of the file as submitted; an invalid file has one too.
    try:
        return UnitRecord(name, text, Unit.from_text(name, text).hash)
    except Exception:
        return UnitRecord(name, text, "bad" + str(len(text)))


def test_templates_are_never_scheduled_and_an_at_dot_instance_is_not_a_template() -> None:
    # The engine used to test `"@." in name`, so "a@.b.service" (a valid instance, instance
    # ".b") was silently never scheduled although the API accepted its start; the one rule
    # now is UnitName.is_template.
    units = {n: record(n, PLAIN) for n in ("t@.service", "t@1.service", "a@.b.service")}
    desired = dict.fromkeys(units, "launched")
    built = build_snapshot(units, desired, {"m1": MachineRecord("m1")}, {},
                           parsed=UnitParseCache())
    assert sorted(built.jobs) == ["a@.b.service", "t@1.service"]
    assert {d.unit for d in reconcile(built.snapshot) if isinstance(d, Assign)} == {
        "a@.b.service", "t@1.service"}


def test_a_template_stored_with_an_active_desired_state_is_reported_not_skipped() -> None:
    # The API refuses to activate a template; one written past it (an older fleetd, etcdctl)
    # used to be skipped silently by the engine; it now gets the API's refusal as its reason.
    units = {n: record(n, PLAIN) for n in ("t@.service", "u@.service")}
    built = build_snapshot(units, {"t@.service": "launched"}, {}, {}, parsed=UnitParseCache())
    assert built.jobs == {}
    assert built.broken == {"t@.service": "cannot activate template t@.service: a template is "
                                          "only submitted; start its instances (e.g. "
                                          "t@1.service)"}


def test_invalid_files_are_reported_not_scheduled_and_missing_desired_is_inactive() -> None:
    units = {"bad.service": record("bad.service", PLAIN + "[X-Fleet]\nMachineMetadata=x\n"),
             "idle.service": record("idle.service", PLAIN)}
    built = build_snapshot(units, {"bad.service": "launched"}, {}, {},
                           parsed=UnitParseCache())
    assert list(built.broken) == ["bad.service"] and "MachineMetadata" in built.broken[
        "bad.service"]
    assert built.jobs == {"idle.service": JobView("idle.service", "inactive", XFleet())}


def test_machines_carry_api_metadata_and_departed_ones_keep_their_last_view() -> None:
    machines = {"m1": MachineRecord("m1", metadata={"region": "us", "disk": "ssd"})}
    gone = {"m9": MachineView("m9", {"role": "db"}), "m1": MachineView("m1", {"old": "x"})}
    built = build_snapshot({}, {}, machines, {"u.service": {"m9": None}, "v.service": {}},
                           parsed=UnitParseCache(),
                           metadata={"m1": {"role": "web", "disk": None}}, departed=gone,
                           held=["u.service"])
    assert built.machines == {"m1": MachineView("m1", {"region": "us", "role": "web"}),
                              "m9": MachineView("m9", {"role": "db"})}
    assert built.departed == frozenset({"m9"})  # a live machine is not departed
    assert built.held == frozenset({"u.service"})
    assert built.schedule == {"u.service": frozenset({"m9"})}


def test_unseen_machines_are_taken_as_departed_with_their_units_held() -> None:
    views, held = unseen_machines({"a.service": {"m1", "m9"}, "b.service": {"m1"}}, {"m1"})
    assert views == {"m9": MachineView("m9", {})} and held == frozenset({"a.service"})


def test_each_file_version_is_parsed_once_and_old_versions_are_pruned() -> None:
    cache = UnitParseCache()
    old, new = record("u1.service", PLAIN), record("u1.service", TEXTS[1])
    assert cache.parsed(old) is cache.parsed(old)
    assert cache.get(old) == XFleet()
    assert cache.parsed(new).xfleet == XFleet(metadata=(("role", ("web",)),))
    cache.prune({"u1.service": new})
    assert cache.parsed(new) is cache.parsed(new)
    assert list(cache._cache) == [("u1.service", new.hash)]


# -- properties: the incremental build is the full build; the engine and the API agree -------

@st.composite
def registries(draw: Any) -> dict[str, Any]:
    units = {n: record(n, draw(st.sampled_from(TEXTS)))
             for n in draw(st.lists(st.sampled_from(NAMES), unique=True))}
    desired = {n: draw(st.sampled_from(["inactive", "loaded", "launched"]))
               for n in draw(st.lists(st.sampled_from(NAMES), unique=True))}
    machines = {m: MachineRecord(m, metadata=draw(st.dictionaries(
        st.sampled_from(["role", "disk"]), st.sampled_from(["web", "db"]), max_size=2)))
        for m in draw(st.lists(st.sampled_from(MACHINES), unique=True))}
    metadata = {m: draw(st.dictionaries(st.sampled_from(["role", "zone"]),
                                        st.sampled_from(["web", "a", None]), max_size=2))
                for m in draw(st.lists(st.sampled_from([*MACHINES, "m9"]), unique=True))}
    schedule = {n: {m: ScheduleEntry(n, m, "launched", "h", False)
                    for m in draw(st.lists(st.sampled_from([*MACHINES, "m9"]), unique=True,
                                           min_size=1, max_size=2))}
                for n in draw(st.lists(st.sampled_from([*NAMES, "gone.service"]), unique=True))}
    return {"units": units, "desired": desired, "machines": machines, "metadata": metadata,
            "schedule": schedule}


@settings(max_examples=150, deadline=None)
@given(registries(), registries())
def test_an_incremental_build_equals_a_full_one(before: dict[str, Any],
                                                after: dict[str, Any]) -> None:
    cache = UnitParseCache()
    first = build_snapshot(before["units"], before["desired"], before["machines"],
                           before["schedule"], parsed=cache, metadata=before["metadata"])
    changed_units = set(before["units"]) | set(after["units"]) | set(before["desired"]) | set(
        after["desired"])
    changed_sched = set(before["schedule"]) | set(after["schedule"])
    args = (after["units"], after["desired"], after["machines"], after["schedule"])
    incremental = build_snapshot(*args, parsed=cache, metadata=after["metadata"],
                                 previous=first, changed_units=changed_units,
                                 changed_schedule=changed_sched, machines_changed=True)
    full = build_snapshot(*args, parsed=UnitParseCache(), metadata=after["metadata"])
    assert incremental == full


def engine_view(reg: dict[str, Any]) -> Any:
    """The engine's snapshot as a new leader builds it: every key through its cache."""
    registry = Registry(None, "/p/")  # type: ignore[arg-type]  # no etcd: the cache only
    engine = Engine(registry, SimpleNamespace(identity=SimpleNamespace(id="me"),  # type: ignore
                                              ttl_s=10))
    k, c = registry.keys, EngineCache()
    for name, rec in reg["units"].items():
        engine._apply_kv(c, k.units + name, encode(rec))
    for name, state in reg["desired"].items():
        engine._apply_kv(c, k.desired + name, json.dumps(state).encode())
    for mid, m in reg["machines"].items():
        engine._apply_kv(c, k.machine(mid), encode(m))
    for mid, md in reg["metadata"].items():
        engine._apply_kv(c, k.machine_metadata(mid), json.dumps(md).encode())
    for name, per in reg["schedule"].items():
        for mid, entry in per.items():
            engine._apply_kv(c, k.assignment(mid, name), encode(entry))
    engine._note_unseen_machines(c)
    engine.cache = c
    return engine.snapshot()


def api_view(reg: dict[str, Any]) -> Any:
    """The API's snapshot (`fleetctl why`) of the same registry, as `cluster_state` reads it."""
    machines = {mid: MachineRecord(mid, metadata=merge_metadata(m.metadata,
                                                                reg["metadata"].get(mid)))
                for mid, m in reg["machines"].items()}
    units = {n: UnitView(rec, reg["desired"].get(n, "inactive"))
             for n, rec in reg["units"].items()}
    st_ = ClusterState(1, units, machines, reg["schedule"], {}, {}, reg["metadata"])
    return FleetService(None).snapshot_of(st_)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(registries())
def test_the_engine_and_the_api_build_the_same_snapshot(reg: dict[str, Any]) -> None:
    snap, broken = engine_view(reg)
    assert api_view(reg) == snap
    assert set(broken) <= set(reg["units"])


SHARED_NAMES = ["a.service", "b.socket", "bad name.service", "c.timer", "x@1.service",
                "x@.service", "d.service"]
SHARED_TEXTS = [PLAIN, PLAIN + "[X-Fleet]\nMachineMetadata=role=web\n",
                "[Unit]\nDescription=web %n\n" + PLAIN, PLAIN + "[X-Fleet]\nMachineOf=%p.x\n",
                PLAIN + "[X-Fleet]\nBogus=1\n", "[Unit]\nDescription=plain\n" + PLAIN,
                PLAIN + "[X-Fleet]\nMachineOf=a.service\n",
                PLAIN + "[X-Fleet]\nReplaces=d.service\n",
                PLAIN + "[X-Fleet]\nConflicts=a.service\n"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(SHARED_NAMES), st.sampled_from(SHARED_TEXTS)),
                max_size=20))
def test_a_parse_shared_by_text_is_the_parse_of_the_unit_itself(recs: list[Any]) -> None:
    # One file submitted under many names is parsed once; what each unit gets must still be
    # what parsing its own (name, text) gives: the name check, templates and specifiers.
    cache = UnitParseCache()
    for name, text in recs:
        rec = record(name, text)
        assert cache.parsed(rec) == UnitParseCache().parsed(rec), (name, text)
