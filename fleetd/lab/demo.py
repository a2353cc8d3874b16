"""The lab demo (`./scripts/lab-demo`): boot the 3-machine nspawn lab, start the example
units, show the cluster, cut power to the machine running hello.service and time its
failover. Everything goes through the real `fleet-lab` and `fleetctl` commands, echoed.

  python -m fleetd.lab.demo [--down]    --down: tear the lab down at the end
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

UNITS_DIR = pathlib.Path(__file__).resolve().parents[2] / "units"
BIN = pathlib.Path(sys.prefix) / "bin"
METADATA = ["m1:region=us-east", "m2:region=us-west", "m3:region=us-east,disk=ssd"]
UNITS = ["hello.service", "hello-discovery.service", "monitor.service", "web1.service",
         "web2.service", "east-only.service"]


def _cmd(tool: str) -> list[str]:
    exe = BIN / tool
    if exe.exists():
        return [str(exe)]
    return [sys.executable, "-m", {"fleet-lab": "fleetd.lab", "fleetctl": "fleetctl"}[tool]]


def sh(tool: str, *args: str, echo: bool = True, check: bool = True, env: dict[str, str]
       | None = None) -> subprocess.CompletedProcess[str]:
    if echo:
        print(f"$ {tool} {' '.join(args)}", flush=True)
    r = subprocess.run([*_cmd(tool), *args], capture_output=True, text=True,
                       env={**os.environ, **(env or {})})
    if echo:
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        sys.stdout.flush()
    if check and r.returncode != 0:
        if not echo:
            sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit(f"{tool} {' '.join(args)} failed with {r.returncode}")
    return r


def lab_env() -> dict[str, str]:
    out = {}
    for line in sh("fleet-lab", "env", echo=False).stdout.splitlines():
        k, _, v = line.removeprefix("export ").partition("=")
        out[k] = v
    return out


def fleetctl(*args: str, echo: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("fleetctl", *args, echo=echo, env=lab_env())


def machines() -> list[dict[str, str]]:
    return list(json.loads(sh("fleet-lab", "machines", "--json", echo=False).stdout))


def holder(unit: str) -> tuple[str, str] | None:
    rows = fleetctl("list-units", "--no-legend", "-l", "--fields", "unit,machine,active",
                    echo=False).stdout.splitlines()
    for row in rows:
        name, machine, active = row.split()
        if name == unit and active == "active":
            mid = machine.split("/")[0]
            for m in machines():
                if m["machine_id"] == mid:
                    return m["name"], mid
    return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="lab-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--down", action="store_true", help="tear the lab down at the end")
    args = p.parse_args(argv)
    if os.geteuid() != 0:
        print("lab-demo: must run as root (it boots systemd-nspawn containers)",
              file=sys.stderr)
        return 2
    sh("fleet-lab", "down", echo=False)  # leftovers of an earlier lab
    meta = [a for m in METADATA for a in ("--metadata", m)]
    sh("fleet-lab", "up", "--machines", "3", *meta)
    print()
    sh("fleet-lab", "env")
    print()
    fleetctl("list-machines")
    print()
    t0 = time.monotonic()
    fleetctl("start", *(str(UNITS_DIR / u) for u in UNITS))
    print(f"(started {len(UNITS)} units in {time.monotonic() - t0:.2f}s)\n")
    fleetctl("list-units")
    print()
    where = holder("hello.service")
    if where is None:
        raise SystemExit("hello.service is not active anywhere")
    victim, victim_id = where
    print(f"Power cut: {victim} ({victim_id[:8]}...) runs hello.service and its sidekick "
          f"hello-discovery.service.", flush=True)
    t0 = time.monotonic()
    sh("fleet-lab", "stop", victim)
    while True:
        now = holder("hello.service")
        if now is not None and now[0] != victim:
            r = sh("fleet-lab", "exec", now[0], "--", "systemctl", "is-active",
                   "hello.service", echo=False, check=False)
            if r.stdout.strip() == "active":
                break
        if time.monotonic() - t0 > 90:
            raise SystemExit("hello.service did not come back within 90 s")
        time.sleep(0.1)
    print(f"hello.service active again on {now[0]} ({now[1][:8]}...) "
          f"{time.monotonic() - t0:.2f}s after the power cut\n", flush=True)
    fleetctl("list-units")
    print()
    sh("fleet-lab", "machines")
    print()
    sh("fleet-lab", "start", victim)
    fleetctl("list-machines")
    print()
    if args.down:
        sh("fleet-lab", "down")
    else:
        print("The lab keeps running. Use it with:\n"
              f"  eval \"$({BIN / 'fleet-lab'} env)\"; {BIN / 'fleetctl'} list-units\n"
              f"Tear it down with:\n  {BIN / 'fleet-lab'} down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
