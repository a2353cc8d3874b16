"""The figures a user meets on the nspawn lab (`python -m bench --lab`): whole-process fleetctl
times and what systemd inside the machines reports, on a 3-machine lab at default settings.

Every time is measured against systemd's own clock where systemd knows it: a unit's
`ActiveEnterTimestampMonotonic` inside a machine is CLOCK_MONOTONIC of the one kernel the lab
shares with the host, so "fleetctl returned -> unit active" needs no polling resolution. A
destroyed unit is gone from systemd, and with it its timestamps: "none active" is polled (every
20 ms, each machine asked in turn) until it holds, and its instant is then the latest of the
units' "Stopped" entries in the machines' journals (systemd's UNIT_STOPPED message, stamped
with the same monotonic clock), not the end of the poll. Only "rows gone from list-units" is
timed by its poll, every 20 ms.
"""

from __future__ import annotations

import compileall
import fcntl
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from fleetd.machine import GIVING_UP_LOG, KEPT_LOG
from fleetd.metrics import STALL_LOG

LOCK = "/run/lock/fleet-lab-tests.lock"  # the lab tests' turn lock: one lab user at a time
KEYS = ["lab_fleetctl_version_ms", "lab_list_units_100_ms", "lab_block_start_ms",
        "lab_nb_start_ms", "lab_start_100_s", "lab_destroy_100_s", "lab_failover_s",
        "lab_ghost_rows_s", "lab_fences", "lab_fences_kept", "lab_loop_stalls"]
#: What fleetd logs when it gives its lease up, when it keeps it after a fence that came
#: early, and when its event loop stalled past 0.25 s.
LOG_MARKS = {"lab_fences": GIVING_UP_LOG, "lab_fences_kept": KEPT_LOG,
             "lab_loop_stalls": STALL_LOG}
UNIT = "[Service]\nExecStart=/bin/sleep infinity\n"
POLL_S = 0.02
#: systemd's journal message of a unit whose stop job is done ("Stopped ...").
UNIT_STOPPED = "MESSAGE_ID=9d1aaa27d60140bd96365438aad20286"


