"""Run every fleet-py benchmark and print the figures (never asserted: see README).

  python -m bench [--quick] [--json] [--lab | --lab-only]

--quick runs everything at a tenth of the size (for CI). --json prints one JSON object with
the figures on the last line. --lab adds the figures a user meets on the 3-machine nspawn lab
(bench/lab.py, keys `lab_*`); --lab-only measures just those. Real parts throughout: etcd,
systemd --user managers, fleetd, fleetctl; the 1,000 machines of the scale benchmark are real
agents whose systemd is simulated in-process (bench/simulation.py, `SimulatedSystemd`, a test
double named as such).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import statistics
import sys
import tempfile
import time
from typing import Any

from fleetd.fencing import renew_interval_s
from fleetd.localcluster import LocalCluster, LocalMachine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ["start_latency_ms_p50", "start_latency_ms_p99", "failover_s_p50",
        "agent_1000_units_launch_s", "agent_idle_cpu_pct", "engine_schedule_10k_s",
        "engine_schedule_10k_fleetd_cpu_s", "engine_schedule_10k_sim_cpu_s",
        "engine_schedule_10k_relet_machines",
        "engine_one_decision_ms_p50", "etcd_requests_per_decision", "idle_etcd_requests_per_s",
        "list_units_10k_ms", "list_units_10k_rpc_ms", "sim_schedules", "sim_faults",
        "sim_violations", "sim_liveness_failures", "sim_schedules_per_s", "sim_failover_s_max",
        "soak_faults", "soak_double_runs", "soak_lost_changes", "soak_adoption_failures"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(p / 100 * len(s)) - 1))]


def active_since(m: LocalMachine, unit: str) -> float | None:
    """Monotonic time (s) at which systemd saw `unit` become active, or None."""
    out = m.systemctl("show", "-p", "ActiveState", "-p", "ActiveEnterTimestampMonotonic",
                      unit).stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if props.get("ActiveState") != "active":
        return None
    return int(props["ActiveEnterTimestampMonotonic"]) / 1e6


def start_latency(runs: int) -> list[float]:
    """`fleetctl --no-block start` returning -> active per systemd's own timestamp (same
    CLOCK_MONOTONIC as ours), on 3 machines."""
    out = []
    tmp = tempfile.mkdtemp(prefix="bench-")
    with LocalCluster(3) as cluster:
        for i in range(runs):
            name = f"lat{i}.service"
            path = os.path.join(tmp, name)
            with open(path, "w") as f:
                f.write("[Service]\nExecStart=/bin/sleep 3600\n")
            r = cluster.fleetctl("start", "--no-block", path)
            returned = time.monotonic()
            if r.returncode != 0:
                raise SystemExit(r.stderr)
            deadline = returned + 30
            while True:
                t = next((a for m in cluster.machines if (a := active_since(m, name))), None)
                if t is not None:
                    out.append(max(0.0, t - returned) * 1000)
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} never became active")
                time.sleep(0.01)
            cluster.fleetctl("destroy", name, check=True)
    return out


def failover(runs: int) -> list[float]:
    """Power cut (fleetd, its systemd manager and units killed at once) of the machine holding
    a unit -> the unit active on another machine; LocalCluster's agent_ttl (10 s)."""
    out = []
    for _ in range(runs):
        with LocalCluster(3) as c:
            c.fleetctl("start", os.path.join(ROOT, "units", "hello.service"), check=True)
            victim = next(m for m in c.machines if m.is_active("hello.service"))
            t0 = time.monotonic()
            victim.kill()
            while not any(m.is_active("hello.service") for m in c.machines if m is not victim):
                if time.monotonic() - t0 > 120:
                    raise SystemExit("failover did not happen within 120 s")
                time.sleep(0.02)
            out.append(time.monotonic() - t0)
    return out


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def agent_launch(units: int, idle_s: float) -> tuple[float, float]:
    """One machine, real systemd: `units` units started by one `fleetctl start` -> all active;
    then fleetd's CPU use while idle with them running."""
    tmp = tempfile.mkdtemp(prefix="bench-agent-")
    paths = []
    for i in range(units):
        p = os.path.join(tmp, f"b{i:04d}.service")
        with open(p, "w") as f:
            f.write("[Service]\nExecStart=/bin/sleep 3600\n")
        paths.append(p)
    with LocalCluster(1) as c:
        m = c.machines[0]
        t0 = time.monotonic()
        r = c.fleetctl("start", "--no-block", *paths, timeout_s=600)
        if r.returncode != 0:
            raise SystemExit(r.stderr)
        while True:
            out = m.systemctl("list-units", "--state=active", "--no-legend", "--plain",
                              "b*.service").stdout
            if len(out.splitlines()) >= units:
                break
            if time.monotonic() - t0 > 600:
                raise SystemExit("units did not all become active")
            time.sleep(0.1)
        launch_s = time.monotonic() - t0
        time.sleep(10)  # idle means settled: the last state publications and signals are done
        assert m.fleetd is not None
        before, t1 = cpu_seconds(m.fleetd.pid), time.monotonic()
        time.sleep(idle_s)
        cpu_pct = (cpu_seconds(m.fleetd.pid) - before) / (time.monotonic() - t1) * 100
    return launch_s, cpu_pct


