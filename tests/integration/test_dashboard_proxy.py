"""`fleetctl dashboard`'s proxy and fleetd's dashboard endpoints, through real sockets.

Two local machines (real etcd, real `systemd --user` managers, real fleetds) serving the HTTP
API on TCP with mutual TLS; the proxy (`python -m fleetctl.dashboard`, the module `fleetctl
dashboard` runs) forwards to machine 1 with fleetctl's client certificate. No browser: raw
HTTP, so what the proxy forwards and refuses is seen exactly (tests/lab/test_dashboard.py
drives a real browser on the nspawn lab).
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from fleetd.localcluster import LocalCluster, LocalMachine, free_port
from tests.integration.conftest import machines_running, wait_until

PROXY_START_S = 20


def _serve_http_tcp(m: LocalMachine) -> None:
    """Make machine `m`'s fleetd also serve the HTTP API on TCP (mutual TLS, its own cert)."""
    m.http_tcp = f"{m.ip}:{free_port()}"  # type: ignore[attr-defined]
    env = m.fleetd_env
    m.fleetd_env = lambda: {**env(), "FLEET_HTTP_TCP": m.http_tcp}  # type: ignore[method-assign,attr-defined]


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    c = LocalCluster(2, metadata=[{"role": "front"}, {"role": "back"}], agent_ttl_s=4)
    for m in c.machines:
        _serve_http_tcp(m)
    c.start()
    yield c
    c.cleanup()


class Proxy:
    def __init__(self, proc: subprocess.Popen[str], url: str) -> None:
        self.proc = proc
        self.url = url
        self.host, _, port = url.split("/")[2].rpartition(":")
        self.port = int(port)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, _, data = self.request(method, path, None if body is None else
                                       json.dumps(body).encode(),
                                       {"Content-Type": "application/json"})
        return status, json.loads(data) if data else None


def dashboard_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetctl.dashboard", *args]


def start_proxy(c: LocalCluster, *args: str) -> Proxy:
    m1 = c.machines[0]
    env = {**os.environ, **c.fleetctl_tls_env(), "FLEETCTL_ENDPOINT": m1.api_tcp,
           "FLEET_HTTP_ENDPOINT": "https://" + m1.http_tcp}  # type: ignore[attr-defined]
    proc = subprocess.Popen(dashboard_argv(*args), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # "Dashboard: URL" once it listens
    if not line.startswith("Dashboard: "):
        proc.kill()
        raise AssertionError(f"proxy did not start: {line}{proc.communicate()[1]}")
    return Proxy(proc, line.split()[-1])


@pytest.fixture(scope="module")
def proxy(cluster: LocalCluster) -> Iterator[Proxy]:
    p = start_proxy(cluster, "--listen", "127.0.0.1:0")
    yield p
    p.proc.terminate()
    assert p.proc.wait(10) == 0


class EventStream:
    """An open SSE stream, read event by event."""

    def __init__(self, proxy: Proxy, path: str, headers: dict[str, str] | None = None) -> None:
        self.conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=20)
        self.conn.request("GET", path, headers=headers or {})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()
        assert self.resp.getheader("Content-Type", "").startswith("text/event-stream")

    def next(self, leases: bool = False) -> tuple[str, dict[str, Any]]:
        """(id, data) of the next event with data; the feed's "leases" samples (about one a
        second, in between any others) only if `leases`."""
        event_id, data = "", ""
        while True:
            line = self.resp.readline().decode()
            assert line, "the event stream ended"
            line = line.rstrip("\n")
            if line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data = line[6:]
            elif not line and data:
                ev = json.loads(data)
                if leases or ev.get("kind") != "leases":
                    return event_id, ev
                event_id, data = "", ""

    def until(self, pred: Any, limit: int = 200, leases: bool = False
              ) -> tuple[str, dict[str, Any]]:
        seen = []
        for _ in range(limit):
            eid, ev = self.next(leases)
            seen.append(ev.get("kind"))
            if pred(ev):
                return eid, ev
        raise AssertionError(f"no matching event among {seen}")

    def close(self) -> None:
        self.conn.close()


