"""Forwarding of unit status and journal between real fleetds: no loops, no leftovers.

A forwarded call is answered by the machine it was forwarded to or refused, never forwarded
again (a machine publishing a wrong API address used to make fleetd forward to itself until the
deadline); and a `journal -f` client that vanishes without closing its connection (frozen,
powered off) ends the serving machine's journalctl within seconds (HTTP/2 keepalive).
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import machines_running, wait_until


@pytest.fixture(scope="module")
def cluster2() -> Iterator[LocalCluster]:
    """Two machines; m2 advertises m1's API address (a misconfigured api_advertise)."""
    c = LocalCluster(2, agent_ttl_s=4)
    m1, m2 = c.machines
    env = m2.fleetd_env
    m2.fleetd_env = lambda: {**env(), "FLEET_API_ADVERTISE": m1.api_tcp}  # type: ignore
    c.start()
    yield c
    c.cleanup()


def write_unit(name: str, machine_id: str) -> str:
    d = pathlib.Path(tempfile.mkdtemp(prefix="ffw-"))
    (d / name).write_text("[Service]\nExecStart=/bin/sh -c 'while :; do echo tick; sleep 1; "
                          f"done'\n\n[X-Fleet]\nMachineID={machine_id}\n")
    return str(d / name)


def journalctls(unit: str) -> list[int]:
    """PIDs of every journalctl process reading `unit`'s journal, on any machine."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            argv = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"journalctl") and unit.encode() in argv:
            out.append(int(pid))
    return out


def test_a_call_forwarded_to_the_wrong_machine_is_refused_not_forwarded_again(
        cluster2: LocalCluster) -> None:
    c = cluster2
    m1, m2 = c.machines
    c.fleetctl("start", write_unit("loop.service", m2.machine_id), check=True)
    wait_until(lambda: machines_running(c, "loop.service") == [m2.machine_id],
               what="loop.service running on m2")
    t0 = time.monotonic()
    r = c.fleetctl("status", "loop.service", endpoint=m1.endpoint, timeout_s=30)
    took = time.monotonic() - t0
    assert r.returncode != 0
    assert (f"forwarded by machine {m1.machine_id} to machine {m2.machine_id} reached machine "
            f"{m1.machine_id}") in r.stderr, r.stderr
    assert took < 5, f"refusal took {took:.1f}s"
    c.fleetctl("destroy", "loop.service", check=True)


def test_a_vanished_journal_follower_ends_journalctl_on_the_serving_machine(
        cluster2: LocalCluster) -> None:
    c = cluster2
    m1, m2 = c.machines
    # journal -f through m2's API of a unit on m1: m2 forwards to m1 (whose address is right)
    c.fleetctl("start", write_unit("tail.service", m1.machine_id), check=True)
    wait_until(lambda: machines_running(c, "tail.service") == [m1.machine_id],
               what="tail.service running on m1")
    env = {**os.environ, "FLEETCTL_ENDPOINT": m2.endpoint, **c.fleetctl_tls_env()}
    follower = subprocess.Popen([sys.executable, "-m", "fleetctl", "journal", "-f",
                                 "tail.service"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert follower.stdout is not None
        follower.stdout.readline()  # the journal flows
        assert journalctls("tail.service"), "no journalctl serving the follower"
        # frozen: its connection stays open, but it answers nothing (as a powered-off laptop)
        follower.send_signal(signal.SIGSTOP)
        t0 = time.monotonic()
        wait_until(lambda: not journalctls("tail.service"), 30, 0.2,
                   what="journalctl to end after its follower vanished")
        print(f"journalctl ended {time.monotonic() - t0:.1f}s after the follower froze")
    finally:
        follower.kill()
        follower.wait()
    c.fleetctl("destroy", "tail.service", check=True)
