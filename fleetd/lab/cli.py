"""`fleet-lab`: a multi-machine fleet-py lab on systemd-nspawn containers (run as root).

  fleet-lab up [--machines N] [--metadata NAME:k=v[,k=v...]]...
  fleet-lab env                      export lines for fleetctl on the host
  fleet-lab machines [--json]        name, machine id, IP, state of each machine
  fleet-lab exec NAME -- CMD...      run CMD inside machine NAME
  fleet-lab stop NAME                power cut; `fleet-lab start NAME` boots it again
  fleet-lab partition NAME           cut the machine off the network; `heal NAME` restores it
  fleet-lab soak [--seed S] [--steps N] [--json]
                                     random faults while units change; fails on any unit
                                     running twice, lost change or unadopted restart
  fleet-lab down                     remove everything the lab made

Environment: FLEET_LAB_DIR (state directory, default /var/lib/fleet-lab),
FLEET_LAB_AGENT_TTL (fleetd agent_ttl in the machines, default fleetd's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from fleetd.lab.lab import Lab, LabError, parse_metadata_flag


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleet-lab", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="boot etcd and N machines")
    up.add_argument("--machines", type=int, default=3, metavar="N")
    up.add_argument("--metadata", action="append", default=[], metavar="NAME:k=v[,k=v...]")
    sub.add_parser("down", help="remove every container, bridge, address, etcd and process")
    sub.add_parser("env", help="print `export VAR=value` lines for fleetctl")
    ms = sub.add_parser("machines", help="list the machines")
    ms.add_argument("--json", action="store_true")
    ex = sub.add_parser("exec", help="run a command inside a machine")
    ex.add_argument("name")
    ex.add_argument("cmd", nargs=argparse.REMAINDER)
    for name, text in (("stop", "power cut"), ("start", "boot a stopped machine again"),
                       ("partition", "cut a machine off the network"),
                       ("heal", "restore a partitioned machine's network")):
        sub.add_parser(name, help=text).add_argument("name")
    soak = sub.add_parser("soak", help="fault soak on the running lab (see fleetd.lab.soak)")
    soak.add_argument("--seed", type=int, default=1)
    soak.add_argument("--steps", type=int, default=20)
    soak.add_argument("--json", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    lab = Lab()
    try:
        if args.command != "machines" and args.command != "env" and os.geteuid() != 0:
            raise LabError("must run as root")
        if args.command == "up":
            return _up(lab, args)
        if args.command == "down":
            lab.down()
            print("fleet-lab: down")
            return 0
        if args.command == "env":
            for k, v in lab.env().items():
                print(f"export {k}={v}")
            return 0
        if args.command == "machines":
            rows = lab.machines()
            if args.json:
                print(json.dumps(rows))
            else:
                print(f"{'NAME':<6} {'MACHINE':<34} {'IP':<15} STATE")
                for r in rows:
                    print(f"{r['name']:<6} {r['machine_id']:<34} {r['ip']:<15} {r['state']}")
            return 0
        if args.command == "exec":
            cmd = list(args.cmd)
            if cmd and cmd[0] == "--":
                cmd = cmd[1:]
            if not cmd:
                raise LabError("exec: no command given (fleet-lab exec NAME -- CMD...)")
            argv_, env = lab.exec_argv(args.name, cmd)
            sys.stdout.flush()
            os.execvpe(argv_[0], argv_, env)
        if args.command == "stop":
            lab.stop(args.name)
            print(f"fleet-lab: {args.name} stopped (power cut)")
            return 0
        if args.command == "start":
            took = lab.start(args.name)
            print(f"fleet-lab: {args.name} started, registered in {took:.2f}s")
            return 0
        if args.command == "partition":
            lab.partition(args.name)
            print(f"fleet-lab: {args.name} partitioned")
            return 0
        if args.command == "soak":
            from fleetd.config import Config
            from fleetd.lab.soak import main as soak_main

            ttl = float(os.environ.get("FLEET_LAB_AGENT_TTL") or Config().agent_ttl)
            return soak_main(lab, args.seed, args.steps, ttl, args.json)
        if args.command == "heal":
            lab.heal(args.name)
            print(f"fleet-lab: {args.name} healed")
            return 0
    except LabError as e:
        print(f"fleet-lab {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.command == "up":
            print("fleet-lab up: interrupted; cleaning up", file=sys.stderr)
            lab.down()
        return 130
    return 2


def _up(lab: Lab, args: argparse.Namespace) -> int:
    if args.machines < 1:
        raise LabError("--machines must be at least 1")
    metadata: dict[str, dict[str, str]] = {}
    for raw in args.metadata:
        name, md = parse_metadata_flag(raw)
        if name not in {f"m{i}" for i in range(1, args.machines + 1)}:
            raise LabError(f"--metadata {raw!r}: no machine {name} (machines are "
                           f"m1..m{args.machines})")
        metadata.setdefault(name, {}).update(md)
    try:
        took = lab.up(args.machines, metadata,
                      log=lambda s: print(f"fleet-lab: {s}", flush=True))
    except Exception as e:
        if isinstance(e, LabError) and "already up" in str(e):
            raise
        print(f"fleet-lab up: {e}", file=sys.stderr)
        print("fleet-lab up: cleaning up", file=sys.stderr)
        lab.down()
        return 1
    print(f"fleet-lab: {args.machines} machines up in {took:.2f}s")
    for r in lab.machines():
        print(f"  {r['name']:<4} {r['machine_id']}  {r['ip']:<15} {r['state']}")
    print("Use it from this host with: eval \"$(fleet-lab env)\"; tear it down with: "
          "fleet-lab down")
    return 0
