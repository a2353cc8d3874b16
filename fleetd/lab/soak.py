"""A fault soak on the nspawn lab: random faults while the desired state changes, checked for
fleet-py's safety promise (a non-global unit never runs on two machines at the same instant).

Ground truth comes from inside the machines, not from fleet:
- every soak unit takes an exclusive flock(2) on `/run/fleet-lab-shared/locks/<unit>.lock`
  (one host directory bind-mounted into every machine; one kernel, so the lock is global) and
  keeps it for as long as its process lives. A second copy anywhere cannot take it: it writes
  a line to `violations` and exits. Power cuts release the lock with the processes, so the
  check is exact, not sampled.
- a sampler service in every machine records the soak units systemd reports running
  (active, activating, deactivating, reloading) five times a second into `samples/<machine>`;
  two machines seen running a unit within one sampling interval of each other count too.

Faults (one at a time per machine, up to all but one machine at once, each held for a random
0.3 to 2.5 lease TTLs): power cut and boot,
partition and heal, `systemctl kill -s KILL fleetd` (systemd restarts it: its units must be
adopted, same MainPID), `systemctl restart fleetd` (adopted too), `systemctl stop fleetd` and
start (its units stop, the machine leaves), `systemctl kill -s STOP fleetd` and CONT after a
random hold around the lease TTL. Between faults, units are started, stopped and destroyed
with fleetctl. At the end every fault is healed and the run waits for the desired state:
each launched unit active on exactly one machine, the others nowhere, the global unit on all.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fleetd.lab.lab import SHARED_IN_MACHINE, Lab, LabError

FAULTS = ("power_cut", "partition", "fleetd_kill9", "fleetd_restart", "fleetd_stop", "freeze")
RUNNING = ("active", "activating", "deactivating", "reloading")
SAMPLE_INTERVAL_S = 0.2
FLEETCTL_TIMEOUT_S = 30.0
# How long a held fault (partition, power cut, stopped or frozen fleetd) lasts, in lease TTLs.
HOLD_TTLS = (0.3, 2.5)

UNIT_SCRIPT = """#!/bin/sh
# A soak unit: run only while holding the unit's lock, shared by every machine of the lab.
d=%(shared)s
exec 9>>"$d/locks/$1.lock"
if ! flock -n 9; then
  echo "$(date +%%s.%%N) $(cat /etc/hostname) $1: started while another copy runs" \\
    >> "$d/violations"
  exit 97
