"""examples/dashboard.py, the Watch-fed dashboard, sees a unit go from launched to destroyed."""

from __future__ import annotations

import os
import pathlib
import queue
import subprocess
import sys
import threading
import time

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import UNITS_DIR

DASHBOARD = pathlib.Path(__file__).resolve().parents[2] / "examples" / "dashboard.py"


def test_dashboard_sees_a_unit_launched_then_destroyed(cluster: LocalCluster) -> None:
    env = {**os.environ, "FLEETCTL_ENDPOINT": cluster.endpoint(),
           "PYTHONPATH": str(DASHBOARD.parents[1])}
    proc = subprocess.Popen([sys.executable, str(DASHBOARD), "--events"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()

    def wait_for(prefix: str, timeout_s: float = 15) -> list[str]:
        seen = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            seen.append(line)
            if line.startswith(prefix):
                return seen
        raise AssertionError(f"dashboard never printed {prefix!r}; printed {seen}")

    try:
        first = wait_for("snapshot")
        assert "machines=3" in first[-1]
        cluster.fleetctl("start", str(UNITS_DIR / "hello.service"), check=True)
        wait_for("unit hello.service desired=launched current=launched")
        wait_for("state hello.service on ")
        cluster.fleetctl("destroy", "hello.service", check=True)
        wait_for("unit hello.service destroyed")
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)
