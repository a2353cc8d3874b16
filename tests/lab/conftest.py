"""The nspawn lab, driven only through the `fleet-lab` and `fleetctl` commands, as a user would.

One lab per module (`fleet-lab up`, `fleet-lab down` at the end). Runs as root in CI; nothing
here is skipped. Concurrent test runs on one host take turns through a lock file, since a lab
owns fixed host names (bridge flab0, 10.77.0.0/24, /var/lib/fleet-lab).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness import wait
from tests.harness.tables import table_rows

#: tests.harness.wait.wait_until at the lab's pace: each poll runs fleetctl or fleet-lab.
wait_until = functools.partial(wait.wait_until, interval_s=0.2)
holds_for = wait.holds_for
REPO = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(sys.prefix) / "bin"
LOCK = "/run/lock/fleet-lab-tests.lock"
FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures" / "units"


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


def holders(unit: str) -> list[str]:
    """Machine names where fleetctl list-units shows `unit` active."""
    ids = [r["machine"] for r in list_units(fail_on_double=False)
           if r["unit"] == unit and r["active"] == "active"]
    return [name_of(i) for i in ids]


def is_active(name: str, unit: str) -> bool:
    """Ground truth from the machine's own systemd."""
    r = lab("exec", name, "--", "systemctl", "is-active", unit, check=False)
    return r.stdout.strip() == "active"


def active_on(unit: str) -> list[str]:
    """Machines (running or partitioned) whose systemd runs `unit`."""
    return [m["name"] for m in machines()
            if m["state"] != "stopped" and is_active(m["name"], unit)]


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


@pytest.fixture(scope="session", autouse=True)
def _require_root() -> None:
    assert os.geteuid() == 0, "the lab tests boot systemd-nspawn containers and need root"


