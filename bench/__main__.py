"""Run the benchmarks on a real local cluster and print their figures.

  python -m bench [--runs N] [--failover-runs N] [--json]

start latency: `fleetctl --no-block start` returning -> the unit active per systemd (systemd's
own ActiveEnterTimestampMonotonic, same clock as ours). failover: power cut of the machine
holding a unit (fleetd, its systemd manager and units killed at once) -> the unit active on
another machine, with the default agent_ttl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

from fleetd.localcluster import LocalCluster


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def active_since(m, unit: str) -> float | None:  # type: ignore[no-untyped-def]
    """Monotonic time (s) at which systemd saw `unit` become active, or None."""
    out = m.systemctl("show", "-p", "ActiveState", "-p", "ActiveEnterTimestampMonotonic",
                      unit).stdout
    props = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    if props.get("ActiveState") != "active":
        return None
    return int(props["ActiveEnterTimestampMonotonic"]) / 1e6


def start_latency(cluster: LocalCluster, runs: int) -> list[float]:
    out = []
    tmp = tempfile.mkdtemp(prefix="bench-")
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


def failover(runs: int, agent_ttl_s: int) -> list[float]:
    out = []
    for _ in range(runs):
        with LocalCluster(3, agent_ttl_s=agent_ttl_s) as c:
            c.fleetctl("start", "units/hello.service", check=True)
            victim = next(m for m in c.machines if m.is_active("hello.service"))
            t0 = time.monotonic()
            victim.kill()
            while not any(m.is_active("hello.service") for m in c.machines if m is not victim):
                if time.monotonic() - t0 > 120:
                    raise SystemExit("failover did not happen within 120 s")
                time.sleep(0.02)
            out.append(time.monotonic() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--failover-runs", type=int, default=5)
    p.add_argument("--agent-ttl", type=int, default=10)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with LocalCluster(3, agent_ttl_s=args.agent_ttl) as c:
        lat = start_latency(c, args.runs)
    fo = failover(args.failover_runs, args.agent_ttl)
    rows = [
        ("start latency (--no-block start -> active), ms", lat),
        (f"failover after power cut (agent_ttl {args.agent_ttl}s), s", fo),
    ]
    print(f"{'benchmark':55} {'runs':>5} {'min':>8} {'p50':>8} {'p99':>8} {'max':>8}")
    for label, v in rows:
        print(f"{label:55} {len(v):5d} {min(v):8.2f} {statistics.median(v):8.2f} "
              f"{pct(v, 99):8.2f} {max(v):8.2f}")
    if args.json:
        print(json.dumps({"start_latency_ms_p50": round(statistics.median(lat), 2),
                          "start_latency_ms_p99": round(pct(lat, 99), 2),
                          "failover_s_p50": round(statistics.median(fo), 2)}))


if __name__ == "__main__":
    sys.exit(main())
