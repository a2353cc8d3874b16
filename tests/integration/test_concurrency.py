"""20 concurrent fleetctl clients starting, stopping and destroying overlapping units.

Every desired-state write is one etcd transaction, so the history must be linearizable: the final
desired state of each unit is the effect of a successful command that nothing successful
followed (no other successful command on that unit started after it completed): "the last
write". The only refusals allowed are fleet's documented ones (the unit does not exist after a
concurrent destroy; stop of a unit that is inactive). Real etcd, fleetd, fleetctl and systemd.
"""

from __future__ import annotations

import pathlib
import random
import threading
import time
from dataclasses import dataclass

from fleetd.localcluster import LocalCluster
from tests.harness.cases import record
from tests.integration.conftest import machines_running, wait_until

CLIENTS = 20
COMMANDS_PER_CLIENT = 6
UNITS = [f"race{i}.service" for i in range(4)]
EFFECT = {"start": "launched", "stop": "loaded", "destroy": "absent"}
DOCUMENTED_REFUSALS = ("does not exist", "not found", "Unable to stop unit")


@dataclass
class Command:
    client: int
    op: str
    unit: str
    start: float
    end: float
    ok: bool
    stderr: str


def test_concurrent_clients_lose_no_update(cluster: LocalCluster,
                                           tmp_path: pathlib.Path) -> None:
    c = cluster
    for u in UNITS:
        (tmp_path / u).write_text(f"[Unit]\nDescription={u}\n\n[Service]\n"
                                  "ExecStart=/bin/sleep 100000\n")
    history: list[Command] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        rnd = random.Random(i)
        for _ in range(COMMANDS_PER_CLIENT):
            op, unit = rnd.choice(list(EFFECT)), rnd.choice(UNITS)
            args = {"start": ["start", "--no-block", str(tmp_path / unit)],
                    "stop": ["stop", "--no-block", unit], "destroy": ["destroy", unit]}[op]
            t0 = time.monotonic()
            r = c.fleetctl(*args, timeout_s=120)
            cmd = Command(i, op, unit, t0, time.monotonic(), r.returncode == 0, r.stderr.strip())
            with lock:
                history.append(cmd)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    unexpected = [h for h in history if not h.ok
                  and not any(s in h.stderr for s in DOCUMENTED_REFUSALS)]
    assert not unexpected, [(h.op, h.unit, h.stderr) for h in unexpected]

    dstate = {}
    r = c.fleetctl("list-unit-files", "--no-legend", "--fields", "unit,dstate", check=True)
    for line in r.stdout.splitlines():
        name, state = line.split()
        dstate[name] = state
    unique = 0
    for unit in UNITS:
        done = [h for h in history if h.unit == unit and h.ok]
        final = dstate.get(unit, "absent")
        if not done:
            assert final == "absent", unit
            continue
        last = [h for h in done if not any(o.start > h.end for o in done)]
        allowed = {EFFECT[h.op] for h in last}
        unique += len(allowed) == 1
        assert final in allowed, (unit, final, [(h.op, h.start, h.end) for h in last])
        # And systemd follows the desired state: one copy when launched, none otherwise.
        want = 1 if final == "launched" else 0
        wait_until(lambda u=unit, w=want: len(machines_running(c, u)) == w,  # type: ignore[misc]
                   20, what=f"{unit} running on {want} machine(s) ({final})")
    refused = sum(not h.ok for h in history)
    print(f"\n{len(history)} commands from {CLIENTS} clients in {elapsed:.1f}s: "
          f"{len(history) - refused} succeeded, {refused} documented refusals; final state "
          f"= last write for all {len(UNITS)} units ({unique} with a single last write)")
    record("fault: 20 concurrent fleetctl clients", len(history),
           f"{len(history) - refused} succeeded, {refused} documented refusals, final state = "
           f"a last write for all {len(UNITS)} units")
    for u in UNITS:
        c.fleetctl("destroy", u)
