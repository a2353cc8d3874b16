"""The pure rules of the dashboard: what `fleetctl dashboard` listens on and forwards, where it
finds fleetd's HTTP listener, and the JSON the page gets for each Watch event."""

from __future__ import annotations

import json

import pytest

from fleetctl.client import FleetctlError
from fleetctl.dashboard import check_listen, forwarded, http_upstream
from fleetd.api.pb import fleet_pb2 as pb
from fleetd.dashboard._server import event_json, sse

GLOBAL = "is_global" if "is_global" in pb.Unit.DESCRIPTOR.fields_by_name else "global"


@pytest.mark.parametrize(("listen", "expected"), [
    ("127.0.0.1:8089", ("127.0.0.1", 8089)),
    ("127.8.9.10:0", ("127.8.9.10", 0)),
    ("localhost:8089", ("localhost", 8089)),
    ("[::1]:8089", ("::1", 8089)),
])
def test_loopback_listen_addresses_are_accepted(listen: str, expected: tuple[str, int]) -> None:
    assert check_listen(listen, force=False) == expected


@pytest.mark.parametrize("listen", ["0.0.0.0:8089", "[::]:8089", ":8089", "10.77.0.1:8089",
                                    "192.168.1.2:80", "example.com:8089", "[::ffff:10.0.0.1]:1"])
def test_other_listen_addresses_are_refused_unless_forced(listen: str) -> None:
    with pytest.raises(FleetctlError, match="not a loopback address") as e:
        check_listen(listen, force=False)
    assert e.value.exit_code == 2
    assert check_listen(listen, force=True)[1] in (8089, 80, 1)


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:", "127.0.0.1:http",
                                    "127.0.0.1:65536", "127.0.0.1:-1"])
def test_malformed_listen_addresses_are_refused_even_when_forced(listen: str) -> None:
    with pytest.raises(FleetctlError, match="is not host:port"):
        check_listen(listen, force=True)


@pytest.mark.parametrize(("path", "forwards"), [
    ("/dashboard", True), ("/dashboard/", True), ("/dashboard/static/app.js", True),
    ("/dashboard/api/events", True), ("/dashboard/api/units/a@1.service/journal", True),
    ("/fleet/v1", True), ("/fleet/v1/units", True), ("/fleet/v1/units/hello.service", True),
    ("/", False), ("/v1-alpha/units", False), ("/fleet/v2/units", False),
    ("/fleet/v1x", False), ("/dashboardx", False), ("/metrics", False),
    ("/dashboard/../v1-alpha/units", False), ("/fleet/v1/./units", False),
    ("/dashboard//static/app.js", False), ("//dashboard/", False),
    ("/dashboard/..", False), ("/dashboard\\..\\x", False), ("/dashboard/\x00", False),
])
def test_only_the_dashboard_and_the_api_are_forwarded(path: str, forwards: bool) -> None:
    assert forwarded(path) is forwards


def test_http_endpoint_comes_from_the_flag_then_the_environment_then_the_default_socket(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLEET_HTTP_ENDPOINT", "https://10.77.0.11:49153/")
    assert http_upstream("10.77.0.11:9810", "https://h:1") == "https://h:1"
    assert http_upstream("10.77.0.11:9810") == "https://10.77.0.11:49153"
    monkeypatch.delenv("FLEET_HTTP_ENDPOINT")
    assert http_upstream("unix:///var/run/fleet-py.sock") == "unix:///var/run/fleet.sock"
    assert http_upstream("/var/run/fleet-py.sock") == "unix:///var/run/fleet.sock"
    assert http_upstream("", "/tmp/x/http.sock") == "unix:///tmp/x/http.sock"
    with pytest.raises(FleetctlError, match="--http-endpoint") as e:
        http_upstream("10.77.0.11:9810")
    assert e.value.exit_code == 2


@pytest.mark.parametrize("bad", ["ftp://h:1", "https://h:1/fleet/v1", "h:1", "unix://"])
def test_malformed_http_endpoints_are_refused(bad: str) -> None:
    with pytest.raises(FleetctlError, match="expected https://host:port"):
        http_upstream("", bad)


def test_watch_events_become_the_pages_json() -> None:
    k = pb.WatchEvent
    snap = pb.WatchEvent(kind=k.SNAPSHOT, revision=7, snapshot=pb.Snapshot(
        machines=[pb.Machine(id="m1", ip="10.0.0.1", metadata={"a": "b"}, hostname="h1",
                             engine_leader=True, state="draining", cpu_milli=4000,
                             host_reserved_cpu_milli=500, memory_bytes=8 << 30,
                             host_reserved_memory_bytes=1 << 30, reserved_cpu_milli=1500,
                             reserved_memory_bytes=2 << 30)],
        units=[pb.Unit(name="u.service", hash="ab", desired_state="launched",
                       current_state="launched", machine_ids=["m1"], **{GLOBAL: True})],
        states=[pb.UnitState(name="u.service", machine_id="m1", active_state="active",
                             sub_state="running", main_pid=42)]))
    got = event_json(snap)
    assert got["kind"] == "snapshot" and got["revision"] == 7
    # capacity as units see it: the host's reserve taken off
    assert got["machines"][0] == {"id": "m1", "ip": "10.0.0.1", "metadata": {"a": "b"},
                                  "hostname": "h1", "version": "", "engine_leader": True,
                                  "state": "draining", "cpu_milli": 3500,
                                  "memory_bytes": 7 << 30, "reserved_cpu_milli": 1500,
                                  "reserved_memory_bytes": 2 << 30}
    bare = event_json(pb.WatchEvent(kind=k.MACHINE_PUT, machine=pb.Machine(id="m2")))
    assert bare["machine"]["state"] == "active" and bare["machine"]["cpu_milli"] == 0
    assert got["units"][0]["global"] is True and got["units"][0]["machine_ids"] == ["m1"]
    assert got["states"][0]["main_pid"] == 42
    table = [
        (pb.WatchEvent(kind=k.MACHINE_DELETED, revision=8, machine_id="m1"),
         {"kind": "machine_deleted", "revision": 8, "machine_id": "m1"}),
        (pb.WatchEvent(kind=k.UNIT_DELETED, revision=9, name="u.service"),
         {"kind": "unit_deleted", "revision": 9, "name": "u.service"}),
        (pb.WatchEvent(kind=k.STATE_DELETED, revision=10, name="u.service", machine_id="m1"),
         {"kind": "state_deleted", "revision": 10, "name": "u.service", "machine_id": "m1"}),
    ]
    for ev, expected in table:
        assert event_json(ev) == expected
    assert event_json(pb.WatchEvent(kind=k.UNIT_PUT, revision=3, unit=pb.Unit(
        name="x.service")))["unit"]["name"] == "x.service"


def test_server_sent_events_carry_the_revision_as_their_id() -> None:
    assert sse({"kind": "ping"}) == b'data: {"kind":"ping"}\n\n'
    raw = sse({"kind": "unit_deleted", "name": "a\nb"}, 12).decode()
    head, data = raw.split("\n", 1)
    assert head == "id: 12" and data.endswith("\n\n")
    assert json.loads(data[len("data: "):])["name"] == "a\nb"  # one line: newlines escaped
