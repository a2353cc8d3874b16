"""Many simulated schedules in parallel subprocesses (for CI and `python -m bench`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKERS = 2


def spawn_sim(*args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONHASHSEED="0")
    return subprocess.Popen([sys.executable, "-m", "tests.sim", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_many(count: int, *extra: str, workers: int = WORKERS) -> dict[str, object]:
    """`count` schedules split over WORKERS processes; the merged JSON figures."""
    t0 = time.perf_counter()
    step = -(-count // workers)
    procs = [spawn_sim("--seeds", f"{lo}:{min(lo + step, count)}", "--json", *extra)
             for lo in range(0, count, step)]
    totals: dict[str, object] = {"sim_schedules": 0, "sim_faults": 0, "sim_violations": 0,
                                 "sim_liveness_failures": 0, "failing_seeds": []}
    failures = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        figures = json.loads(out.strip().splitlines()[-1])
        for k in ("sim_schedules", "sim_faults", "sim_violations", "sim_liveness_failures"):
            totals[k] = int(totals[k]) + figures[k]  # type: ignore[call-overload]
        totals["failing_seeds"] += figures["failing_seeds"]  # type: ignore[operator]
        failures.append(err)
    totals["elapsed_s"] = round(time.perf_counter() - t0, 1)
    totals["report"] = "".join(failures)
    return totals