class LabBench:
    def __init__(self, lab: Any, fleetctl: str, log: Callable[[str], None]) -> None:
        self.lab = lab
        self.fleetctl_bin = fleetctl
        self.log = log
        self.env = {**os.environ, **lab.env()}
        self.tmp = tempfile.mkdtemp(prefix="bench-lab-")
        self.names = [m["name"] for m in lab.machines()]

    # -- helpers -------------------------------------------------------------------------------
    def fleetctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([self.fleetctl_bin, *args], env=self.env, capture_output=True,
                           text=True, timeout=300)
        if r.returncode != 0:
            raise SystemExit(f"fleetctl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def timed(self, *args: str) -> float:
        """Whole process, in ms: fork, interpreter, imports, the call, exit."""
        t0 = time.perf_counter()
        self.fleetctl(*args)
        return (time.perf_counter() - t0) * 1000

    def unit_files(self, prefix: str, n: int) -> list[str]:
        paths = []
        for i in range(n):
            p = os.path.join(self.tmp, f"{prefix}{i:03d}.service")
            with open(p, "w") as f:
                f.write(UNIT)
            paths.append(p)
        return paths

    def running(self) -> list[str]:
        return [n for n in self.names if self.lab.machine_state(
            self.lab.machine(self.lab.load(), n)) == "running"]

    def active_since(self, pattern: str, machines: list[str] | None = None
                     ) -> dict[str, tuple[str, float]]:
        """unit -> (machine, monotonic s it became active) for active units matching."""
        out: dict[str, tuple[str, float]] = {}
        for m in machines or self.running():
            r = self.lab.exec_capture(m, "sh", "-c",
                                      "systemctl list-units --state=active --no-legend --plain "
                                      f"'{pattern}' | cut -d' ' -f1 | xargs -r systemctl show "
                                      "-p Id -p ActiveEnterTimestampMonotonic")
            unit = ""
            for line in r.stdout.splitlines():
                k, _, v = line.partition("=")
                if k == "Id":
                    unit = v
                elif k == "ActiveEnterTimestampMonotonic" and unit and v.isdigit():
                    out[unit] = (m, int(v) / 1e6)
        return out

    def wait_active(self, pattern: str, n: int, timeout_s: float = 120,
                    machines: list[str] | None = None) -> dict[str, tuple[str, float]]:
        deadline = time.monotonic() + timeout_s
        while True:
            got = self.active_since(pattern, machines)
            if len(got) >= n:
                return got
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(got)} of {n} {pattern} became active")
            time.sleep(POLL_S)

    def wait_none_active(self, pattern: str, timeout_s: float = 120) -> float:
        deadline = time.monotonic() + timeout_s
        while True:
            busy = [m for m in self.running() if self.lab.exec_capture(
                m, "systemctl", "list-units", "--state=active,activating,deactivating",
                "--no-legend", "--plain", pattern).stdout.strip()]
            if not busy:
                return time.monotonic()
            if time.monotonic() > deadline:
                raise SystemExit(f"{pattern} still active on {busy}")
            time.sleep(POLL_S)

    def stopped_at(self, units: list[str], after: float, timeout_s: float = 10) -> float:
        """The monotonic instant the last of `units` stopped, from the machines' journals:
        each unit's latest UNIT_STOPPED entry past `after`. Journald may write an entry a
        little after the unit went inactive, so it is read again until every unit has one."""
        deadline = time.monotonic() + timeout_s
        wanted = set(units)
        while True:
            last: dict[str, float] = {}
            for m in self.running():
                out = self.lab.exec_capture(m, "journalctl", "-b", "-o", "json", "--no-pager",
                                            "--output-fields=UNIT", UNIT_STOPPED).stdout
                for line in out.splitlines():
                    entry = json.loads(line)
                    at = int(entry["__MONOTONIC_TIMESTAMP"]) / 1e6
                    if entry.get("UNIT") in wanted and at > after:
                        last[entry["UNIT"]] = max(at, last.get(entry["UNIT"], 0.0))
            if len(last) == len(wanted):
                return max(last.values())
            if time.monotonic() > deadline:
                missing = sorted(wanted - set(last))
                raise SystemExit(f"no journal entry of the stop of {len(missing)} units, "
                                 f"{missing[:3]} ...")
            time.sleep(POLL_S)

    def log_counts(self) -> dict[str, float]:
        """How often every machine's fleetd logged each of `LOG_MARKS` (this boot's journal:
        a power-cut machine counts from its reboot). No fault but the power cuts is made, so
        every fence counted came early: fleetd or systemd was too busy to re-arm in time."""
        out = {k: 0.0 for k in LOG_MARKS}
        for m in self.running():
            text = self.lab.exec_capture(m, "journalctl", "-u", "fleetd", "-b", "-o", "cat",
                                         "--no-pager").stdout
            for key, mark in LOG_MARKS.items():
                out[key] += text.count(mark)
        return out

    # -- figures -------------------------------------------------------------------------------
    def version(self, runs: int) -> list[float]:
        return [self.timed("version") for _ in range(runs)]

    def list_units_100(self, runs: int) -> list[float]:
        paths = self.unit_files("lu", 100)
        self.fleetctl("start", "--no-block", *paths)
        self.wait_active("lu*.service", 100)
        try:
            return [self.timed("list-units") for _ in range(runs)]
        finally:
            self.fleetctl("destroy", *[os.path.basename(p) for p in paths])
            self.wait_none_active("lu*.service")

    def block_start(self, runs: int) -> list[float]:
        out = []
        for i, p in enumerate(self.unit_files("bs", runs)):
            out.append(self.timed("start", p))
            got = self.active_since(f"bs{i:03d}.service")
            if not got:
                raise SystemExit("blocking start returned before the unit was active")
            self.fleetctl("destroy", os.path.basename(p))
        self.wait_none_active("bs*.service")
        return out

    def nb_start(self, runs: int) -> list[float]:
        out = []
        for i, p in enumerate(self.unit_files("nb", runs)):
            self.fleetctl("start", "--no-block", p)
            returned = time.monotonic()
            (_, at), = self.wait_active(f"nb{i:03d}.service", 1).values()
            out.append(max(0.0, at - returned) * 1000)
            self.fleetctl("destroy", os.path.basename(p))
        self.wait_none_active("nb*.service")
        return out

    def start_destroy_100(self, runs: int) -> tuple[list[float], list[float]]:
        starts, destroys = [], []
        for r in range(runs):
            prefix = f"s{r}x"
            paths = self.unit_files(prefix, 100)
            t0 = time.monotonic()
            self.fleetctl("start", "--no-block", *paths)
            got = self.wait_active(f"{prefix}*.service", 100)
            starts.append(max(at for _, at in got.values()) - t0)
            names = [os.path.basename(p) for p in paths]
            t0 = time.monotonic()
            self.fleetctl("destroy", *names)
            polled = self.wait_none_active(f"{prefix}*.service") - t0
            destroys.append(self.stopped_at(names, t0) - t0)
            self.log(f"  100 units {r}: all active {starts[-1]:.3f} s; destroyed: last stop "
                     f"{destroys[-1]:.3f} s (the poll saw none active at {polled:.3f} s)")
        return starts, destroys

    def failover(self, runs: int) -> tuple[list[float], list[float]]:
        """Power cut of the machine running the unit -> active elsewhere (systemd's clock);
        and -> no row of the dead machine left in `fleetctl list-units`."""
        fails, ghosts = [], []
        for r in range(runs):
            name = f"fo{r}.service"
            p = os.path.join(self.tmp, name)
            with open(p, "w") as f:
                f.write(UNIT)
            self.fleetctl("start", p)
            (victim, _), = self.wait_active(name, 1).values()
            mid = self.lab.machine(self.lab.load(), victim).machine_id
            others = [m for m in self.running() if m != victim]
            # fleetctl asks a machine that stays up, as a user of the cluster would
            self.env["FLEETCTL_ENDPOINT"] = self.lab.machine(self.lab.load(), others[0]).endpoint
            t0 = time.monotonic()
            self.lab.stop(victim)
            ghost_gone = None
            deadline = t0 + 120
            while ghost_gone is None:
                rows = self.fleetctl("list-units", "--no-legend", "-l", "--fields",
                                     "unit,machine").stdout
                if mid not in rows:
                    ghost_gone = time.monotonic()
                elif time.monotonic() > deadline:
                    raise SystemExit(f"{victim}'s rows still in list-units after 120 s")
                else:
                    time.sleep(POLL_S)
            (_, at), = self.wait_active(name, 1, machines=others).values()
            fails.append(at - t0)
            ghosts.append(ghost_gone - t0)
            self.log(f"  failover {r}: {fails[-1]:.2f} s, ghost rows gone {ghosts[-1]:.2f} s")
            self.lab.start(victim)
            self.fleetctl("destroy", name)
            self.wait_none_active(name)
        return fails, ghosts


