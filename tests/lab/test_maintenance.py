"""Machine maintenance on the nspawn lab (issue 13): a drain moves every unit off a machine
make-before-break while samplers ask each machine's own systemd where each unit runs; a drain
blocked by a pinned unit reports it; `fleetctl move` to a named machine. Three machines."""

from __future__ import annotations

import pathlib
import threading
from collections.abc import Iterator

import pytest

from tests.lab.conftest import (
    fleetctl,
    lab,
    machine_ids,
    reset_cluster,
    running_lab,
    wait_machines,
    wait_until,
    write_unit,
)

NAMES = ["m1", "m2", "m3"]


@pytest.fixture(scope="module", autouse=True)
def _lab() -> Iterator[None]:
    with running_lab(3, {n: f"hostname={n}" for n in NAMES}):
        wait_machines(3)
        yield


@pytest.fixture(autouse=True)
def _clean() -> Iterator[None]:
    yield
    for n in NAMES:
        fleetctl("undrain", machine_ids()[n], check=False)
    reset_cluster()


def running(name: str, units: list[str]) -> set[str]:
    """The units systemd inside machine `name` says are active (one exec for all)."""
    r = lab("exec", name, "--", "systemctl", "is-active", *units, check=False)
    return {u for u, s in zip(units, r.stdout.split(), strict=False) if s == "active"}


class Sampler:
    """Samples, until stopped, every machine's systemd. One sample asks the drained machine,
    then the others, then the drained machine again: a unit active nowhere between the first
    two asks was down everywhere at once (it left the drained machine before the others had
    it); a unit active on another machine and on the drained one at the last ask ran twice
    at once (the other copy already ran when the drained one still did)."""

    def __init__(self, source: str, units: list[str]) -> None:
        self.source, self.units = source, units
        self.others = [n for n in NAMES if n != source]
        self.down: list[str] = []  # units seen down everywhere, once per sample
        self.twice: list[str] = []  # units seen on two machines at once
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            first = running(self.source, self.units)
            elsewhere = [running(n, self.units) for n in self.others]
            last = running(self.source, self.units)
            seen = first.union(*elsewhere)
            self.down += [u for u in self.units if u not in seen]
            for u in self.units:
                copies = sum(u in s for s in elsewhere) + (u in last)
                if copies > 1:
                    self.twice.append(u)
            self.samples += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def where(units: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {u: [] for u in units}
    for n in NAMES:
        for u in running(n, units):
            out[u].append(n)
    return out


def put_on(unit: str, name: str) -> None:
    """Move `unit` to machine `name` unless it is there already."""
    if where([unit])[unit] != [name]:
        fleetctl("move", unit, machine_ids()[name], timeout_s=90)


def test_drain_moves_every_unit_without_a_gap_and_stop_first_units_never_twice(
        tmp_path: pathlib.Path) -> None:
    units = [f"web{i}.service" for i in range(3)]
    fleetctl("start", *[write_unit(tmp_path, u) for u in units])
    once = "once.service"
    fleetctl("start", write_unit(tmp_path, once, xfleet="MoveBeforeStop=false"))
    for u in [*units, once]:
        put_on(u, "m2")
    assert all(w == ["m2"] for w in where([*units, once]).values())
    with Sampler("m2", [*units, once]) as s:
        r = fleetctl("drain", "--deadline", "90", machine_ids()["m2"], timeout_s=120)
        after = where([*units, once])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is drained" in r.stdout
    assert s.samples > 3
    for u in units:
        assert len(after[u]) == 1 and after[u] != ["m2"], (u, after[u])
        assert u not in s.down, f"{u} was down on every machine at once"
    assert len(after[once]) == 1 and after[once] != ["m2"]
    assert once not in s.twice, "a MoveBeforeStop=false unit ran on two machines at once"
    listed = fleetctl("list-machines", "-l").stdout
    assert any(line.startswith(machine_ids()["m2"]) and line.split()[-1] == "draining"
               for line in listed.splitlines())
    # Nothing new goes there while it drains.
    fleetctl("start", *[write_unit(tmp_path, f"new{i}.service") for i in range(3)])
    assert "m2" not in {n for ns in where([f"new{i}.service" for i in range(3)]).values()
                        for n in ns}


def test_a_drain_blocked_by_a_pinned_unit_reports_it(tmp_path: pathlib.Path) -> None:
    mid = machine_ids()["m3"]
    fleetctl("start", write_unit(tmp_path, "pinned.service", xfleet=f"MachineID={mid}"))
    r = fleetctl("drain", "--deadline", "60", mid, check=False, timeout_s=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pinned.service stays on" in r.stdout
    assert "MachineID" in r.stdout
    assert where(["pinned.service"])["pinned.service"] == ["m3"]
    # With --pinned=stop it is stopped, and waits (unschedulable) for the machine.
    r = fleetctl("drain", "--pinned", "stop", "--deadline", "60", mid, check=False,
                 timeout_s=90)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: where(["pinned.service"])["pinned.service"] == [],
               what="the pinned unit stopped by --pinned=stop")
    why = fleetctl("why", "pinned.service").stdout
    assert "Draining" in why
    fleetctl("undrain", mid)
    wait_until(lambda: where(["pinned.service"])["pinned.service"] == ["m3"],
               what="the pinned unit back on its machine after undrain")


def test_move_to_a_named_machine(tmp_path: pathlib.Path) -> None:
    fleetctl("start", write_unit(tmp_path, "mv.service"))
    [source] = where(["mv.service"])["mv.service"]
    target = next(n for n in NAMES if n != source)
    with Sampler(source, ["mv.service"]) as s:
        r = fleetctl("move", "mv.service", machine_ids()[target][:12], timeout_s=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert where(["mv.service"])["mv.service"] == [target]
    assert "mv.service" not in s.down
    r = fleetctl("move", "mv.service", machine_ids()[target], check=False)
    assert r.returncode != 0 and "already runs on" in r.stderr
