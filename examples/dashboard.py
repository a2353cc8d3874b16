#!/usr/bin/env python3
"""A small live dashboard of a fleet-py cluster, fed by the gRPC `Watch` stream.

    python examples/dashboard.py --endpoint unix:///tmp/flc-XXXX/m1/fleet.sock
    python examples/dashboard.py --events        # one line per change instead of a screen

It takes the snapshot `Watch` sends first, then applies each pushed change; when the stream
breaks it reconnects and resumes from the last revision it saw (or starts over if that
revision was compacted away). Nothing here polls.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import grpc

from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc


class ClusterView:
    """Machines, units and unit states as the watch reports them."""

    def __init__(self) -> None:
        self.machines: dict[str, pb.Machine] = {}
        self.units: dict[str, pb.Unit] = {}
        self.states: dict[tuple[str, str], pb.UnitState] = {}
        self.revision = 0

    def apply(self, ev: pb.WatchEvent) -> str:
        """Apply one event; a one-line description of it."""
        self.revision = max(self.revision, ev.revision)
        k = pb.WatchEvent
        if ev.kind == k.SNAPSHOT:
            self.machines = {m.id: m for m in ev.snapshot.machines}
            self.units = {u.name: u for u in ev.snapshot.units}
            self.states = {(s.name, s.machine_id): s for s in ev.snapshot.states}
            return (f"snapshot rev={ev.revision} machines={len(self.machines)} "
                    f"units={len(self.units)}")
        if ev.kind == k.MACHINE_PUT:
            self.machines[ev.machine.id] = ev.machine
            return f"machine {ev.machine.id} up ip={ev.machine.ip}"
        if ev.kind == k.MACHINE_DELETED:
            self.machines.pop(ev.machine_id, None)
            return f"machine {ev.machine_id} gone"
        if ev.kind == k.UNIT_PUT:
            self.units[ev.unit.name] = ev.unit
            return (f"unit {ev.unit.name} desired={ev.unit.desired_state} "
                    f"current={ev.unit.current_state}")
        if ev.kind == k.UNIT_DELETED:
            self.units.pop(ev.name, None)
            return f"unit {ev.name} destroyed"
        if ev.kind == k.STATE_PUT:
            s = ev.state
            self.states[(s.name, s.machine_id)] = s
            return f"state {s.name} on {s.machine_id[:8]} {s.active_state}/{s.sub_state}"
        if ev.kind == k.STATE_DELETED:
            self.states.pop((ev.name, ev.machine_id), None)
            return f"state {ev.name} on {ev.machine_id[:8]} gone"
        return f"unknown event {ev.kind}"

    def render(self) -> str:
        lines = [f"fleet-py cluster at revision {self.revision}", "",
                 f"{'MACHINE':10} {'IP':15} METADATA"]
        for m in sorted(self.machines.values(), key=lambda m: m.id):
            md = ",".join(f"{k}={v}" for k, v in sorted(m.metadata.items())) or "-"
            lines.append(f"{m.id[:8]:10} {m.ip:15} {md}{' (engine)' if m.engine_leader else ''}")
        lines += ["", f"{'UNIT':28} {'DESIRED':9} {'CURRENT':9} {'MACHINE':10} ACTIVE"]
        for u in sorted(self.units.values(), key=lambda u: u.name):
            where = [s for (n, _), s in sorted(self.states.items()) if n == u.name]
            if not where:
                lines.append(f"{u.name:28} {u.desired_state:9} {u.current_state:9} {'-':10} -")
            for s in where:
                lines.append(f"{u.name:28} {u.desired_state:9} {u.current_state:9} "
                             f"{s.machine_id[:8]:10} {s.active_state}/{s.sub_state}")
        return "\n".join(lines) + "\n"


def target(endpoint: str) -> str:
    for scheme in ("http://", "grpc://"):
        if endpoint.startswith(scheme):
            return endpoint[len(scheme):]
    return endpoint if not endpoint.startswith("/") else "unix://" + endpoint


def credentials(ca_file: str, cert_file: str, key_file: str) -> grpc.ChannelCredentials | None:
    """Mutual TLS for a TCP endpoint (fleetctl's --ca-file/--cert-file/--key-file)."""
    if not (ca_file or cert_file or key_file):
        return None

    def read(path: str) -> bytes | None:
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()
    return grpc.ssl_channel_credentials(read(ca_file), read(key_file), read(cert_file))


def run(endpoint: str, events: bool, out: object = sys.stdout,
        creds: grpc.ChannelCredentials | None = None) -> None:
    view = ClusterView()
    write = out.write  # type: ignore[attr-defined]
    flush = out.flush  # type: ignore[attr-defined]
    while True:
        if creds is not None and not target(endpoint).startswith("unix:"):
            channel = grpc.secure_channel(target(endpoint), creds)
        else:
            channel = grpc.insecure_channel(target(endpoint))
        stub = pb_grpc.FleetStub(channel)
        try:
            for ev in stub.Watch(pb.WatchRequest(start_revision=view.revision)):
                line = view.apply(ev)
                if events:
                    write(line + "\n")
                else:
                    write("\x1b[H\x1b[2J" + view.render())
                flush()
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.OUT_OF_RANGE:
                view.revision = 0  # compacted: start over from a snapshot
            else:
                write(f"watch interrupted ({e.code().name}); reconnecting\n")
                flush()
                time.sleep(1)
        finally:
            channel.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", default=os.environ.get("FLEETCTL_ENDPOINT",
                                                         "unix:///var/run/fleet-py.sock"))
    ap.add_argument("--events", action="store_true", help="print one line per change")
    for flag, env in (("--ca-file", "FLEETCTL_CA_FILE"), ("--cert-file", "FLEETCTL_CERT_FILE"),
                      ("--key-file", "FLEETCTL_KEY_FILE")):
        ap.add_argument(flag, default=os.environ.get(env, ""),
                        help=f"TLS for a TCP endpoint (default ${env})")
    args = ap.parse_args()
    try:
        run(args.endpoint, args.events,
            creds=credentials(args.ca_file, args.cert_file, args.key_file))
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
