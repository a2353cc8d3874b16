"""Run simulated schedules: `PYTHONHASHSEED=0 python -m tests.sim --seeds 0:1000 [--json]`,
or replay one with `--seed N --trace`."""

from __future__ import annotations

import argparse
import json
import sys
import time

from tests.sim.cluster import SimConfig, describe, run_schedule


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.sim")
    p.add_argument("--seed", type=int)
    p.add_argument("--seeds", default="0:100", help="range start:end")
    p.add_argument("--machines", type=int, default=3)
    p.add_argument("--grace", type=float, default=0.0)
    p.add_argument("--kinds", default="", help="comma-separated fault kinds (default: all)")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--verbose", action="store_true", help="fleetd's logs too")
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    cfg = SimConfig(machines=a.machines, engine_grace_s=a.grace)
    if a.kinds:
        cfg.kinds = tuple(a.kinds.split(","))
    opts = (f" --machines {a.machines}" if a.machines != 3 else "") + \
        (f" --grace {a.grace}" if a.grace else "") + (f" --kinds {a.kinds}" if a.kinds else "")
    if a.seed is not None:
        r = run_schedule(a.seed, cfg, verbose=a.verbose)
        if a.trace and not a.verbose:
            print("\n".join(r.trace))
        print(describe(r, opts))
        print(f"trace digest {r.digest()}, {r.steps} loop steps, {r.virtual_s:.1f}s simulated")
        return 0 if r.ok else 1
    lo, hi = (int(x) for x in a.seeds.split(":"))
    t0 = time.perf_counter()
    bad = []
    faults = 0
    for seed in range(lo, hi):
        r = run_schedule(seed, cfg)
        faults += r.faults
        if not r.ok:
            bad.append(r)
            print(describe(r, opts), file=sys.stderr, flush=True)
    dt = time.perf_counter() - t0
    out = {"sim_schedules": hi - lo, "sim_faults": faults,
           "sim_violations": sum(1 for r in bad if r.violation),
           "sim_liveness_failures": sum(1 for r in bad if r.liveness and not r.violation),
           "sim_schedules_per_s": round((hi - lo) / dt, 2),
           "failing_seeds": [r.seed for r in bad]}
    print(json.dumps(out) if a.json else out)
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