def unit_file(tmp: pathlib.Path, name: str, machine_id: str, line: str = "tick") -> str:
    path = tmp / name
    path.write_text(f"[Unit]\nDescription=dashboard test {name}\n\n[Service]\n"
                    f"ExecStart=/bin/sh -c 'while true; do echo {line}; sleep 1; done'\n\n"
                    f"[X-Fleet]\nMachineID={machine_id}\n")
    return str(path)


@pytest.fixture
def tmp_units() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="dash-units-") as d:
        yield pathlib.Path(d)


# --- where the proxy listens ---------------------------------------------------------------
@pytest.mark.parametrize("listen", ["0.0.0.0:{port}", "[::]:{port}", "10.1.2.3:{port}",
                                    "example.com:{port}", ":{port}"])
def test_proxy_refuses_a_non_loopback_listen_address(cluster: LocalCluster, listen: str) -> None:
    port = free_port()
    m1 = cluster.machines[0]
    r = subprocess.run(dashboard_argv("--listen", listen.format(port=port), "--http-endpoint",
                                      "https://" + m1.http_tcp),  # type: ignore[attr-defined]
                       env={**os.environ, **cluster.fleetctl_tls_env()},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, r
    assert "not a loopback address" in r.stderr and "--force" in r.stderr, r.stderr
    assert r.stdout == ""
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 2):
        pass


def test_proxy_listens_on_a_non_loopback_address_when_forced(cluster: LocalCluster) -> None:
    p = start_proxy(cluster, "--listen", "0.0.0.0:0", "--force")
    try:
        assert p.url.endswith("/dashboard/")
        status, _, body = p.request("GET", "/dashboard/")
        assert status == 200 and b"fleet-py dashboard" in body
    finally:
        p.proc.terminate()
        p.proc.wait(10)


