"""`fleetctl restart` decides each batch from Watch events (a scripted stand-in for the API:
old PIDs from one ListUnitStates, RestartUnit calls recorded, then the scripted stream)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from fleetctl import rolling
from fleetctl.command import Exit
from fleetd.api.pb import fleet_pb2 as pb

K = pb.WatchEvent
M1 = "a" * 32


def st(pid: int, active: str = "active", sub: str = "running") -> pb.UnitState:
    return pb.UnitState(name="t.service", machine_id=M1, active_state=active, sub_state=sub,
                        main_pid=pid)


class ScriptedRestart:
    def __init__(self, events: list[pb.WatchEvent]) -> None:
        self.events = events
        self.restarted: list[tuple[str, str]] = []
        self.cancelled = threading.Event()

    def list_unit_states(self, names: list[str]) -> list[pb.UnitState]:
        return [st(100)]

    def restart_unit(self, name: str, machine_id: str = "") -> pb.UnitStatusResponse:
        self.restarted.append((name, machine_id))
        return pb.UnitStatusResponse(exit_code=0)

    def watch(self, **request: Any) -> Any:
        script = self

        class Stream:
            def __enter__(self) -> Stream:
                return self

            def __exit__(self, *_: object) -> None:
                script.cancelled.set()

            def __iter__(self) -> Iterator[pb.WatchEvent]:
                yield from script.events
                script.cancelled.wait(10)  # an open stream with nothing more to say

        return Stream()


def snap(*states: pb.UnitState) -> pb.WatchEvent:
    return K(kind=K.SNAPSHOT, snapshot=pb.Snapshot(states=list(states)))


@pytest.fixture(autouse=True)
def _short_stability(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rolling, "STABLE_S", 0.05)


def test_a_target_counts_once_active_with_a_new_pid_for_the_stable_time(
        capsys: pytest.CaptureFixture[str]) -> None:
    api = ScriptedRestart([snap(st(100)), K(kind=K.STATE_PUT, state=st(0, "activating")),
                           K(kind=K.STATE_PUT, state=st(200))])
    rolling._restart_batch(api, [("t.service", M1)], 5, False, 1, 1)  # type: ignore[arg-type]
    assert api.restarted == [("t.service", M1)]
    assert capsys.readouterr().out == "Unit t.service restarted on aaaaaaaa...\n"
    assert api.cancelled.is_set()


def test_a_failed_restart_stops_the_rollout(capsys: pytest.CaptureFixture[str]) -> None:
    api = ScriptedRestart([snap(st(100)), K(kind=K.STATE_PUT, state=st(0, "failed", "failed"))])
    with pytest.raises(Exit) as e:
        rolling._restart_batch(api, [("t.service", M1)], 5, False, 1, 1)  # type: ignore[arg-type]
    assert e.value.exit_code == 1
    assert "failed after restart (state failed/failed); rollout stopped" in capsys.readouterr().err
    assert api.cancelled.is_set()


def test_the_old_pid_still_active_is_not_a_restart(capsys: pytest.CaptureFixture[str]) -> None:
    api = ScriptedRestart([snap(st(100))])
    with pytest.raises(Exit) as e:
        rolling._restart_batch(api, [("t.service", M1)], 0.3, False, 1, 1)  # type: ignore[arg-type]
    assert e.value.exit_code == 1
    assert "not active 0.3s after restart (state active/running)" in capsys.readouterr().err
