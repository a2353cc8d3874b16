"""Machine maintenance on the nspawn lab (issue 13): a drain moves every unit off a machine
make-before-break while samplers ask each machine's own systemd where each unit runs; a
MachineOf pair is drained as one (never down everywhere, never split beyond the hand-over);
a drain blocked by a pinned unit reports it; `fleetctl move` to a named machine. Three
machines."""

from __future__ import annotations

import itertools
import pathlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator

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
_EXE = pathlib.Path(sys.prefix) / "bin" / "fleet-lab"
LAB_CMD = [str(_EXE)] if _EXE.exists() else [sys.executable, "-m", "fleetd.lab"]


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


STOP_FILE = "/run/fleet-test-sampler.stop"


class Sampler:
    """A sampler inside every machine: a shell loop there asks its own systemd, every 20 ms,
    which of `units` are active, stamping each answer with the clock the machines share (one
    kernel) just before and just after the query; the answer holds at some instant between
    the two stamps. Two consecutive answers alike make a window in which the state is known:
    from the first answer's later stamp to the second's earlier one (a state lasting less than
    a sample is not seen; systemd's start and stop are slower than that). A unit is down
    everywhere at once if there is an instant inside an inactive window of every machine; it
    runs twice if two machines' active windows overlap. Only what the windows prove is
    reported: an instant no window covers is unknown, not a fault."""

    def __init__(self, units: list[str]) -> None:
        self.units = units
        # machine -> (stamp before the query, stamp after it, the units active)
        self.samples: dict[str, list[tuple[float, float, frozenset[str]]]] = {
            n: [] for n in NAMES}
        self._procs: list[tuple[str, subprocess.Popen[str], threading.Thread]] = []

    def _read(self, name: str, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            before, *states, after = line.split()
            if len(states) == len(self.units):
                self.samples[name].append((float(before), float(after), frozenset(
                    u for u, st in zip(self.units, states, strict=True) if st == "active")))

    def __enter__(self) -> Sampler:
        script = (f"rm -f {STOP_FILE}; while [ ! -e {STOP_FILE} ]; do "
                  f"echo \"$(date +%s.%N) $(systemctl is-active {' '.join(self.units)} | "
                  "tr '\\n' ' ') $(date +%s.%N)\"; sleep 0.02; done")
        for n in NAMES:
            proc = subprocess.Popen([*LAB_CMD, "exec", n, "--", "sh", "-c", script],
                                    stdout=subprocess.PIPE, text=True)
            thread = threading.Thread(target=self._read, args=(n, proc), daemon=True)
            thread.start()
            self._procs.append((n, proc, thread))
        wait_until(lambda: all(len(v) >= 2 for v in self.samples.values()),
                   what="samplers answering in every machine")
        return self

    def __exit__(self, *_: object) -> None:
        for n, proc, thread in self._procs:
            lab("exec", n, "--", "touch", STOP_FILE, check=False)
            proc.wait(timeout=30)
            thread.join(timeout=30)

    def known(self, name: str, holds: Callable[[frozenset[str]], bool]
              ) -> list[tuple[float, float]]:
        """The windows in which machine `name` is known to be in a state `holds` accepts."""
        return [(a0, b1) for (_, a0, x), (b1, _, y) in itertools.pairwise(self.samples[name])
                if holds(x) and holds(y)]

    def windows(self, name: str, unit: str, active: bool) -> list[tuple[float, float]]:
        return self.known(name, lambda got: (unit in got) == active)

    def down_everywhere(self, unit: str) -> list[float]:
        """Instants at which `unit` was known inactive on every machine."""
        per = [self.windows(n, unit, False) for n in NAMES]
        starts = sorted(t for ws in per for t, _ in ws)
        return [t for t in starts if all(any(a <= t <= b for a, b in ws) for ws in per)]

    def twice(self, unit: str) -> list[tuple[str, str, float]]:
        """(machine, machine, seconds) for each stretch where `unit` was known active on
        both."""
        out = []
        for i, n in enumerate(NAMES):
            for m in NAMES[i + 1:]:
                for a0, a1 in self.windows(n, unit, True):
                    for b0, b1 in self.windows(m, unit, True):
                        if max(a0, b0) <= min(a1, b1):
                            out.append((n, m, min(a1, b1) - max(a0, b0)))
        return out

    def split(self, pair: tuple[str, str]) -> list[tuple[str, float]]:
        """(machine, instant) of each answer in which a machine ran one of ``pair`` without
        the other while every other machine was known not to run both: a split the
        make-before-break hand-over does not explain (there, the group runs whole on the new
        machine while the old one stops its members one by one)."""
        not_both = {n: self.known(n, lambda got: not set(pair) <= got) for n in NAMES}
        out = []
        for n in NAMES:
            for before, after, active in self.samples[n]:
                if len(set(pair) & active) == 1 and all(
                        any(a <= before and after <= b for a, b in not_both[m])
                        for m in NAMES if m != n):
                    out.append((n, before))
        return out

    def around(self, t: float, span_s: float = 0.5) -> str:
        """Every machine's answers within `span_s` of `t`, for a failure's message."""
        return "; ".join(f"{n}: " + ", ".join(
            f"{b - t:+.3f}..{a - t:+.3f} {sorted(got)}" for b, a, got in self.samples[n]
            if abs(b - t) <= span_s) for n in NAMES)

    def count(self) -> int:
        return min(len(v) for v in self.samples.values())


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
    with Sampler([*units, once]) as s:
        r = fleetctl("drain", "--deadline", "90", machine_ids()["m2"], timeout_s=120)
        after = where([*units, once])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is drained" in r.stdout
    assert s.count() > 10, s.count()
    for u in units:
        assert len(after[u]) == 1 and after[u] != ["m2"], (u, after[u])
        assert not s.down_everywhere(u), f"{u} was down on every machine at once"
        # Two copies only in the hand-over: the drained machine's and its new one's, briefly.
        overlap = s.twice(u)
        assert {(a, b) for a, b, _ in overlap} <= {("m1", "m2"), ("m2", "m3")}, overlap
        assert sum(d for _, _, d in overlap) < 5.0, overlap
    assert len(after[once]) == 1 and after[once] != ["m2"]
    assert not s.twice(once), "a MoveBeforeStop=false unit ran on two machines at once"
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
    with Sampler(["mv.service"]) as s:
        r = fleetctl("move", "mv.service", machine_ids()[target][:12], timeout_s=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert where(["mv.service"])["mv.service"] == [target]
    assert not s.down_everywhere("mv.service")
    assert {(a, b) for a, b, _ in s.twice("mv.service")} <= {tuple(sorted((source, target)))}
    r = fleetctl("move", "mv.service", machine_ids()[target], check=False)
    assert r.returncode != 0 and "already runs on" in r.stderr


def test_drain_moves_a_machine_of_pair_whole_and_never_down(tmp_path: pathlib.Path) -> None:
    pair = ("app.service", "side.service")
    fleetctl("start", write_unit(tmp_path, pair[0]),
             write_unit(tmp_path, pair[1], xfleet="MachineOf=app.service"))
    wait_until(lambda: (w := where(list(pair)))[pair[0]] == w[pair[1]] != [],
               what="the sidekick beside its unit")
    r = fleetctl("move", pair[1], machine_ids()["m1"], check=False)
    assert r.returncode != 0 and "follows app.service (MachineOf)" in r.stderr, r.stderr
    if where([pair[0]])[pair[0]] != ["m1"]:
        fleetctl("move", pair[0], machine_ids()["m1"], timeout_s=90)  # the pair moves
        wait_until(lambda: where([pair[1]])[pair[1]] == ["m1"], what="the sidekick moved too")
    assert where(list(pair)) == {pair[0]: ["m1"], pair[1]: ["m1"]}
    with Sampler(list(pair)) as s:
        r = fleetctl("drain", "--deadline", "90", machine_ids()["m1"], timeout_s=120)
        wait_until(lambda: (w := where(list(pair)))[pair[0]] == w[pair[1]] != ["m1"]
                   and len(w[pair[0]]) == 1, what="the pair whole on another machine")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "is drained" in r.stdout
    assert s.count() > 10, s.count()
    after = where(list(pair))
    assert after[pair[0]] == after[pair[1]] and len(after[pair[0]]) == 1, after
    for u in pair:
        assert not s.down_everywhere(u), f"{u} was down on every machine at once"
        overlap = s.twice(u)
        assert {(a, b) for a, b, _ in overlap} <= {tuple(sorted(("m1", after[u][0])))}, overlap
        assert sum(d for _, _, d in overlap) < 5.0, overlap
    split = s.split(pair)
    assert not split, f"the pair was split: {split[:5]}; {s.around(split[0][1])}"