def soak(steps: int, seed: int) -> dict[str, Any]:
    """The lab fault soak (fleetd.lab.soak) on a 3-machine nspawn lab of its own."""
    import fcntl

    from fleetd.config import Config
    from fleetd.lab.lab import Lab
    from fleetd.lab.soak import Soak

    lab = Lab()
    with open("/run/lock/fleet-lab-tests.lock", "w") as lock:  # the lab tests' turn lock
        fcntl.flock(lock, fcntl.LOCK_EX)
        lab.down()
        lab.up(3, {})
        try:
            return Soak(lab, seed=seed, steps=steps, ttl_s=Config().agent_ttl, log=log
                        ).run().to_json()
        finally:
            lab.down()


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tenth of the size, for CI")
    p.add_argument("--json", action="store_true", help="print a JSON object on the last line")
    p.add_argument("--lab", action="store_true", help="add the nspawn lab figures (lab_*)")
    p.add_argument("--lab-only", action="store_true", help="only the nspawn lab figures")
    args = p.parse_args()
    # A benchmark stopped with SIGTERM (timeout(1), CI) unwinds like Ctrl-C: the clusters it
    # started tear down in their `finally`. Their fleetd and etcd run in sessions of their own
    # and were left running otherwise, loading the host for whatever ran next.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    if os.geteuid() != 0:
        print("python -m bench: must run as root (it starts systemd managers)", file=sys.stderr)
        return 2
    os.chdir(ROOT)
    q = args.quick
    if args.lab_only:
        return print_lab(lab_figures(q), args.json)
    from bench.scale import run as scale_run

    res: dict[str, float] = {}
    log("start latency ...")
    lat = start_latency(5 if q else 50)
    res["start_latency_ms_p50"] = round(statistics.median(lat), 2)
    res["start_latency_ms_p99"] = round(pct(lat, 99), 2)
    log("failover ...")
    fo = failover(1 if q else 5)
    res["failover_s_p50"] = round(statistics.median(fo), 2)
    log("agent with many units ...")
    n_units = 100 if q else 1000
    launch_s, cpu = agent_launch(n_units, 3 if q else 30)
    res["agent_1000_units_launch_s"] = round(launch_s, 2)
    res["agent_idle_cpu_pct"] = round(cpu, 2)
    log("scale (simulated machines) ...")
    machines, units = (100, 1000) if q else (1000, 10_000)
    scale = asyncio.run(scale_run(machines, units, 5 if q else 30, log=log))
    res.update({k: v for k, v in scale.items() if k in KEYS})
    log("deterministic simulation (tests/sim) ...")
    from tests.sim.driver import run_many

    sim = run_many(1000 if q else 10_000)
    for k in ("sim_schedules", "sim_faults", "sim_violations", "sim_liveness_failures"):
        res[k] = float(sim[k])  # type: ignore[arg-type]
    res["sim_failover_s_max"] = float(sim["sim_failover_s_max"])  # type: ignore[arg-type]
    res["sim_schedules_per_s"] = round(res["sim_schedules"] / float(sim["elapsed_s"]), 1)  # type: ignore[arg-type]
    if sim["failing_seeds"]:
        log(str(sim["report"])[:4000])

    log("fault soak on the nspawn lab ...")
    steps = 12 if q else 80
    sk = soak(steps, seed=int(os.environ.get("FLEET_SOAK_SEED", "1")))
    res["soak_faults"] = sk["faults_injected"]
    res["soak_double_runs"] = len(sk["double_runs"])
    res["soak_lost_changes"] = len(sk["lost_changes"])
    res["soak_adoption_failures"] = len(sk["adoption_failures"])
    for line in sk["double_runs"] + sk["lost_changes"] + sk["adoption_failures"]:
        log("soak: " + line)

    rows: list[tuple[str, Any, str]] = [
        ("start_latency_ms_p50", f"ms, {len(lat)} runs", "<= 150"),
        ("start_latency_ms_p99", f"ms, {len(lat)} runs", ""),
        ("failover_s_p50", f"s, {len(fo)} runs, agent_ttl 10 s (LocalCluster's), grace 0.02 s",
         "<= 11"),
        ("agent_1000_units_launch_s", f"s, {n_units} units", "<= 30"),
        ("agent_idle_cpu_pct", f"%, {n_units} units idle", "<= 2"),
        ("engine_schedule_10k_s", f"s, {units} units / {machines} machines", "<= 10"),
        ("engine_schedule_10k_fleetd_cpu_s", "CPU s of fleetd (API + engine) meanwhile", ""),
        ("engine_schedule_10k_sim_cpu_s", "CPU s of the simulated machines meanwhile", ""),
        ("engine_schedule_10k_relet_machines", "simulated machines that lost their lease",
         "0"),
        ("engine_one_decision_ms_p50", "ms", "<= 10"),
        ("etcd_requests_per_decision", "requests", "<= 5"),
        ("idle_etcd_requests_per_s", f"requests/s, {machines + 1} machines",
         f"<= {(machines + 1) * 1.05 / renew_interval_s(10):.0f}"),  # scale.py's ttl 10 s
        ("list_units_10k_ms", f"ms, {units} units", "<= 200"),
        ("list_units_10k_rpc_ms", "ms, ListUnits + ListUnitStates alone", ""),
        ("sim_schedules", "random fault schedules, 3 machines", ""),
        ("sim_faults", "faults injected", ""),
        ("sim_violations", "schedules with a unit on 2 machines", "0"),
        ("sim_liveness_failures", "schedules not converged after healing", "0"),
        ("sim_schedules_per_s", "schedules/s, 2 processes", ""),
        ("sim_failover_s_max", "s, lease expiry -> replacement (ttl 5 s)", ""),
        ("soak_faults", f"faults, {steps} steps, seed {sk['seed']}, {sk['duration_s']} s", ""),
        ("soak_double_runs", "units seen on two machines", "0"),
        ("soak_lost_changes", "desired states not reached", "0"),
        ("soak_adoption_failures", "restarted instead of adopted", "0"),
    ]
    width = max(30, *(len(key) for key, _, _ in rows))
    print(f"{'benchmark':{width}} {'value':>10}  {'unit / size':40} {'target':>8}")
    for key, unit, target in rows:
        print(f"{key:{width}} {res[key]:10.2f}  {unit:40} {target:>8}")
    if q:
        print("(--quick: a tenth of the size; targets apply to the full run)")
    if args.json and not args.lab:
        print(json.dumps({k: res[k] for k in KEYS}))
    if args.lab:
        lab = lab_figures(q)
        print_lab(lab, False)
        if args.json:
            print(json.dumps({**{k: res[k] for k in KEYS}, **lab}))
    return 0


