"""The deterministic simulation in CI: thousands of random fault schedules on the real engine and
agent code, the safety invariant checked at every systemd state change, liveness after healing.

Schedules run in `python -m tests.sim` subprocesses with PYTHONHASHSEED=0 (set and dict order
of strings then match the printed replay command exactly), two at a time (the CI has 2 cores).
`SIM_SCHEDULES` sets how many (default 2000)."""

from __future__ import annotations

import os

import pytest

from fleetd.fencing import engine_grace_s
from tests.sim.cluster import SimConfig, run_schedule
from tests.sim.driver import run_many, spawn_sim

SCHEDULES = int(os.environ.get("SIM_SCHEDULES", "2000"))


@pytest.fixture(scope="module")
def figures() -> dict[str, object]:
    """One CI run of SIM_SCHEDULES random schedules, shared by the safety and liveness tests."""
    f = run_many(SCHEDULES)
    shown = {k: v for k, v in f.items() if k not in ("report", "failing_seeds")}
    print("\nsimulation:", shown)
    assert f["sim_schedules"] == SCHEDULES and f["sim_faults"], "nothing was simulated"
    return f


def _failures(f: dict[str, object], kind: str) -> str:
    lines = str(f["report"]).splitlines()
    out = [f"{ln}\n{nxt}" for ln, nxt in zip(lines, [*lines[1:], ""], strict=True)
           if ln.startswith("seed ") and (("after healing" in ln) == (kind == "liveness"))]
    return "\n".join(out[:30])


def test_thousands_of_random_fault_schedules_never_run_a_unit_twice(
        figures: dict[str, object]) -> None:
    assert figures["sim_violations"] == 0, "double runs (seed, what, replay command):\n" + \
        _failures(figures, "violation")


def test_every_launched_unit_runs_exactly_once_after_the_faults_heal(
        figures: dict[str, object]) -> None:
    assert figures["sim_liveness_failures"] == 0, "not converged:\n" + \
        _failures(figures, "liveness")


def test_a_seed_replays_exactly() -> None:
    a = run_schedule(17)
    b = run_schedule(17)
    assert a.trace == b.trace and len(a.trace) > 20 and a.faults > 0
    c = run_schedule(18)
    assert c.trace != a.trace


def test_a_seed_replays_exactly_in_a_new_process_from_the_printed_command() -> None:
    outs = []
    for _ in range(2):
        p = spawn_sim("--seed", "23")
        out, _ = p.communicate(timeout=120)
        outs.append(out)
    assert "replay: PYTHONHASHSEED=0" in outs[0]
    assert outs[0] == outs[1]
    digest = next(ln for ln in outs[0].splitlines() if ln.startswith("trace digest"))
    assert digest.split()[2].rstrip(",") == run_schedule(23).digest() or os.environ.get(
        "PYTHONHASHSEED") != "0"


def test_liveness_bound_is_derived_from_ttl_grace_and_stop_time() -> None:
    cfg = SimConfig(ttl_s=5, engine_grace_s=7, max_stop_delay_s=12)
    assert SimConfig().engine_grace_s == engine_grace_s(5)
    assert cfg.liveness_bound_s() == 2 * 5 + 1 + 7 + 2 + 12 + 15 + 2 + 5
