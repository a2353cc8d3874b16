"""`fleet-cluster`: run a local fleet-py cluster on this host (root; etcd-server installed).

  fleet-cluster demo [--machines N] [--keep]   boot, run the example units, show failover
  fleet-cluster up [--machines N]              boot and stay in the foreground until Ctrl-C
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import time

from fleetd.localcluster.cluster import LocalCluster

UNITS_DIR = pathlib.Path(__file__).resolve().parents[2] / "units"
METADATA = [{"region": "us-east"}, {"region": "us-west"}, {"region": "us-east", "disk": "ssd"}]


def show(cluster: LocalCluster, *args: str) -> str:
    print(f"$ fleetctl {' '.join(args)}", flush=True)
    r = cluster.fleetctl(*args)
    sys.stdout.write(r.stdout)
    sys.stdout.write(r.stderr)
    sys.stdout.flush()
    return r.stdout


def boot(machines: int, agent_ttl_s: int) -> LocalCluster:
    cluster = LocalCluster(machines, metadata=METADATA, agent_ttl_s=agent_ttl_s)
    t0 = time.monotonic()
    cluster.start()
    print(f"Booted etcd and {machines} machines (each a systemd --user manager driven by "
          f"fleetd) in {time.monotonic() - t0:.2f}s under {cluster.root}")
    print(f"export FLEETCTL_ENDPOINT={cluster.endpoint()}\n", flush=True)
    return cluster


def demo(cluster: LocalCluster) -> None:
    units = [str(UNITS_DIR / n) for n in ("hello.service", "hello-discovery.service",
                                          "monitor.service", "web1.service", "web2.service",
                                          "east-only.service")]
    show(cluster, "list-machines")
    print()
    t0 = time.monotonic()
    show(cluster, "start", *units)
    print(f"(started {len(units)} units in {time.monotonic() - t0:.2f}s)\n")
    show(cluster, "list-units")
    print()
    show(cluster, "list-unit-files")
    print()
    line = cluster.fleetctl("list-units", "--no-legend", "-l", "--fields",
                            "unit,machine").stdout
    mid = next(ln.split()[1].split("/")[0] for ln in line.splitlines()
               if ln.startswith("hello.service"))
    victim = cluster.machine(mid)
    print(f"Power cut: killing {victim.name} ({mid[:8]}..., fleetd + systemd + its units), "
          f"which runs hello.service and its sidekick ...", flush=True)
    t0 = time.monotonic()
    victim.kill()
    while True:
        others = [m for m in cluster.machines if m is not victim and m.is_active("hello.service")]
        if others:
            break
        if time.monotonic() - t0 > 60:
            raise SystemExit("hello.service did not come back within 60 s")
        time.sleep(0.05)
    print(f"hello.service active again on {others[0].name} after "
          f"{time.monotonic() - t0:.2f}s (agent_ttl {cluster.agent_ttl_s}s)\n")
    time.sleep(0.5)
    show(cluster, "list-units")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="fleet-cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    for name in ("demo", "up"):
        sp = sub.add_parser(name)
        sp.add_argument("--machines", type=int, default=3)
        sp.add_argument("--agent-ttl", type=int, default=10, help="seconds (fleetd default)")
        if name == "demo":
            sp.add_argument("--keep", action="store_true",
                            help="leave the cluster running (Ctrl-C tears it down)")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("fleet-cluster: must run as root (it starts systemd managers)", file=sys.stderr)
        return 2
    if args.machines < 1:
        print("fleet-cluster: --machines must be at least 1", file=sys.stderr)
        return 2
    try:
        cluster = boot(args.machines, args.agent_ttl)
    except RuntimeError as e:
        print(f"fleet-cluster: {e}", file=sys.stderr)
        return 1
    try:
        if args.command == "demo":
            demo(cluster)
        if args.command == "up" or getattr(args, "keep", False):
            print("Cluster running; Ctrl-C (or SIGTERM) tears it down.", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        print("Tearing down the cluster ...", flush=True)
        cluster.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