def lab_figures(quick: bool) -> dict[str, float]:
    from bench.lab import run as lab_run

    log("nspawn lab figures ...")
    return lab_run(quick, log)


LAB_ROWS = [
    ("lab_fleetctl_version_ms", "ms, whole process, median", "<= 30"),
    ("lab_list_units_100_ms", "ms, whole process, 100 units, median", "<= 60"),
    ("lab_block_start_ms", "ms, blocking start, whole process, median", "<= 100"),
    ("lab_nb_start_ms", "ms, --no-block returned -> active, median", "<= 25"),
    ("lab_start_100_s", "s, 100 units --no-block -> all active, median", "<= 0.5"),
    ("lab_destroy_100_s", "s, destroy 100 -> none active, median", "<= 0.5"),
    ("lab_failover_s", "s, power cut -> active elsewhere, median of 3 (default agent_ttl)",
     "<= 5"),
    ("lab_ghost_rows_s", "s, power cut -> rows gone from list-units", "<= failover"),
    ("lab_fences", "fleetd gave its lease up (no fault but the power cuts)", "0"),
    ("lab_fences_kept", "of which etcd still had it: units started again in place", ""),
    ("lab_loop_stalls", "fleetd event loop stalled >= 0.25 s", ""),
]


def print_lab(lab: dict[str, float], as_json: bool) -> int:
    for key, unit, target in LAB_ROWS:
        print(f"{key:30} {lab[key]:10.2f}  {unit:46} {target:>12}")
    if as_json:
        print(json.dumps(lab))
    return 0


if __name__ == "__main__":
    sys.exit(main())
