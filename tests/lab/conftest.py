"""The nspawn lab, driven only through the `fleet-lab` and `fleetctl` commands, as a user would.

One lab per module (`fleet-lab up`, `fleet-lab down` at the end). Runs as root in CI; nothing
here is skipped. Concurrent test runs on one host take turns through a lock file, since a lab
owns fixed host names (bridge flab0, 10.77.0.0/24, /var/lib/fleet-lab).
"""

from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

T = TypeVar("T")
REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.prefix) / "bin"
LOCK = "/run/lock/fleet-lab-tests.lock"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/lab" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def lab(*args: str, check: bool = True, timeout_s: float = 120
        ) -> subprocess.CompletedProcess[str]:
    exe = BIN / "fleet-lab"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fleetd.lab"]
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout_s)
    if check and r.returncode != 0:
        raise AssertionError(f"fleet-lab {' '.join(args)} failed ({r.returncode}):\n"
                             f"{r.stdout}{r.stderr}")
    return r


def lab_env() -> dict[str, str]:
    out = {}
    for line in lab("env").stdout.splitlines():
        assert line.startswith("export "), line
        k, _, v = line[len("export "):].partition("=")
        out[k] = v
    return out


def fleetctl(*args: str, check: bool = True, timeout_s: float = 60
             ) -> subprocess.CompletedProcess[str]:
    exe = BIN / "fleetctl"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fleetctl"]
    env = {**os.environ, **lab_env()}
    r = subprocess.run([*cmd, *args], capture_output=True, text=True, env=env,
                       timeout=timeout_s)
    if check and r.returncode != 0:
        raise AssertionError(f"fleetctl {' '.join(args)} failed ({r.returncode}):\n"
                             f"{r.stdout}{r.stderr}")
    return r


def machines() -> list[dict[str, str]]:
    return list(json.loads(lab("machines", "--json").stdout))


def name_of(machine_id: str) -> str:
    for m in machines():
        if m["machine_id"] == machine_id:
            return m["name"]
    raise AssertionError(f"no lab machine has id {machine_id}")


def unit_rows() -> list[dict[str, str]]:
    """`fleetctl list-units -l`: unit, machine id, active, sub per row."""
    r = fleetctl("list-units", "--no-legend", "-l", "--fields", "unit,machine,active,sub",
                 check=False)
    if r.returncode != 0:
        return []
    rows = []
    for line in r.stdout.splitlines():
        unit, machine, active, sub = line.split()
        rows.append({"unit": unit, "machine": machine.split("/")[0], "active": active,
                     "sub": sub})
    return rows


def holders(unit: str) -> list[str]:
    """Machine names where fleetctl list-units shows `unit` active."""
    ids = [r["machine"] for r in unit_rows() if r["unit"] == unit and r["active"] == "active"]
    return [name_of(i) for i in ids]


def is_active(name: str, unit: str) -> bool:
    """Ground truth from the machine's own systemd."""
    r = lab("exec", name, "--", "systemctl", "is-active", unit, check=False)
    return r.stdout.strip() == "active"


def active_on(unit: str) -> list[str]:
    """Machines (running or partitioned) whose systemd runs `unit`."""
    return [m["name"] for m in machines()
            if m["state"] != "stopped" and is_active(m["name"], unit)]


def wait_until(fn: Callable[[], T], timeout_s: float = 60, interval_s: float = 0.2,
               what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    last = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)
        last = fn()
    return last


def write_unit(tmp: pathlib.Path, name: str, body: str = "", xfleet: str = "") -> str:
    path = tmp / name
    text = (f"[Unit]\nDescription=lab test unit {name}\n{body}\n"
            "[Service]\nExecStart=/bin/sleep infinity\n")
    if xfleet:
        text += f"\n[X-Fleet]\n{xfleet}\n"
    path.write_text(text)
    return str(path)


def all_running() -> bool:
    return all(m["state"] == "running" for m in machines())


def restore() -> None:
    """Bring every machine back (heal partitions, start stopped machines)."""
    for m in machines():
        if m["state"] == "partitioned":
            lab("heal", m["name"])
        elif m["state"] == "stopped":
            lab("start", m["name"])
    n = len(machines())
    wait_until(lambda: len(fleetctl("list-machines", "--no-legend", check=False)
                           .stdout.splitlines()) == n, 60, what=f"{n} machines registered")


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    assert os.geteuid() == 0, "the lab tests boot systemd-nspawn containers and need root"


@pytest.fixture(scope="module")
def lab_up() -> Iterator[None]:
    """`fleet-lab up` for three machines (m2 with metadata); `fleet-lab down` afterwards."""
    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        lab("down")
        lab("up", "--machines", "3", "--metadata", "m2:region=us-east,disk=ssd")
        yield
    finally:
        lab("down", check=False)
        lock.close()


@pytest.fixture
def units_dir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="lab-units-") as d:
        yield pathlib.Path(d)
