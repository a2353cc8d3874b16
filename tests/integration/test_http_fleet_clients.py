"""fleet's own clients against fleet-py's HTTP API v1 on a real cluster: python-fleet (run as
installed by scripts/setup) and requests shaped exactly as fleet's Go fleetctl sends them with
`--driver=api` (its client/http.go over the generated Google API client: `?alt=json`, path
parameters percent-escaped, PUT bodies of a bare `{name, options}` to create or replace and
`{name, desiredState}` to change state)."""

from __future__ import annotations

import json
import pathlib
import subprocess
from typing import Any

from fleetd.localcluster import LocalCluster
from tests.integration.conftest import destroy_all_units, machines_running, wait_until
from tests.integration.test_http_api import Response, request

ROOT = pathlib.Path(__file__).resolve().parents[2]
PYTHON_FLEET = ROOT / ".venv-python-fleet" / "bin" / "python"
GO_HEADERS = {"User-Agent": "google-api-go-client/0.5", "Content-Type": "application/json"}
SLEEPER = [{"name": "Description", "section": "Unit", "value": "go fleetctl"},
           {"name": "ExecStart", "section": "Service", "value": "/bin/sleep 3000"}]


def test_python_fleet_client(cluster: LocalCluster) -> None:
    assert PYTHON_FLEET.exists(), "scripts/setup installs python-fleet in .venv-python-fleet"
    sock = next(m.http_socket for m in cluster.machines if m.alive)
    try:
        driver = ROOT / "tests" / "integration" / "python_fleet_driver.py"
        r = subprocess.run([str(PYTHON_FLEET), str(driver), sock], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        west = cluster.machines[1].machine_id
        assert {(m["id"], m["primaryIP"]) for m in out["machines"]} == {
            (m.machine_id, m.ip) for m in cluster.machines}
        assert out["machines"][0]["metadata"]["region"] in ("us-east", "us-west")
        assert out["created"]["name"] == "pyf.service"
        assert out["created"]["desiredState"] == "launched"
        assert out["template"]["desiredState"] == "inactive"
        assert out["activate_template"][0] == 400
        assert "cannot activate template" in out["activate_template"][1]
        active = {(s["name"], s["machineID"]) for s in out["states"]
                  if s["systemdActiveState"] == "active"}
        assert ("pyt@us-west.service", west) in active
        assert {s["name"] for s in out["states"]} == {"pyf.service", "pyt@us-west.service"}
        units = {u["name"]: u for u in out["units"]}
        assert set(units) == {"pyf.service", "pyt@.service", "pyt@us-west.service"}
        assert units["pyt@us-west.service"]["machineID"] == west
        assert units["pyt@us-west.service"]["currentState"] == "launched"
        assert out["stopped"]["desiredState"] == "loaded"
        assert out["missing"][0] == 404 and out["destroy_missing"][0] == 404
        assert out["invalid"][0] == 400 and "Global" in out["invalid"][1]
        assert machines_running(cluster, "pyt@us-west.service") == [west]  # ground truth
    finally:
        destroy_all_units(cluster)


def go(cluster: LocalCluster, method: str, path: str, body: Any = None,
       query: str = "") -> Response:
    """One request as fleet's Go HTTP client makes it."""
    url = f"/fleet/v1/{path}?alt=json" + (f"&{query}" if query else "")
    return request(cluster, method, url, body, headers=GO_HEADERS)


def test_go_fleetctl_http_driver_request_shapes(cluster: LocalCluster) -> None:
    try:
        # fleetctl start hello@1.service: Unit() is a 404, then create with bare options
        assert go(cluster, "GET", "units/hello%401.service").status == 404
        r = go(cluster, "PUT", "units/hello%401.service",
               {"name": "hello@1.service", "options": SLEEPER})
        assert r.status == 201, r
        unit = go(cluster, "GET", "units/hello%401.service").json
        assert unit["desiredState"] == "inactive" and unit["name"] == "hello@1.service"
        assert unit["options"] == SLEEPER
        r = go(cluster, "PUT", "units/hello%401.service",
               {"desiredState": "launched", "name": "hello@1.service"})
        assert r.status == 204, r
        # fleetctl waits on Unit().currentState, then names the machine from Machines()
        wait_until(lambda: go(cluster, "GET", "units/hello%401.service").json.get(
            "currentState") == "launched", what="currentState launched")
        unit = go(cluster, "GET", "units/hello%401.service").json
        machines = go(cluster, "GET", "machines").json["machines"]
        assert unit["machineID"] in {m["id"] for m in machines}
        assert machines_running(cluster, "hello@1.service") == [unit["machineID"]]
        # list-units reads UnitStates(), list-unit-files reads Units(): every page
        states = go(cluster, "GET", "state").json
        assert [(s["name"], s["machineID"], s["systemdActiveState"], s["systemdSubState"],
                 s["systemdLoadState"]) for s in states["states"]] == [
            ("hello@1.service", unit["machineID"], "active", "running", "loaded")]
        assert len(states["states"][0]["hash"]) == 40
        assert "nextPageToken" not in states
        page = go(cluster, "GET", "units").json
        assert [u["name"] for u in page["units"]] == ["hello@1.service"]
        # fleetctl start --replace: a bare {name, options} PUT of the existing unit, new file
        new = [*SLEEPER[:1], {"name": "ExecStart", "section": "Service",
                              "value": "/bin/sleep 3001"}]
        r = go(cluster, "PUT", "units/hello%401.service",
               {"name": "hello@1.service", "options": new})
        assert r.status == 201, r
        unit = go(cluster, "GET", "units/hello%401.service").json
        assert unit["options"] == new and unit["desiredState"] == "launched"
        mid = unit["machineID"]
        wait_until(lambda: "3001" in cluster.machine(mid).systemctl(
            "show", "-p", "ExecStart", "hello@1.service").stdout, what="replaced file runs")
        # cannot activate a template; invalid options; destroy and its 404
        go(cluster, "PUT", "units/hello%40.service", {"name": "hello@.service",
                                                       "options": SLEEPER})
        r = go(cluster, "PUT", "units/hello%40.service",
               {"desiredState": "launched", "name": "hello@.service"})
        assert r.status == 400 and "cannot activate template" in r.json["error"]["message"]
        assert go(cluster, "DELETE", "units/hello%401.service").status == 204
        assert go(cluster, "DELETE", "units/hello%401.service").status == 404
        assert go(cluster, "GET", "units/hello%401.service").json["error"]["code"] == 404
    finally:
        destroy_all_units(cluster)


def test_machine_of_cycle_refused_through_http(cluster: LocalCluster) -> None:
    try:
        a = [*SLEEPER, {"name": "MachineOf", "section": "X-Fleet", "value": "b.service"}]
        b = [*SLEEPER, {"name": "MachineOf", "section": "X-Fleet", "value": "a.service"}]
        assert go(cluster, "PUT", "units/a.service", {"name": "a.service", "options": a}
                  ).status == 201
        r = go(cluster, "PUT", "units/b.service", {"name": "b.service", "options": b})
        assert r.status == 400, r
        assert "b.service -> a.service -> b.service" in r.json["error"]["message"]
        assert go(cluster, "GET", "units/b.service").status == 404
    finally:
        destroy_all_units(cluster)
