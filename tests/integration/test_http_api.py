"""fleet's HTTP API v1 on a real cluster, spoken as plain HTTP over each machine's unix socket
(what fleet's own clients do), including every refusal the API documents or fleet's code gave."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import stat
from typing import Any

import pytest

from fleetd.localcluster import LocalCluster
from fleetd.localcluster.cluster import free_port
from tests.integration.conftest import fleetd_log, machines_running, wait_until

JSON = {"Content-Type": "application/json"}
V1 = "/fleet/v1"


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.unix_path)
        self.sock = s


class Response:
    def __init__(self, status: int, headers: http.client.HTTPMessage, raw: bytes) -> None:
        self.status = status
        self.headers = headers
        self.raw = raw

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    def __repr__(self) -> str:
        return f"<{self.status} {self.raw[:300]!r}>"


def request(target: str | LocalCluster, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None, raw: bytes | None = None,
            tls: ssl.SSLContext | None = None) -> Response:
    """One HTTP request; `target` is a unix socket path, "tcp:host:port" (HTTPS with `tls`)
    or a cluster (its first live machine's socket)."""
    if isinstance(target, LocalCluster):
        target = next(m.http_socket for m in target.machines if m.alive)
    conn: http.client.HTTPConnection
    if target.startswith("tcp:") and tls is not None:
        host, _, port = target[4:].rpartition(":")
        conn = http.client.HTTPSConnection(host, int(port), timeout=30, context=tls)
    elif target.startswith("tcp:"):
        host, _, port = target[4:].rpartition(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
    else:
        conn = UnixHTTPConnection(target)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = dict(headers if headers is not None else (JSON if data is not None else {}))
    try:
        conn.request(method, path, body=data, headers=hdrs)
        r = conn.getresponse()
        return Response(r.status, r.headers, r.read())
    finally:
        conn.close()


def assert_error(r: Response, status: int, fragment: str = "") -> None:
    """fleet's error entity with the right status and a message (containing `fragment`)."""
    assert r.status == status, r
    assert r.headers.get_content_type() == "application/json", r.headers
    body = r.json
    assert set(body) == {"error"} and body["error"]["code"] == status, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    assert fragment.lower() in body["error"]["message"].lower(), body


def service(exec_start: str = "/bin/sleep 3000", **xfleet: str) -> list[dict[str, str]]:
    opts = [{"section": "Unit", "name": "Description", "value": "http api test"},
            {"section": "Service", "name": "ExecStart", "value": exec_start}]
    opts += [{"section": "X-Fleet", "name": k, "value": v} for k, v in xfleet.items()]
    return opts


def put_unit(c: LocalCluster, name: str, desired: str | None = None,
             options: list[dict[str, str]] | None = None) -> Response:
    body: dict[str, Any] = {}
    if desired is not None:
        body["desiredState"] = desired
    if options is not None:
        body["options"] = options
    return request(c, "PUT", f"{V1}/units/{name}", body)


def get_unit(c: LocalCluster, name: str) -> dict[str, Any]:
    r = request(c, "GET", f"{V1}/units/{name}")
    assert r.status == 200, r
    return dict(r.json)


def machines(c: LocalCluster) -> dict[str, dict[str, Any]]:
    r = request(c, "GET", f"{V1}/machines")
    assert r.status == 200, r
    return {m["id"]: m for m in r.json["machines"]}


def states(c: LocalCluster, query: str = "") -> list[dict[str, Any]]:
    r = request(c, "GET", f"{V1}/state{query}")
    assert r.status == 200, r
    return list(r.json["states"])


def patch(c: LocalCluster, ops: list[dict[str, Any]]) -> Response:
    return request(c, "PATCH", f"{V1}/machines", ops)


# --- the happy paths -------------------------------------------------------------------------
def test_socket_is_per_machine_mode_0660_and_lists_machines(cluster: LocalCluster) -> None:
    for m in cluster.machines:
        assert m.http_socket != "/var/run/fleet.sock"
        assert stat.S_IMODE(os.stat(m.http_socket).st_mode) == 0o660
        assert stat.S_ISSOCK(os.stat(m.http_socket).st_mode)
    r = request(cluster.machines[1].http_socket, "GET", f"{V1}/machines")
    assert r.status == 200 and r.headers.get_content_type() == "application/json"
    assert r.headers["Server"].startswith("fleetd/")
    assert "nextPageToken" not in r.json
    got = {m["id"]: (m["primaryIP"], m["metadata"]) for m in r.json["machines"]}
    assert got == {m.machine_id: (m.ip, m.metadata) for m in cluster.machines}
    assert [m["id"] for m in r.json["machines"]] == sorted(got)
    # fleet's older prefix answers too
    old = request(cluster, "GET", "/v1-alpha/machines")
    assert old.status == 200 and old.json == r.json


def test_discovery_document(cluster: LocalCluster) -> None:
    r = request(cluster, "GET", f"{V1}/discovery")
    assert r.status == 200 and r.headers.get_content_type() == "application/json"
    doc = r.json
    assert doc["kind"] == "discovery#restDescription" and doc["name"] == "fleet"
    assert set(doc["resources"]) == {"Machines", "Units", "UnitState"}
    assert {"Unit", "UnitOption", "UnitPage", "UnitState", "UnitStatePage", "Machine",
            "MachinePage"} <= set(doc["schemas"])


def test_unit_lifecycle(cluster: LocalCluster) -> None:
    name = "httplife.service"
    opts = service()
    r = put_unit(cluster, name, "launched", opts)
    assert r.status == 201 and r.raw == b"", r
    u = get_unit(cluster, name)
    assert u["name"] == name and u["options"] == opts and u["desiredState"] == "launched"
    u = wait_until(lambda: (x := get_unit(cluster, name))["currentState"] == "launched" and x,
                   what="currentState launched")
    mid = u["machineID"]
    assert wait_until(lambda: machines_running(cluster, name) == [mid], what="unit running")
    # its state, reported by the machine running it, under the file's hash
    st = wait_until(lambda: [s for s in states(cluster, f"?unitName={name}")
                             if s["systemdSubState"] == "running"], what="state running")
    assert st == [{"name": name, "machineID": mid, "hash": st[0]["hash"],
                   "systemdLoadState": "loaded", "systemdActiveState": "active",
                   "systemdSubState": "running"}]
    unit_file = ("[Unit]\nDescription=http api test\n\n[Service]\nExecStart=/bin/sleep 3000\n")
    assert st[0]["hash"] == hashlib.sha1(unit_file.encode()).hexdigest()
    # the gRPC front end sees the same unit (one service layer)
    r2 = cluster.fleetctl("list-unit-files", "--no-legend", "--fields", "unit,dstate")
    assert [line.split() for line in r2.stdout.splitlines() if name in line] == [
        [name, "launched"]], r2
    # listed in the collection
    listed = request(cluster, "GET", f"{V1}/units").json["units"]
    assert next(x for x in listed if x["name"] == name)["options"] == opts
    # the very same file again: nothing to create, 204
    assert put_unit(cluster, name, "launched", opts).status == 204
    # stop (launched -> loaded), then unload, via desiredState alone
    assert put_unit(cluster, name, "loaded").status == 204
    assert get_unit(cluster, name)["desiredState"] == "loaded"
    wait_until(lambda: not machines_running(cluster, name), what="unit stopped")
    assert put_unit(cluster, name, "inactive").status == 204
    wait_until(lambda: "machineID" not in get_unit(cluster, name), what="unit unscheduled")
    # the body may repeat the name
    assert request(cluster, "PUT", f"{V1}/units/{name}",
                   {"name": name, "desiredState": "launched"}).status == 204
    wait_until(lambda: machines_running(cluster, name), what="unit restarted")
    r = request(cluster, "DELETE", f"{V1}/units/{name}")
    assert r.status == 204 and r.raw == b""
    assert_error(request(cluster, "GET", f"{V1}/units/{name}"), 404, "does not exist")
    wait_until(lambda: not machines_running(cluster, name), what="destroyed unit stopped")


def test_template_and_instances(cluster: LocalCluster) -> None:
    tmpl = "httptpl@.service"
    assert put_unit(cluster, tmpl, "inactive", service("/bin/sleep 100%i")).status == 201
    assert_error(put_unit(cluster, tmpl, "launched"), 400, "cannot activate template")
    assert put_unit(cluster, "httptpl@7.service", "launched",
                    service("/bin/sleep 100%i")).status == 201
    wait_until(lambda: machines_running(cluster, "httptpl@7.service"), what="instance running")
    for n in ("httptpl@7.service", tmpl):
        assert request(cluster, "DELETE", f"{V1}/units/{n}").status == 204


def test_state_filters(cluster: LocalCluster) -> None:
    m1, m2, _ = cluster.machines
    a, b = "httpstate-a.service", "httpstate-b.service"
    assert put_unit(cluster, a, "launched", service(MachineID=m1.machine_id)).status == 201
    assert put_unit(cluster, b, "launched", service(MachineID=m2.machine_id)).status == 201
    wait_until(lambda: machines_running(cluster, a) == [m1.machine_id]
               and machines_running(cluster, b) == [m2.machine_id], what="both running")
    wait_until(lambda: {s["name"] for s in states(cluster)} >= {a, b}, what="both reported")
    mine = states(cluster, f"?machineID={m1.machine_id}")
    assert {s["machineID"] for s in mine} == {m1.machine_id}
    assert a in {s["name"] for s in mine} and b not in {s["name"] for s in mine}
    assert [s["machineID"] for s in states(cluster, f"?unitName={b}")] == [m2.machine_id]
    assert [s["name"] for s in states(cluster, f"?unitName={a}&machineID={m1.machine_id}")] \
        == [a]
    assert states(cluster, f"?unitName={a}&machineID={m2.machine_id}") == []
    assert states(cluster, "?machineID=no-such-machine") == []
    assert states(cluster, "?unitName=nope.service") == []
    one = request(cluster, "GET", f"{V1}/state/{b}")
    assert one.status == 200 and one.json["machineID"] == m2.machine_id
    assert_error(request(cluster, "GET", f"{V1}/state/nope.service"), 404, "does not exist")
    for n in (a, b):
        assert request(cluster, "DELETE", f"{V1}/units/{n}").status == 204


def _walk(cluster: LocalCluster, collection: str, key: str, query: str = "") -> list[list[Any]]:
    pages: list[list[Any]] = []
    token = None
    while True:
        q = query
        if token:
            q += ("&" if q else "?") + f"nextPageToken={token}"
        r = request(cluster, "GET", f"{V1}/{collection}{q}")
        assert r.status == 200, r
        pages.append(r.json[key])
        token = r.json.get("nextPageToken")
        if not token:
            return pages
        assert len(pages) < 20


def test_pagination_across_pages(cluster: LocalCluster) -> None:
    names = [f"httppage-{i:03d}.service" for i in range(205)]
    for n in names:
        assert put_unit(cluster, n, "inactive", service(f"/bin/sleep {n[9:12]}")).status == 201
    pages = _walk(cluster, "units", "units")
    assert len(pages) >= 3 and all(len(p) == 100 for p in pages[:-1]) and pages[-1]
    seen = [u["name"] for p in pages for u in p]
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert set(names) <= set(seen)
    # a page past the end is empty and has no token
    r = request(cluster, "GET", f"{V1}/units?nextPageToken=ZAAUAA==")  # page 20
    assert r.status == 200 and r.json == {"units": []}

    # state pages: 150 reports from a machine that does not exist (written straight to etcd)
    async def publish(delete: bool) -> None:
        from fleetd.registry import EtcdClient, Registry, UnitStateRecord
        reg = Registry(EtcdClient([cluster.etcd.endpoint]), cluster.prefix)
        try:
            if delete:
                await reg.clear_states("ghost-machine", names[:150])
            else:
                await reg.publish_states([UnitStateRecord(n, "ghost-machine", "h", "launched",
                                                          "loaded", "active", "running")
                                          for n in names[:150]], 0)
        finally:
            await reg.close()

    asyncio.run(publish(False))
    try:
        spages = _walk(cluster, "state", "states", "?machineID=ghost-machine")
        assert [len(p) for p in spages] == [100, 50]
        assert [s["name"] for p in spages for s in p] == names[:150]
    finally:
        asyncio.run(publish(True))
    for n in names:
        assert request(cluster, "DELETE", f"{V1}/units/{n}").status == 204


def test_patch_machine_metadata(cluster: LocalCluster) -> None:
    m1, m2, m3 = cluster.machines
    r = patch(cluster, [
        {"op": "add", "path": f"/{m1.machine_id}/metadata/rack", "value": "r1"},  # api-v1.md
        {"op": "add", "path": f"/{m2.machine_id}/metadata/rack",
         "value": {"value": "r2"}},  # fleet's code and clients
        {"op": "replace", "path": f"/{m1.machine_id}/metadata/region",
         "value": {"value": "eu-north"}},
        {"op": "remove", "path": f"/{m3.machine_id}/metadata/disk"},  # a configured key
        {"op": "add", "path": "/not-registered-yet/metadata/role", "value": "spare"},
    ])
    assert r.status == 204 and r.raw == b"", r
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.headers
    got = machines(cluster)
    assert got[m1.machine_id]["metadata"] == {"region": "eu-north", "rack": "r1"}
    assert got[m2.machine_id]["metadata"] == {"region": "us-west", "rack": "r2"}
    assert got[m3.machine_id]["metadata"] == {"region": "us-east"}
    assert "not-registered-yet" not in got
    # the gRPC front end shows the same merged metadata
    out = cluster.fleetctl("list-machines", "--no-legend", "-l").stdout
    assert "rack=r1" in out and "region=eu-north" in out and "disk=ssd" not in out
    # replace with a plain string, remove an API-set key, and restore what was changed
    r = patch(cluster, [
        {"op": "replace", "path": f"/{m2.machine_id}/metadata/rack", "value": "r9"},
        {"op": "remove", "path": f"/{m1.machine_id}/metadata/rack"},
        {"op": "add", "path": f"/{m1.machine_id}/metadata/region", "value": "us-east"},
        {"op": "add", "path": f"/{m3.machine_id}/metadata/disk", "value": "ssd"},
    ])
    assert r.status == 204
    got = machines(cluster)
    assert got[m1.machine_id]["metadata"] == {"region": "us-east"}
    assert got[m2.machine_id]["metadata"] == {"region": "us-west", "rack": "r9"}
    assert got[m3.machine_id]["metadata"] == {"region": "us-east", "disk": "ssd"}
    assert patch(cluster, []).status == 204
    assert patch(cluster, [{"op": "remove", "path": f"/{m2.machine_id}/metadata/rack"}]
                 ).status == 204
    assert machines(cluster)[m2.machine_id]["metadata"] == {"region": "us-west"}


def test_patched_metadata_schedules_units_and_survives_fleetd_restart(
        cluster: LocalCluster) -> None:
    m2 = cluster.machines[1]
    name = "httpmeta.service"
    assert put_unit(cluster, name, "launched", service(MachineMetadata="role=web")).status == 201
    # nothing has role=web: the engine's pass records why it is scheduled nowhere
    wait_until(lambda: "Not scheduled" in cluster.fleetctl("why", name).stdout, 20,
               what="the engine to record the unit as unschedulable")
    u = get_unit(cluster, name)
    assert "machineID" not in u and u["currentState"] == "inactive" and \
        not machines_running(cluster, name)
    assert patch(cluster, [{"op": "add", "path": f"/{m2.machine_id}/metadata/role",
                            "value": {"value": "web"}}]).status == 204
    wait_until(lambda: machines_running(cluster, name) == [m2.machine_id], 20,
               what="unit placed on the machine given role=web")
    # restart m2's fleetd, this time also serving HTTP on TCP (its loopback IP, HTTPS with
    # client certificates of the cluster's CA)
    port = free_port()
    base_env = m2.fleetd_env
    m2.fleetd_env = lambda: {**base_env(), "FLEET_HTTP_TCP": f"{m2.ip}:{port}"}  # type: ignore
    ctx = ssl.create_default_context(cafile=cluster.client_tls.ca_file)
    ctx.load_cert_chain(cluster.client_tls.cert_file, cluster.client_tls.key_file)
    try:
        m2.restart_fleetd()
        wait_until(lambda: os.path.exists(m2.http_socket), what="http socket back")
        tcp = f"tcp:{m2.ip}:{port}"

        def tcp_serves() -> bool:
            try:  # the socket file may be the old fleetd's: TCP may not listen yet
                return request(tcp, "GET", f"{V1}/machines", tls=ctx).status == 200
            except ConnectionRefusedError:
                return False
        wait_until(tcp_serves, what="http on tcp")
        after = wait_until(lambda: (ms := {m["id"]: m for m in request(
            tcp, "GET", f"{V1}/machines", tls=ctx).json["machines"]}).get(m2.machine_id)
            and ms, what="m2 registered again")
        assert after[m2.machine_id]["metadata"] == {"region": "us-west", "role": "web"}
        assert stat.S_IMODE(os.stat(m2.http_socket).st_mode) == 0o660
        # the unit stays where its metadata lets it run
        wait_until(lambda: get_unit(cluster, name).get("machineID") == m2.machine_id,
                   what="still scheduled on m2")
        assert machines_running(cluster, name) == [m2.machine_id]
    finally:
        m2.fleetd_env = base_env  # type: ignore[method-assign]
    # removing the metadata takes the unit off the machine again
    assert patch(cluster, [{"op": "remove", "path": f"/{m2.machine_id}/metadata/role"}]
                 ).status == 204
    wait_until(lambda: not machines_running(cluster, name), 20, what="unit unscheduled")
    assert request(cluster, "DELETE", f"{V1}/units/{name}").status == 204


# --- every refusal ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def existing(cluster: LocalCluster) -> str:
    name = "httperr.service"
    assert put_unit(cluster, name, "inactive", service()).status == 201
    return name


def test_put_refusals(cluster: LocalCluster, existing: str) -> None:
    url = f"{V1}/units/httpnew.service"
    ok = {"desiredState": "launched", "options": service()}
    # bad JSON and wrong shapes: 400
    for raw in (b"", b"{", b"not json", b"\xff", b"[1, 2]", b'"x"', b"null", b"12"):
        assert_error(request(cluster, "PUT", url, raw=raw, headers=JSON), 400, "decode body")
    for body, what in [({**ok, "desiredState": 3}, "desiredState must be a string"),
                       ({**ok, "options": "x"}, "options must be an array"),
                       ({**ok, "options": [1]}, "options[0] must be"),
                       ({**ok, "options": [{"section": "Service", "name": "ExecStart",
                                            "value": ["x"]}]}, "options[0].value must be"),
                       ({**ok, "name": 5}, "name must be a string"),
                       ({**ok, "options": [{"name": "ExecStart", "value": "/bin/true"}]},
                        "section is empty")]:
        assert_error(request(cluster, "PUT", url, body), 400, what)
    # unknown desiredState, on create and on update
    assert_error(request(cluster, "PUT", url, {**ok, "desiredState": "running"}), 400,
                 "invalid desiredState")
    assert_error(put_unit(cluster, existing, "started"), 400, "invalid desiredState")
    # invalid unit names
    for bad in ("noext", "foo.bogus", "@x.service", "a%20b.service", "x" * 300 + ".service"):
        assert_error(request(cluster, "PUT", f"{V1}/units/{bad}", ok), 400)
    assert_error(request(cluster, "GET", f"{V1}/units/noext"), 400)
    assert_error(request(cluster, "DELETE", f"{V1}/units/foo.bogus"), 400)
    # body name differs from the URL's
    assert_error(request(cluster, "PUT", url, {**ok, "name": "other.service"}), 400, "differs")
    # invalid options
    for opts, what in [(service(Bogus="1"), "unknown option"),
                       (service(Global="true", MachineID="x"), "Global"),
                       (service(MachineOf="httpnew.service"), "itself"),
                       (service(MachineMetadata="noequals"), "key=value")]:
        assert_error(request(cluster, "PUT", url, {**ok, "options": opts}), 400, what)
    # not JSON content: 415, as fleet
    assert_error(request(cluster, "PUT", url, ok, headers={}), 415, "application/json")
    assert_error(request(cluster, "PUT", url, ok, headers={"Content-Type": "text/plain"}), 415)
    # unknown unit without options; existing unit without desiredState: 409
    assert_error(request(cluster, "PUT", url, {"desiredState": "launched"}), 409,
                 "options field empty")
    assert_error(request(cluster, "PUT", f"{V1}/units/{existing}", {}), 409,
                 "must provide desiredState")
    # a template is created whatever desiredState it comes with (fleet's API; python-fleet
    # sends launched), kept submitted, and cannot be activated (the service layer's rule)
    assert put_unit(cluster, "httptmpl@.service", "launched", service()).status == 201
    assert get_unit(cluster, "httptmpl@.service")["desiredState"] == "inactive"
    assert_error(put_unit(cluster, "httptmpl@.service", "launched"), 400,
                 "cannot activate template")
    assert request(cluster, "DELETE", f"{V1}/units/httptmpl@.service").status == 204
    # body too large
    big = json.dumps({"options": [{"section": "Service", "name": "X", "value": "v" * 9_000_000}]})
    assert_error(request(cluster, "PUT", url, raw=big.encode(), headers=JSON), 413)
    # nothing of this created the unit
    assert_error(request(cluster, "GET", url), 404)


def test_not_found_refusals(cluster: LocalCluster) -> None:
    assert_error(request(cluster, "GET", f"{V1}/units/nope.service"), 404, "does not exist")
    assert_error(request(cluster, "DELETE", f"{V1}/units/nope.service"), 404, "does not exist")
    for path in ("/nope", f"{V1}/nope", "/fleet/v2/units", f"{V1}/units/a.service/x",
                 f"{V1}/units/", f"{V1}/machines/x", f"{V1}/discovery/x", "/fleet",
                 f"{V1}/units//a.service"):
        assert_error(request(cluster, "GET", path), 404)


def test_wrong_method_refusals(cluster: LocalCluster) -> None:
    for method, path, allowed in [
            ("POST", f"{V1}/units", "GET"), ("DELETE", f"{V1}/units", "GET"),
            ("POST", f"{V1}/units/a.service", "GET, PUT, DELETE"),
            ("PATCH", f"{V1}/units/a.service", "GET, PUT, DELETE"),
            ("PUT", f"{V1}/state", "GET"), ("DELETE", f"{V1}/state/a.service", "GET"),
            ("DELETE", f"{V1}/machines", "GET, PATCH"), ("PUT", f"{V1}/machines", "GET, PATCH"),
            ("POST", f"{V1}/discovery", "GET")]:
        r = request(cluster, method, path, {} if method in ("POST", "PUT", "PATCH") else None)
        assert_error(r, 405, "only")
        assert r.headers["Allow"] == allowed
    assert_error(request(cluster, "GET", "/"), 405)
    assert_error(request(cluster, "GET", V1), 405)


def test_patch_refusals(cluster: LocalCluster) -> None:
    m1 = cluster.machines[0]
    p = f"/{m1.machine_id}/metadata/k"
    for raw in (b"", b"[", b"nope"):
        assert_error(request(cluster, "PATCH", f"{V1}/machines", raw=raw, headers=JSON), 400,
                     "decode body")
    for body, what in [({"op": "add", "path": p, "value": "v"}, "JSON Patch array"),
                       ([1], "expected an object"),
                       ([{"op": "copy", "path": p, "value": "v"}], "add, remove, or replace"),
                       ([{"op": "add", "path": "/x/meta/k", "value": "v"}], "path invalid"),
                       ([{"op": "add", "path": f"/{m1.machine_id}/metadata/a b",
                          "value": "v"}], "path invalid"),
                       ([{"op": "add", "path": 7, "value": "v"}], "path"),
                       ([{"op": "add", "path": p}], "value"),
                       ([{"op": "replace", "path": p, "value": ""}], "value"),
                       ([{"op": "replace", "path": p, "value": {"value": 1}}], "value"),
                       # one bad operation refuses the whole patch
                       ([{"op": "add", "path": p, "value": "v"}, {"op": "add"}], "operation 1")]:
        assert_error(patch(cluster, body), 400, what)  # type: ignore[arg-type]
    assert "k" not in machines(cluster)[m1.machine_id]["metadata"]


def test_bad_page_tokens(cluster: LocalCluster) -> None:
    for coll in ("units", "state", "machines"):
        for token in ("garbage!", "ZAACAA", "CgACAA==", "ZAAAAA==", "AAAAAAAA"):
            assert_error(request(cluster, "GET", f"{V1}/{coll}?nextPageToken={token}"), 400,
                         "nextPageToken")
        assert_error(request(cluster, "GET",
                             f"{V1}/{coll}?nextPageToken=ZAACAA==&nextPageToken=ZAACAA=="),
                     400, "too many")


def test_no_request_made_fleetd_fail(cluster: LocalCluster) -> None:
    """Every refusal above was a 4xx: no handler raised (fleetd logs those as failures)."""
    for m in cluster.machines:
        log = fleetd_log(m)
        assert not re.search(r"HTTP [A-Z]+ \S+ failed", log), log[-3000:]
