"""fleetctl's blocking waits decide from Watch events alone: table-driven over scripted
streams (a scripted stand-in for the API that offers nothing but `watch`, so any polling
call would fail the test)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fleetctl.client import DeadlineExceeded
from fleetctl.wait import BLOCK_ATTEMPT_S, wait_for
from fleetd.api.pb import fleet_pb2 as pb

K = pb.WatchEvent
M1, M2 = "a" * 32, "b" * 32


def unit(name: str, machines: tuple[str, ...] = (), is_global: bool = False) -> pb.Unit:
    return pb.Unit(name=name, machine_ids=list(machines), is_global=is_global)


def state(name: str, mid: str, st: str, ip: str = "10.0.0.1") -> pb.UnitState:
    return pb.UnitState(name=name, machine_id=mid, machine_ip=ip, state=st)


def snapshot(units: list[pb.Unit], states: list[pb.UnitState] = ()) -> pb.WatchEvent:  # type: ignore[assignment]
    return K(kind=K.SNAPSHOT, revision=1, snapshot=pb.Snapshot(units=units, states=states))


class ScriptedWatch:
    """Plays `events`, then ends the stream as a deadline would (or just stops)."""

    def __init__(self, events: list[pb.WatchEvent], then_deadline: bool = True) -> None:
        self.events, self.then_deadline = events, then_deadline
        self.requests: list[dict[str, Any]] = []

    def watch(self, **request: Any) -> Any:
        self.requests.append(request)
        script = self

        class Stream:
            cancelled = False

            def __enter__(self) -> Stream:
                return self

            def __exit__(self, *_: object) -> None:
                self.cancelled = True

            def __iter__(self) -> Iterator[pb.WatchEvent]:
                yield from script.events
                if script.then_deadline:
                    raise DeadlineExceeded("fleetd did not answer within 1s")

        return Stream()


CASES = [
    ("already_there_in_the_snapshot", ["a.service"], "launched",
     [snapshot([unit("a.service", (M1,))], [state("a.service", M1, "launched")])],
     True, ["Unit a.service launched on aaaaaaaa.../10.0.0.1"], []),
    ("scheduled_then_reported", ["a.service"], "launched",
     [snapshot([unit("a.service")]),
      K(kind=K.UNIT_PUT, unit=unit("a.service", (M2,))),
      K(kind=K.STATE_PUT, state=state("a.service", M2, "loaded", "10.0.0.2")),
      K(kind=K.STATE_PUT, state=state("a.service", M2, "launched", "10.0.0.2"))],
     True, ["Unit a.service launched on bbbbbbbb.../10.0.0.2"], []),
    ("a_report_from_a_machine_it_is_not_scheduled_to_does_not_count", ["a.service"], "launched",
     [snapshot([unit("a.service", (M1,))], [state("a.service", M2, "launched")])],
     False, [], ["Error waiting for unit a.service to reach state launched"]),
    ("global_unit_counts_once_scheduled", ["g.service"], "launched",
     [snapshot([unit("g.service", is_global=True)]),
      K(kind=K.UNIT_PUT, unit=unit("g.service", (M1, M2), is_global=True))],
     True, ["Triggered global unit g.service start"], []),
    ("stop_waits_for_loaded", ["a.service"], "loaded",
     [snapshot([unit("a.service", (M1,))], [state("a.service", M1, "launched")]),
      K(kind=K.STATE_PUT, state=state("a.service", M1, "loaded"))],
     True, ["Unit a.service loaded on aaaaaaaa.../10.0.0.1"], []),
    ("unload_waits_until_unscheduled_and_no_state_is_left", ["a.service"], "inactive",
     [snapshot([unit("a.service", (M1,))], [state("a.service", M1, "loaded")]),
      K(kind=K.UNIT_PUT, unit=unit("a.service")),
      K(kind=K.STATE_DELETED, name="a.service", machine_id=M1)],
     True, ["Unit a.service inactive"], []),
    ("two_units_each_reported_as_it_arrives", ["a.service", "b.service"], "launched",
     [snapshot([unit("a.service", (M1,)), unit("b.service", (M2,))]),
      K(kind=K.STATE_PUT, state=state("b.service", M2, "launched", "10.0.0.2")),
      K(kind=K.STATE_PUT, state=state("a.service", M1, "launched"))],
     True, ["Unit b.service launched on bbbbbbbb.../10.0.0.2",
            "Unit a.service launched on aaaaaaaa.../10.0.0.1"], []),
    ("deadline_names_every_unit_still_waited_for", ["a.service", "b.service"], "launched",
     [snapshot([unit("a.service", (M1,)), unit("b.service")],
               [state("a.service", M1, "launched")])],
     False, ["Unit a.service launched on aaaaaaaa.../10.0.0.1"],
     ["Error waiting for unit b.service to reach state launched"]),
]


@pytest.mark.parametrize(("names", "target", "events", "ok", "out", "err"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_wait_for(capsys: pytest.CaptureFixture[str], names: list[str], target: str,
                  events: list[pb.WatchEvent], ok: bool, out: list[str],
                  err: list[str]) -> None:
    api = ScriptedWatch(events)
    assert wait_for(api, names, target, attempts=4) is ok  # type: ignore[arg-type]
    printed = capsys.readouterr()
    assert printed.out.splitlines() == out
    assert printed.err.splitlines() == err


def test_the_wait_watches_only_its_units_bounded_by_block_attempts() -> None:
    api = ScriptedWatch([snapshot([unit("a.service")])])
    wait_for(api, ["a.service", "b.service", "a.service"], "launched", attempts=3)  # type: ignore[arg-type]
    [request] = api.requests
    assert request["names"] == ["a.service", "b.service"]
    assert request["units"] and request["states"] and not request.get("machines")
    assert request["timeout_s"] == 3 * BLOCK_ATTEMPT_S


def test_zero_block_attempts_waits_without_a_deadline() -> None:
    api = ScriptedWatch([snapshot([unit("a.service", (M1,))],
                                  [state("a.service", M1, "launched")])], then_deadline=False)
    assert wait_for(api, ["a.service"], "launched", attempts=0)  # type: ignore[arg-type]
    assert api.requests[0]["timeout_s"] is None
