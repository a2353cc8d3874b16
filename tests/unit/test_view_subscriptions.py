"""The view's Watch subscriptions (fleetd.registry.view.Subscription): after any sequence of
changes and fresh reads, each subscription has got exactly the events of its units (or all,
and the machines' when it asked for them), in order, each converted against the state right
after it; a fresh read that says nothing of what changed, or a subscriber that falls more
than its limit behind, makes it start over (OVERFLOWED); a stopped view ends it."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.registry import ClusterState, Registry
from fleetd.registry.changes import Event
from fleetd.registry.view import ENDED, OVERFLOWED, Subscription
from tests.unit.test_grpc_list_rows import MIDS, TEXTS, UNITS, MemoryView, apply, ops


def _registry() -> Registry:
    return Registry(None, "/t/")  # type: ignore[arg-type]  # keys only: no etcd here


def _drain(sub: Subscription) -> list[Any]:
    async def run() -> list[Any]:
        out: list[Any] = []
        while sub._items or sub.overflowed or sub.ended:
            item = await sub.next()
            if item is OVERFLOWED:
                out.append(OVERFLOWED)
                sub.resume()
                continue
            if item is ENDED:
                out.append(ENDED)
                break
            out.append(item)
        return out
    return asyncio.run(run())


def _label(st_: ClusterState, ev: Event) -> tuple[str, str, str, int]:
    # converted against the state of that moment: a unit event carries whether it exists
    return ev.kind, ev.name, ev.machine_id, int(ev.name in st_.units)


subscriptions = st.lists(st.tuples(
    st.one_of(st.none(), st.frozensets(st.sampled_from(UNITS), min_size=1)), st.booleans()),
    min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(subs=subscriptions, steps=st.lists(ops, max_size=30))
def test_each_subscription_gets_exactly_the_events_of_its_units_in_order(
        subs: list[tuple[frozenset[str] | None, bool]], steps: list[tuple[Any, ...]]) -> None:
    view = MemoryView(_registry())
    caused: list[tuple[Event, tuple[str, str, str, int]]] = []
    real_absorb = view._absorb

    def absorb(update: Any) -> None:
        real_absorb(update)
        for ev in update.events:
            caused.append((ev, _label(update.state, ev)))

    view._absorb = absorb  # type: ignore[method-assign]
    live = [(view.subscribe(names, machines, _label), names, machines)
            for names, machines in subs]
    got: list[list[Any]] = [[] for _ in live]
    want: list[list[Any]] = [[] for _ in live]
    for op in steps:
        if op[0] == "list":
            continue
        caused.clear()
        apply(view, op)
        for i, (sub, names, machines) in enumerate(live):
            if op[0] == "reset" and not caused:
                want[i].append(OVERFLOWED)
            for ev, label in caused:
                if names is None or (ev.kind.startswith("machine") and machines) or \
                        (not ev.kind.startswith("machine") and ev.name in names):
                    want[i].append(label)
            got[i].extend(_drain(sub))
    assert got == want
    for sub, _, _ in live:
        sub.close()
    assert not view._subs_all and not view._subs_by_name and not view._subs_machines


def test_a_subscriber_that_falls_behind_starts_over_and_a_stopped_view_ends_it() -> None:
    view = MemoryView(_registry())
    sub = view.subscribe({"a.service"}, False, _label, limit=2)
    other = view.subscribe(None, True, _label)
    apply(view, ("unit", "a.service", TEXTS[0]))
    for state in ("launched", "inactive"):  # three events for a.service, nobody reading
        apply(view, ("desired", "a.service", state))
    apply(view, ("machine", MIDS[0], "10.0.0.1"))
    assert _drain(sub) == [OVERFLOWED]
    apply(view, ("desired", "a.service", "launched"))
    assert [x[:2] for x in _drain(sub)] == [("unit_put", "a.service")]
    assert len(_drain(other)) == 5  # no limit reached: every event, the machine's too
    view._stopped = True  # as when the view's task ends ...
    for s in view._subscriptions():
        s.end()  # (what its `finally` does)
    assert _drain(sub) == [ENDED]
    assert _drain(view.subscribe(None, False, _label)) == [ENDED]  # too late: ended at once