@contextlib.contextmanager
def running_lab(n: int = 3, metadata: dict[str, str] | None = None) -> Iterator[None]:
    """Hold the lab lock, `fleet-lab up` n machines (metadata: name -> "k=v,k=v"), and
    `fleet-lab down` at the end."""
    lock = open(LOCK, "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        lab("down")
        args = ["up", "--machines", str(n)]
        for name, md in (metadata or {}).items():
            args += ["--metadata", f"{name}:{md}"]
        t0 = time.monotonic()
        lab(*args, timeout_s=180)
        print(f"fleet-lab up ({n} machines) took {time.monotonic() - t0:.1f}s")
        wait_machines(n)
        yield
    finally:
        lab("down", check=False)
        lock.close()


def module_lab(n: int = 3, metadata: dict[str, str] | None = None, *, name: str = "_lab",
               autouse: bool = True) -> Callable[[], Iterator[None]]:
    """A module-scoped fixture running the lab (n machines, all registered) for one module:
    `_lab = module_lab(4, {...})` at module level (autouse), or, with a name and
    autouse=False, a fixture modules ask for with `usefixtures`."""
    def _lab() -> Iterator[None]:
        with running_lab(n, metadata):
            yield
    return pytest.fixture(scope="module", autouse=autouse, name=name)(_lab)  # type: ignore


#: Three machines, m2 with metadata (`pytestmark = pytest.mark.usefixtures("lab_up")`).
lab_up = module_lab(3, {"m2": "region=us-east,disk=ssd"}, name="lab_up", autouse=False)


@pytest.fixture
def reset_after() -> Iterator[None]:
    """After each test: every machine running with fleetd up and registered, no units
    (`pytestmark = pytest.mark.usefixtures("reset_after")`, or call reset_cluster() from a
    module's own fixture that undoes more first)."""
    yield
    reset_cluster()


# ---------------------------------------------------------------------------------------------
# fleet's functional-test vocabulary (functional/platform: WaitForNMachines,
# WaitForNActiveUnits, WaitForNUnitFiles, ActiveToSingleStates), as fleetctl shows it

def fixture(name: str) -> str:
    """Path of a unit file under tests/lab/fixtures/units (an instance name may have only
    its template on disk, as in fleet's fixtures)."""
    return str(FIXTURES / name)


def machine_ids() -> dict[str, str]:
    """Lab machine name -> machine id."""
    return {m["name"]: m["machine_id"] for m in machines()}


def listed_machines() -> list[str]:
    """Machine ids in `fleetctl list-machines`."""
    r = fleetctl("list-machines", "--no-legend", "-l", "--fields", "machine", check=False)
    return r.stdout.split() if r.returncode == 0 else []


def wait_machines(n: int, timeout_s: float = 60) -> list[str]:
    return wait_until(lambda: (lambda ms: ms if len(ms) == n else None)(listed_machines()),
                      timeout_s, what=f"{n} machines in list-machines")


def list_units(*, fail_on_double: bool = True) -> list[dict[str, str]]:
    """`fleetctl list-units` rows (unit, machine id, active, sub); none if fleetctl fails.
    Fails the test at once if fleetctl reports a non-global unit active on two machines (its
    exit code 2), unless `fail_on_double` is off (a fault test's own sampler judges that)."""
    r = fleetctl("list-units", "--no-legend", "-l", "--fields", "unit,machine,active,sub",
                 check=False)
    assert not fail_on_double or r.returncode != 2, f"a unit runs twice:\n{r.stdout}{r.stderr}"
    return table_rows(r.stdout, ["unit", "machine", "active", "sub"]) if r.returncode == 0 else []


def active_units() -> dict[str, list[str]]:
    """unit -> machine ids where list-units shows it active."""
    out: dict[str, list[str]] = {}
    for r in list_units():
        if r["active"] == "active":
            out.setdefault(r["unit"], []).append(r["machine"])
    return out


def wait_active(n: int, timeout_s: float = 30) -> dict[str, list[str]]:
    """Wait until exactly n (unit, machine) rows of list-units are active, as fleet's
    WaitForNActiveUnits; return unit -> machine ids."""
    seen: list[dict[str, list[str]]] = [{}]

    def check() -> dict[str, list[str]] | None:
        seen[0] = a = active_units()
        return a if sum(len(v) for v in a.values()) == n else None
    try:
        if n == 0:
            wait_until(lambda: not check() and not seen[0], timeout_s, what="no active units")
            return {}
        return wait_until(check, timeout_s, what=f"{n} active units")
    except AssertionError as e:
        raise AssertionError(f"{e}; last seen active: {seen[0]}") from None


def single(active: dict[str, list[str]]) -> dict[str, str]:
    """unit -> its one machine id (fleet's ActiveToSingleStates)."""
    for unit, ms in active.items():
        assert len(ms) == 1, f"{unit} active on {ms}"
    return {u: ms[0] for u, ms in active.items()}


def wait_units(n: int, timeout_s: float = 30) -> list[dict[str, str]]:
    """Wait until list-units shows exactly n rows (fleet's WaitForNUnits)."""
    def check() -> list[dict[str, str]] | None:
        rows = list_units()
        return rows if len(rows) == n else None
    if n == 0:
        wait_until(lambda: not list_units(), timeout_s, what="no units in list-units")
        return []
    return wait_until(check, timeout_s, what=f"{n} units in list-units")


def unit_files() -> dict[str, dict[str, str]]:
    """`fleetctl list-unit-files`: unit -> {dstate, state, target (machine id, "global" or
    "-")}."""
    r = fleetctl("list-unit-files", "--no-legend", "-l", "--fields", "unit,dstate,state,target")
    return {row.pop("unit"): row
            for row in table_rows(r.stdout, ["unit", "dstate", "state", "target"])}


def wait_unit_files(n: int, timeout_s: float = 30) -> dict[str, dict[str, str]]:
    def check() -> dict[str, dict[str, str]] | None:
        uf = unit_files()
        return uf if len(uf) == n else None
    if n == 0:
        wait_until(lambda: not unit_files(), timeout_s, what="no unit files")
        return {}
    return wait_until(check, timeout_s, what=f"{n} unit files")


def show(name: str, unit: str, prop: str) -> str:
    """`systemctl show -p PROP --value UNIT` inside machine `name`."""
    return lab("exec", name, "--", "systemctl", "show", "-p", prop, "--value", unit,
               check=False).stdout.strip()


def ensure_fleetd() -> None:
    """Thaw fleetd where a test froze it, start it again where a test stopped it."""
    for m in machines():
        if m["state"] != "running":
            continue
        lab("exec", m["name"], "--", "systemctl", "kill", "-s", "CONT", "fleetd", check=False)
        if show(m["name"], "fleetd.service", "ActiveState") != "active":
            lab("exec", m["name"], "--", "systemctl", "reset-failed", "fleetd", check=False)
            lab("exec", m["name"], "--", "systemctl", "start", "fleetd", check=False)


def destroy_all() -> None:
    """Destroy every unit in the cluster and wait until none is listed or active anywhere."""
    r = fleetctl("list-unit-files", "--no-legend", "--fields", "unit", check=False)
    names = r.stdout.split()
    if names:
        fleetctl("destroy", *names, check=False)
    wait_until(lambda: not unit_files() and not list_units(), 60, what="every unit destroyed")


def restore() -> None:
    """Bring every machine back (heal partitions, start stopped machines, thaw or start
    fleetd) and wait until all are registered."""
    for m in machines():
        if m["state"] == "partitioned":
            lab("heal", m["name"])
        elif m["state"] == "stopped":
            lab("start", m["name"])
    ensure_fleetd()
    wait_machines(len(machines()))


def reset_cluster() -> None:
    """Between tests: every machine running with fleetd up and registered, no units."""
    restore()
    destroy_all()


@pytest.fixture
def units_dir() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="lab-units-") as d:
        yield pathlib.Path(d)


def only_holder(unit: str, timeout_s: float = 60, exclude: str | None = None) -> str:
    """Wait until fleetctl shows `unit` active on exactly one machine (other than
    `exclude`) and that machine's systemd agrees; return its name."""
    def check() -> str | None:
        h = holders(unit)
        if len(h) == 1 and h[0] != exclude and is_active(h[0], unit):
            return h[0]
        return None
    return wait_until(check, timeout_s, what=f"{unit} active on one machine"
                      + (f" other than {exclude}" if exclude else ""))