fi
echo "$(date +%%s.%%N) $(cat /etc/hostname) start $1 $$" >> "$d/events"
exec sleep infinity
"""

SAMPLER = ("while :; do echo \"$(date +%%s.%%N) $(systemctl list-units 'soak-*' --all "
           "--no-legend --plain --state=%(states)s | cut -d' ' -f1 | tr '\\n' ' ')\" "
           ">> %(shared)s/samples/$(cat /etc/hostname); sleep %(interval)s; done")


@dataclass
class SoakReport:
    seed: int
    steps: int
    machines: int
    faults: dict[str, int] = field(default_factory=dict)
    desired_changes: int = 0
    double_runs: list[str] = field(default_factory=list)
    lost_changes: list[str] = field(default_factory=list)
    adoption_failures: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    converged_s: float = 0.0
    trace: list[str] = field(default_factory=list)

    @property
    def faults_injected(self) -> int:
        return sum(self.faults.values())

    @property
    def ok(self) -> bool:
        return not (self.double_runs or self.lost_changes or self.adoption_failures)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["faults_injected"] = self.faults_injected
        d["ok"] = self.ok
        return d


@dataclass
class _Fault:
    kind: str
    machine: str
    since: float
    until: float  # when the soak heals it


class Soak:
    """One soak run on an up lab; `run()` returns the report (it never raises on a violation:
    the report says what was seen)."""

    def __init__(self, lab: Lab, *, seed: int, steps: int, units: int = 4, ttl_s: float = 10,
                 log: Callable[[str], None] | None = None) -> None:
        self.lab = lab
        self.rng = random.Random(seed)
        self.steps = steps
        self.ttl_s = ttl_s
        self.units = [f"soak-{i}.service" for i in range(units)]
        self.global_unit = "soak-global.service"
        self.say = log or (lambda s: None)
        self.shared = lab.dir / "shared"
        self.names = sorted(lab.load().machines)
        self.report = SoakReport(seed, steps, len(self.names))
        self.faulted: dict[str, _Fault] = {}
        self.desired: dict[str, str] = {}  # unit -> launched | loaded (absent: destroyed)
        self.tmp = pathlib.Path(tempfile.mkdtemp(prefix="fleet-soak-"))
        self.t0 = time.monotonic()

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> SoakReport:
        self._prepare()
        try:
            for u in [*self.units, self.global_unit]:
                self._fleetctl("start", "--no-block", str(self.tmp / u))
                self.desired[u] = "launched"
            for _ in range(self.steps):
                self._step()
                time.sleep(self.rng.uniform(0.2, 0.4) * self.ttl_s)
            for name in list(self.faulted):
                self._heal(name)
            t = time.monotonic()
            self._converge()
            self.report.converged_s = round(time.monotonic() - t, 2)
        finally:
            self._collect()
            self.report.duration_s = round(time.monotonic() - self.t0, 1)
        return self.report

    def _prepare(self) -> None:
        for d in ("locks", "samples"):
            (self.shared / d).mkdir(parents=True, exist_ok=True)
        for f in ("violations", "events"):
            (self.shared / f).unlink(missing_ok=True)
        script = self.shared / "soak-unit.sh"
        script.write_text(UNIT_SCRIPT % {"shared": SHARED_IN_MACHINE})
        script.chmod(0o755)
        for u in self.units:
            (self.tmp / u).write_text(
                f"[Unit]\nDescription=fleet-py soak unit {u}\n\n[Service]\n"
                f"ExecStart={SHARED_IN_MACHINE}/soak-unit.sh {u}\n")
        (self.tmp / self.global_unit).write_text(
            "[Unit]\nDescription=fleet-py soak global unit\n\n[Service]\n"
            "ExecStart=/bin/sleep infinity\n\n[X-Fleet]\nGlobal=true\n")
        for name in self.names:
            self._start_sampler(name)

    def _start_sampler(self, name: str) -> None:
        loop = SAMPLER % {"states": ",".join(RUNNING), "shared": SHARED_IN_MACHINE,
                          "interval": SAMPLE_INTERVAL_S}
        self._exec(name, "systemd-run", "--quiet", "--collect", "--unit=fleet-lab-sampler",
                   "/bin/sh", "-c", loop, check=False)

    def _step(self) -> None:
        now = time.monotonic()
        for name, f in sorted(self.faulted.items()):
            if now >= f.until:
                self._heal(name)
        healthy = [n for n in self.names if n not in self.faulted]
        if self.rng.random() < 0.55 and len(healthy) > 1:
            self._inject(self.rng.choice(FAULTS), self.rng.choice(healthy))
        else:
            self._change()

    def _note(self, what: str) -> None:
        line = f"{time.monotonic() - self.t0:7.1f}s {what}"
        self.report.trace.append(line)
        self.say(line)

    # -- faults ----------------------------------------------------------------------------
    def _inject(self, kind: str, name: str) -> None:
        self.report.faults[kind] = self.report.faults.get(kind, 0) + 1
        self._note(f"fault {kind} on {name}")
        if kind in ("fleetd_kill9", "fleetd_restart"):
            before = self._running_pids(name)
            old_pid = self._fleetd_pid(name)
            if kind == "fleetd_kill9":
                self._exec(name, "systemctl", "kill", "-s", "KILL", "fleetd")
            else:
                self._exec(name, "systemctl", "restart", "fleetd")
            self._check_adopted(name, kind, before, old_pid)
            return
        # Held for a random time around the lease TTL: sometimes healed before the fence and
        # the engine's grace, sometimes long after the units moved.
        hold_s = self.rng.uniform(*HOLD_TTLS) * self.ttl_s
        self.faulted[name] = _Fault(kind, name, time.monotonic(), time.monotonic() + hold_s)
        if kind == "power_cut":
            self.lab.stop(name)
        elif kind == "partition":
            self.lab.partition(name)
        elif kind == "fleetd_stop":
            self._exec(name, "systemctl", "stop", "fleetd")
        elif kind == "freeze":
            self._exec(name, "systemctl", "kill", "-s", "STOP", "fleetd")

    def _heal(self, name: str) -> None:
        f = self.faulted.pop(name)
        self._note(f"heal {f.kind} on {name} after {time.monotonic() - f.since:.1f}s")
        if f.kind == "power_cut":
            self.lab.start(name)
            self._start_sampler(name)
        elif f.kind == "partition":
            self.lab.heal(name)
        elif f.kind == "fleetd_stop":
            self._exec(name, "systemctl", "start", "fleetd")
        elif f.kind == "freeze":
            self._exec(name, "systemctl", "kill", "-s", "CONT", "fleetd")

    def _running_pids(self, name: str) -> dict[str, int]:
        out = self._exec(name, "systemctl", "show", "-p", "Id", "-p", "ActiveState", "-p",
                         "MainPID", *self.units).stdout
        pids = {}
        for block in out.strip().split("\n\n"):
            p = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
            if p.get("ActiveState") == "active" and p.get("MainPID", "0") != "0":
                pids[p["Id"]] = int(p["MainPID"])
        return pids

    def _fleetd_pid(self, name: str) -> str:
        out = self._exec(name, "systemctl", "show", "-p", "ActiveState", "-p", "MainPID",
                         "fleetd", check=False).stdout
        p = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        return p.get("MainPID", "0") if p.get("ActiveState") == "active" else "0"

    def _check_adopted(self, name: str, kind: str, before: dict[str, int],
                       old_pid: str) -> None:
        """After a fleetd restart within the TTL, the units it ran keep their processes and
        are reported again under the new lease."""
        deadline = time.monotonic() + 3 * self.ttl_s
        mid = self.lab.load().machines[name].machine_id
        while time.monotonic() < deadline:
            if self._fleetd_pid(name) not in ("0", old_pid):
                rows = self._list_units()
                mine = {u for u, m, a in rows if m == mid and a == "active"}
                if set(before) <= mine:
                    break
            time.sleep(0.5)
        after = self._running_pids(name)
        for unit, pid in sorted(before.items()):
            if after.get(unit) != pid:
                self.report.adoption_failures.append(
                    f"{kind} on {name}: {unit} had MainPID {pid}, now "
                    f"{after.get(unit, 'not running')}")

    # -- desired-state changes -------------------------------------------------------------
    def _change(self) -> None:
        u = self.rng.choice(self.units)
        state = self.desired.get(u)
        if state == "launched":
            verb = self.rng.choice(["stop", "destroy"])
        else:
            verb = "start"
        self.report.desired_changes += 1
        self._note(f"fleetctl {verb} {u}")
        if verb == "start":
            self._fleetctl("start", "--no-block", str(self.tmp / u))
            self.desired[u] = "launched"
        elif verb == "stop":
            self._fleetctl("stop", "--no-block", u)
            self.desired[u] = "loaded"
        else:
            self._fleetctl("destroy", u)
            self.desired.pop(u, None)

    # -- the end: convergence and the evidence ---------------------------------------------
    def _converge(self, timeout_s: float | None = None) -> None:
        timeout_s = timeout_s or 6 * self.ttl_s + 60
        deadline = time.monotonic() + timeout_s
        problems: list[str] = []
        while time.monotonic() < deadline:
            problems = self._differences()
            if not problems:
                return
            time.sleep(1)
        self.report.lost_changes.extend(problems)

    def _differences(self) -> list[str]:
        running = {n: set(self._running_pids(n)) | (
            {self.global_unit} if self._exec(n, "systemctl", "is-active", self.global_unit,
                                             check=False).stdout.strip() == "active" else set())
            for n in self.names}
        out = []
        for u in self.units:
            where = sorted(n for n, units in running.items() if u in units)
            want = 1 if self.desired.get(u) == "launched" else 0
            if len(where) != want:
                out.append(f"{u} ({self.desired.get(u, 'destroyed')}) runs on {where or 'none'}")
        missing = [n for n, units in running.items() if self.global_unit not in units]
        if missing:
            out.append(f"{self.global_unit} (global) not running on {missing}")
        return out

    def _collect(self) -> None:
        v = self.shared / "violations"
        if v.exists():
            self.report.double_runs += [f"lock: {line}" for line in v.read_text().splitlines()]
        self.report.double_runs += [f"sampler: {o}" for o in self._sample_overlaps()]
        for name in self.names:
            self._exec(name, "systemctl", "stop", "fleet-lab-sampler", check=False)

    def _sample_overlaps(self) -> list[str]:
        samples: dict[str, list[tuple[float, set[str]]]] = {}
        for f in (self.shared / "samples").glob("*"):
            rows = []
            for line in f.read_text().splitlines():
                ts, _, units = line.partition(" ")
                try:
                    rows.append((float(ts), set(units.split()) & set(self.units)))
                except ValueError:
                    continue  # a line cut by a power cut
            samples[f.name] = sorted(rows, key=lambda r: r[0])
        return sample_overlaps(samples)

    # -- plumbing --------------------------------------------------------------------------
    def _exec(self, name: str, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            r = self.lab.exec_capture(name, *cmd)
        except LabError:
            if check:
                raise
            return subprocess.CompletedProcess(list(cmd), 1, "", "machine not running")
        if check and r.returncode != 0:
            raise LabError(f"{name}: {' '.join(cmd)} failed ({r.returncode}): {r.stderr}")
        return r

    def _endpoints(self) -> list[str]:
        state = self.lab.load()
        return [m.endpoint for n, m in sorted(state.machines.items())
                if n not in self.faulted and self.lab.machine_state(m) == "running"]

    def _fleetctl(self, *args: str) -> str:
        """Run fleetctl against a machine that is up (the next one if that one fails)."""
        env = {**os.environ, **self.lab.env()}
        exe = pathlib.Path(sys.prefix) / "bin" / "fleetctl"
        errors = []
        for endpoint in self._endpoints():
            env["FLEETCTL_ENDPOINT"] = endpoint
            try:
                r = subprocess.run([str(exe), *args], capture_output=True, text=True, env=env,
                                   timeout=FLEETCTL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                errors.append(f"{endpoint}: timed out")
                continue
            if r.returncode == 0:
                return r.stdout
            errors.append(f"{endpoint}: {r.stderr.strip()}")
        raise LabError(f"fleetctl {' '.join(args)} failed everywhere: {'; '.join(errors)}")

    def _list_units(self) -> list[tuple[str, str, str]]:
        try:
            out = self._fleetctl("list-units", "--no-legend", "-l", "--fields",
                                 "unit,machine,active")
        except LabError:
            return []
        rows = []
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3:
                rows.append((parts[0], parts[1].split("/")[0], parts[2]))
        return rows


def sample_overlaps(samples: dict[str, list[tuple[float, set[str]]]]) -> list[str]:
    """Units two machines were seen running at once: machine A saw the unit at two
    consecutive samples t1 < t2 and machine B saw it at some t1 < t < t2. Pure, for tests."""
    out = []
    for a, rows_a in samples.items():
        for (t1, s1), (t2, s2) in itertools.pairwise(rows_a):
            for u in s1 & s2:
                for b, rows_b in samples.items():
                    if b == a:
                        continue
                    times = [t for t, _ in rows_b]
                    i = bisect.bisect_right(times, t1)
                    while i < len(rows_b) and rows_b[i][0] < t2:
                        if u in rows_b[i][1]:
                            out.append(f"{u} on {a} ({t1:.2f}-{t2:.2f}) and {b} "
                                       f"({rows_b[i][0]:.2f})")
                            break
                        i += 1
    return sorted(set(out))


def main(lab: Lab, seed: int, steps: int, ttl_s: float, as_json: bool) -> int:
    report = Soak(lab, seed=seed, steps=steps, ttl_s=ttl_s,
                  log=lambda s: print(s, file=sys.stderr, flush=True)).run()
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        print(f"soak seed {seed}: {report.faults_injected} faults {report.faults}, "
              f"{report.desired_changes} desired-state changes, {report.duration_s}s; "
              f"double runs {len(report.double_runs)}, lost changes "
              f"{len(report.lost_changes)}, adoption failures "
              f"{len(report.adoption_failures)}")
        for line in report.double_runs + report.lost_changes + report.adoption_failures:
            print("  " + line)
    return 0 if report.ok else 1