def test_proxy_refuses_a_malformed_listen_address_and_an_unknown_http_endpoint(
        cluster: LocalCluster) -> None:
    r = subprocess.run(dashboard_argv("--listen", "127.0.0.1"), capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2 and "is not host:port" in r.stderr, r.stderr
    env = {k: v for k, v in os.environ.items() if k != "FLEET_HTTP_ENDPOINT"}
    r = subprocess.run(dashboard_argv("--endpoint", cluster.machines[0].api_tcp),
                       env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "--http-endpoint" in r.stderr, r.stderr


def test_proxy_without_a_client_certificate_fails_clearly(cluster: LocalCluster) -> None:
    m1 = cluster.machines[0]
    r = subprocess.run(dashboard_argv("--listen", "127.0.0.1:0", "--http-endpoint",
                                      "https://" + m1.http_tcp,  # type: ignore[attr-defined]
                                      "--ca-file", cluster.client_tls.ca_file),
                       env={k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL")},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r
    assert "cannot reach fleetd's HTTP API at https://" in r.stderr, r.stderr


# --- what it forwards ----------------------------------------------------------------------
def test_proxy_forwards_the_dashboard_and_the_api(cluster: LocalCluster, proxy: Proxy) -> None:
    status, headers, body = proxy.request("GET", "/dashboard/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'<script src="static/app.js"' in body
    assert "script-src 'self'" in headers["content-security-policy"]
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        status, headers, body = proxy.request("GET", f"/dashboard/static/{name}")
        assert status == 200 and headers["content-type"].startswith(ctype) and body
    status, headers, _ = proxy.request("GET", "/dashboard")
    assert status == 302 and headers["location"] == "/dashboard/"
    status, machines = proxy.json("GET", "/fleet/v1/machines")
    assert status == 200
    assert sorted(m["id"] for m in machines["machines"]) == sorted(
        m.machine_id for m in cluster.machines)


@pytest.mark.parametrize("path", [
    "/v1-alpha/machines",          # fleet's older API prefix: fleetd serves it, the proxy not
    "/fleet/v2/machines", "/fleet/v1x", "/dashboardx", "/metrics", "/etc/passwd",
    "/dashboard/../v1-alpha/machines", "/dashboard/%2e%2e/v1-alpha/machines",
    "/dashboard/..%2fv1-alpha/machines", "/fleet/v1/../../v1-alpha/units",
    "//v1-alpha/machines",
])
def test_proxy_forwards_nothing_but_the_dashboard_and_the_api(proxy: Proxy, path: str) -> None:
    status, headers, body = proxy.request("GET", path)
    assert status == 404, (status, body)
    assert b"fleetctl dashboard forwards only /dashboard/ and /fleet/v1/" in body
    assert "fleetd" not in headers.get("server", "")  # refused by the proxy, never sent on


def test_root_redirects_to_the_dashboard(proxy: Proxy) -> None:
    status, headers, _ = proxy.request("GET", "/")
    assert status == 302 and headers["location"] == "/dashboard/"


def test_proxy_refuses_a_foreign_host_and_a_cross_site_write(proxy: Proxy) -> None:
    status, _, body = proxy.request("GET", "/fleet/v1/machines",
                                    headers={"Host": "attacker.example:80"})
    assert status == 403 and b"is not this proxy's address" in body
    status, _, body = proxy.request("DELETE", "/fleet/v1/units/none.service",
                                    headers={"Origin": "http://attacker.example"})
    assert status == 403 and b"cross-origin DELETE" in body
    # the same write from the dashboard's own origin reaches fleetd (which has no such unit)
    status, _, body = proxy.request("DELETE", "/fleet/v1/units/none.service",
                                    headers={"Origin": proxy.url.rsplit("/dashboard/", 1)[0]})
    assert status == 404 and b"unit none.service does not exist" in body


# --- fleetd's dashboard endpoints, through the proxy ---------------------------------------
def test_event_stream_sends_a_snapshot_then_changes_and_resumes(
        cluster: LocalCluster, proxy: Proxy, tmp_units: pathlib.Path) -> None:
    m2 = cluster.machines[1]
    stream = EventStream(proxy, "/dashboard/api/events")
    try:
        _, snap = stream.next()
        assert snap["kind"] == "snapshot"
        assert sorted(m["id"] for m in snap["machines"]) == sorted(
            m.machine_id for m in cluster.machines)
        assert {m["metadata"]["role"] for m in snap["machines"]} == {"front", "back"}
        cluster.fleetctl("start", unit_file(tmp_units, "feed.service", m2.machine_id),
                         check=True)
        eid, ev = stream.until(lambda e: e["kind"] == "state_put"
                               and e["state"]["name"] == "feed.service"
                               and e["state"]["active_state"] == "active")
        assert ev["state"]["machine_id"] == m2.machine_id and int(eid) == ev["revision"]
    finally:
        stream.close()
    # Reconnect as EventSource does (Last-Event-ID): no snapshot, the changes after it.
    stream = EventStream(proxy, "/dashboard/api/events", {"Last-Event-ID": eid})
    try:
        _, first = stream.next()
        assert first == {"kind": "resumed", "revision": int(eid)}
        cluster.fleetctl("destroy", "feed.service", check=True)
        _, ev = stream.until(lambda e: e["kind"] == "unit_deleted")
        assert ev["name"] == "feed.service"
    finally:
        stream.close()
    stream = EventStream(proxy, "/dashboard/api/events")
    try:
        _, snap = stream.next()
        leaders = [m["id"] for m in snap["machines"] if m["engine_leader"]]
        _, ping = stream.until(lambda e: e["kind"] == "ping")  # within HEARTBEAT_S
        assert len(leaders) == 1 and ping["leader"] == leaders[0]
    finally:
        stream.close()
    status, body = proxy.json("GET", "/dashboard/api/events?since=abc")
    assert status == 400 and "is not a revision" in body["error"]["message"]


def test_unit_page_data_and_the_journal_of_a_unit_on_another_machine(
        cluster: LocalCluster, proxy: Proxy, tmp_units: pathlib.Path) -> None:
    m2 = cluster.machines[1]  # the proxy talks to machine 1: the journal is forwarded
    path = unit_file(tmp_units, "talk.service", m2.machine_id, line="dashboard-journal-line")
    cluster.fleetctl("start", path, check=True)
    try:
        wait_until(lambda: machines_running(cluster, "talk.service") == [m2.machine_id], 20,
                   what="talk.service active on m2")
        status, unit = proxy.json("GET", "/dashboard/api/units/talk.service")
        assert status == 200
        assert unit["text"] == pathlib.Path(path).read_text()
        assert unit["machine_ids"] == [m2.machine_id] and unit["desired_state"] == "launched"
        stream = EventStream(proxy, f"/dashboard/api/units/talk.service/journal"
                                    f"?machine={m2.machine_id}&lines=5")
        try:
            _, start = stream.next()
            assert start == {"kind": "start", "machine_id": m2.machine_id}
            _, ev = stream.until(lambda e: e["kind"] == "line"
                                 and "dashboard-journal-line" in e["text"])
            assert ev["machine_id"] == m2.machine_id
        finally:
            stream.close()
        status, body = proxy.json("GET", "/dashboard/api/units/talk.service/journal?lines=0")
        assert status == 400
        status, body = proxy.json("GET", "/dashboard/api/units/nope.service")
        assert status == 404 and "nope.service does not exist" in body["error"]["message"]
    finally:
        cluster.fleetctl("destroy", "talk.service")


def test_action_buttons_stop_restart_and_destroy_a_unit(
        cluster: LocalCluster, proxy: Proxy, tmp_units: pathlib.Path) -> None:
    m2 = cluster.machines[1]
    cluster.fleetctl("start", unit_file(tmp_units, "act.service", m2.machine_id), check=True)
    wait_until(lambda: m2.is_active("act.service"), 20, what="act.service active")
    # a form post (no JSON) is what a cross-site page could send: refused, nothing changes
    status, _, body = proxy.request("POST", "/dashboard/api/units/act.service/stop", b"x=1",
                                    {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and m2.is_active("act.service")
    status, body = proxy.json("POST", "/dashboard/api/units/act.service/bogus", {})
    assert status == 404 and "no dashboard action" in body["error"]["message"]

    pid = m2.main_pid("act.service")
    status, body = proxy.json("POST", "/dashboard/api/units/act.service/restart", {})
    assert status == 200, body
    assert [r["machine_id"] for r in body["restarted"]] == [m2.machine_id]
    assert body["restarted"][0]["exit_code"] == 0
    wait_until(lambda: m2.is_active("act.service") and m2.main_pid("act.service") != pid, 20,
               what="act.service restarted with a new main PID")

    status, body = proxy.json("POST", "/dashboard/api/units/act.service/stop", {})
    assert status == 200 and body["desired_state"] == "loaded"
    wait_until(lambda: not m2.is_active("act.service"), 20, what="act.service stopped")
    status, body = proxy.json("POST", "/dashboard/api/units/act.service/restart", {})
    assert status == 409 and "not launched" in body["error"]["message"]

    status, body = proxy.json("POST", "/dashboard/api/units/act.service/start", {})
    assert status == 200 and body["desired_state"] == "launched"
    wait_until(lambda: m2.is_active("act.service"), 20, what="act.service started again")

    status, body = proxy.json("POST", "/dashboard/api/units/act.service/destroy", {})
    assert status == 200 and body == {"name": "act.service", "destroyed": True}
    wait_until(lambda: not m2.is_active("act.service"), 20, what="act.service destroyed")
    r = cluster.fleetctl("list-unit-files", "--no-legend")
    assert "act.service" not in r.stdout


def test_rolling_restart_goes_one_machine_at_a_time_and_stops_at_the_first_failure(
        cluster: LocalCluster, proxy: Proxy, tmp_units: pathlib.Path) -> None:
    flag = tmp_units / "fail-from-now-on"
    path = tmp_units / "roll.service"
    path.write_text(f"[Service]\nExecStart=/bin/sh -c 'test -e {flag} && exit 3; exec sleep 1000'"
                    "\n\n[X-Fleet]\nGlobal=true\n")
    ms = cluster.machines
    cluster.fleetctl("start", str(path), check=True)
    try:
        wait_until(lambda: all(m.is_active("roll.service") for m in ms), 20,
                   what="roll.service active everywhere")
        wait_until(lambda: all(m.main_pid("roll.service") > 0 for m in ms), 20, what="pids")
        pids = {m.machine_id: m.main_pid("roll.service") for m in ms}
        status, body = proxy.json("POST", "/dashboard/api/units/roll.service/rolling-restart", {})
        assert status == 200, body
        order = sorted(pids)
        assert [r["machine_id"] for r in body["restarted"]] == order
        assert all(r["exit_code"] == 0 for r in body["restarted"]) and body["stopped_at"] is None
        for m in ms:  # each copy is active again with a new main PID
            assert m.is_active("roll.service") and m.main_pid("roll.service") not in (
                0, pids[m.machine_id])
        # From now on a restart fails: the rollout stops at the first machine, the rest keep
        # running untouched.
        pids = {m.machine_id: m.main_pid("roll.service") for m in ms}
        flag.write_text("")
        status, body = proxy.json("POST", "/dashboard/api/units/roll.service/rolling-restart", {})
        assert status == 200, body
        assert body["stopped_at"] == order[0]
        assert [r["machine_id"] for r in body["restarted"]] == order[:1]
        assert body["restarted"][0]["exit_code"] != 0
        rest = [m for m in ms if m.machine_id != order[0]]
        assert all(m.main_pid("roll.service") == pids[m.machine_id] for m in rest)
    finally:
        cluster.fleetctl("destroy", "roll.service")


def test_a_browser_resuming_from_compacted_history_gets_a_fresh_snapshot(
        cluster: LocalCluster, proxy: Proxy, tmp_units: pathlib.Path) -> None:
    stream = EventStream(proxy, "/dashboard/api/events")
    try:
        stream.next()
        cluster.fleetctl("submit", unit_file(tmp_units, "old.service",
                                             cluster.machines[0].machine_id), check=True)
        old_id, _ = stream.until(lambda e: e["kind"] == "unit_put"
                                 and e["unit"]["name"] == "old.service")
    finally:
        stream.close()
    cluster.fleetctl("destroy", "old.service", check=True)
    etcdctl = ["etcdctl", "--endpoints", cluster.etcd.endpoint]
    status = subprocess.run([*etcdctl, "endpoint", "status", "-w", "json"], capture_output=True,
                            text=True, check=True, env={**os.environ, "ETCDCTL_API": "3"})
    revision = json.loads(status.stdout)[0]["Status"]["header"]["revision"]
    assert revision > int(old_id)
    subprocess.run([*etcdctl, "compact", str(revision)], capture_output=True, check=True,
                   env={**os.environ, "ETCDCTL_API": "3"})
    stream = EventStream(proxy, "/dashboard/api/events", {"Last-Event-ID": old_id})
    try:
        _, first = stream.next()
        assert first["kind"] == "resumed"
        _, snap = stream.next()
        assert snap["kind"] == "snapshot" and snap["revision"] >= revision
        assert "old.service" not in {u["name"] for u in snap["units"]}
        assert len(snap["machines"]) == len(cluster.machines)
    finally:
        stream.close()


def test_proxy_stops_at_once_on_sigterm_with_an_event_stream_open(
        cluster: LocalCluster) -> None:
    p = start_proxy(cluster, "--listen", "127.0.0.1:0")
    stream = EventStream(p, "/dashboard/api/events")
    try:
        assert stream.next()[1]["kind"] == "snapshot"
        p.proc.terminate()
        assert p.proc.wait(5) == 0
    finally:
        stream.close()
        if p.proc.poll() is None:
            p.proc.kill()


def test_proxy_forwards_to_fleetds_unix_socket_listener(cluster: LocalCluster) -> None:
    m2 = cluster.machines[1]
    p = start_proxy(cluster, "--listen", "127.0.0.1:0", "--http-endpoint", m2.http_socket)
    try:
        status, machines = p.json("GET", "/fleet/v1/machines")
        assert status == 200 and len(machines["machines"]) == len(cluster.machines)
        stream = EventStream(p, "/dashboard/api/events")
        try:
            assert stream.next()[1]["kind"] == "snapshot"
        finally:
            stream.close()
    finally:
        p.proc.terminate()
        assert p.proc.wait(5) == 0


def test_api_writes_pass_through_the_proxy_and_fleetd_judges_them(
        cluster: LocalCluster, proxy: Proxy) -> None:
    opts = [{"section": "Service", "name": "ExecStart", "value": "/bin/sleep infinity"}]
    status, _ = proxy.json("PUT", "/fleet/v1/units/via-proxy.service",
                           {"desiredState": "loaded", "options": opts})
    assert status == 201
    try:
        r = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit,dstate")
        assert r.stdout.split() == ["via-proxy.service", "loaded"], r.stdout
        # a body past fleet's 1 MiB unit file limit reaches fleetd, which refuses it
        big = [{"section": "Service", "name": "Environment", "value": "X=" + "y" * 2_000_000}]
        status, body = proxy.json("PUT", "/fleet/v1/units/big.service",
                                  {"desiredState": "loaded", "options": big})
        assert status == 400 and "too large" in body["error"]["message"]
        assert "big.service" not in cluster.fleetctl("list-unit-files").stdout
    finally:
        cluster.fleetctl("destroy", "via-proxy.service")


def test_event_stream_shows_each_machines_lease_running_down_while_its_fleetd_is_frozen(
        cluster: LocalCluster, proxy: Proxy) -> None:
    """The health column: each machine's etcd lease (granted TTL, whole seconds left) arrives
    about every second; a fleetd that stops renewing shows its lease running down, the other
    machine's stays full, and a renewal fills it again."""
    m1, m2 = cluster.machines
    ttl = 4  # the module's agent_ttl_s

    def leases(ev: dict[str, Any]) -> dict[str, Any] | None:
        return ev["leases"] if ev["kind"] == "leases" else None

    stream = EventStream(proxy, "/dashboard/api/events")
    try:
        assert stream.next()[1]["kind"] == "snapshot", "the snapshot comes first"
        _, ev = stream.until(lambda e: (leases(e) or {}).keys() >= {m1.machine_id, m2.machine_id},
                             leases=True)
        for mid in (m1.machine_id, m2.machine_id):
            assert ev["leases"][mid]["ttl"] == ttl and ttl // 2 <= ev["leases"][mid]["left"] <= ttl

        m2.freeze_fleetd()
        try:
            _, ev = stream.until(lambda e: (leases(e) or {}).get(m2.machine_id, {})
                                 .get("left", ttl) <= 1, limit=60, leases=True)
        finally:
            m2.thaw_fleetd()
        assert ev["leases"][m1.machine_id]["left"] >= ttl // 2, "only the frozen one runs down"
        stream.until(lambda e: (leases(e) or {}).get(m2.machine_id, {}).get("left", 0)
                     >= ttl // 2, limit=60, leases=True)
    finally:
        stream.close()