def run(quick: bool, log: Callable[[str], None]) -> dict[str, float]:
    from fleetd.lab.lab import Lab

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    fleetctl = os.path.join(root, ".venv", "bin", "fleetctl")
    n = 5 if quick else 11
    # Byte-compiled first, as an installed package is: with PYTHONDONTWRITEBYTECODE set (or a
    # read-only tree), every run would compile each source changed since its .pyc again.
    compileall.compile_dir(os.path.join(root, "fleetctl"), quiet=1)
    compileall.compile_dir(os.path.join(root, "fleetd"), quiet=1)
    lab = Lab()
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lab.down()
        lab.up(3, {})
        try:
            b = LabBench(lab, fleetctl, log)
            res: dict[str, float] = {}
            log("lab: fleetctl version ...")
            res["lab_fleetctl_version_ms"] = statistics.median(b.version(n))
            log("lab: list-units with 100 units ...")
            res["lab_list_units_100_ms"] = statistics.median(b.list_units_100(n))
            log("lab: blocking start ...")
            res["lab_block_start_ms"] = statistics.median(b.block_start(n))
            log("lab: no-block start -> active ...")
            res["lab_nb_start_ms"] = statistics.median(b.nb_start(n))
            log("lab: 100 units start / destroy ...")
            s, d = b.start_destroy_100(5)
            res["lab_start_100_s"] = statistics.median(s)
            res["lab_destroy_100_s"] = statistics.median(d)
            log("lab: power cut failover ...")
            f, g = b.failover(3)
            res["lab_failover_s"] = statistics.median(f)
            res["lab_ghost_rows_s"] = statistics.median(g)
            res.update(b.log_counts())
            return {k: round(v, 3) for k, v in res.items()}
        finally:
            lab.down()
