"""fleet's client and API functional tests, ported to the nspawn lab (coreos/fleet
functional/fleetctl_test.go, fltctl_test.go, machines_test.go, and the FLEETCTL_* environment
that fleet's platform/nspawn.go drove fleetctl with): version and help output, the
endpoint and TLS options from the environment, and fleet's HTTP API v1 /machines (list,
paging token, JSON Patch of metadata) over the lab's mutual TLS."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.lab.conftest import (
    BIN,
    lab_env,
    machine_ids,
    machines,
    module_lab,
)

_lab = module_lab(2, {"m1": "hostname=m1", "m2": "hostname=m2"})


def run_fleetctl(*args: str, env: dict[str, str] | None = None, timeout_s: float = 60
                 ) -> subprocess.CompletedProcess[str]:
    """fleetctl with exactly `env` (plus PATH/HOME): nothing from `fleet-lab env` unless
    given."""
    exe = BIN / "fleetctl"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fleetctl"]
    base = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ}
    return subprocess.run([*cmd, *args], capture_output=True, text=True,
                          env={**base, "COLUMNS": "200", **(env or {})}, timeout=timeout_s)


def tls_env() -> dict[str, str]:
    return {k: v for k, v in lab_env().items() if k.startswith("FLEETCTL_")}


# --- TestClientVersionFlag, TestClientVersionHelpOutput, TestClientHelpFlag -----------------

def test_version_flag_prints_fleetctl_version() -> None:
    r = run_fleetctl("--version")
    assert r.returncode == 0, r.stderr
    words = r.stdout.split()
    assert words[:2] == ["fleetctl", "version"] and len(words) == 3, r.stdout
    assert run_fleetctl("version").stdout.strip() == r.stdout.strip()


def test_help_output_carries_the_version_and_every_help_form_is_the_same() -> None:
    version = run_fleetctl("--version").stdout.split()[-1]
    outputs = []
    for args in (["--help"], ["-h"], ["help"], []):
        r = run_fleetctl(*args)
        assert r.returncode == 0, (args, r.stderr)
        assert r.stdout, args
        outputs.append(r.stdout)
    assert version in outputs[-1]
    assert outputs[1:] == [outputs[0]] * 3


# --- the client environment (FLEETCTL_ENDPOINT, FLEETCTL_CA_FILE/CERT_FILE/KEY_FILE, ...) ------

def test_endpoint_and_tls_files_come_from_the_environment() -> None:
    env = tls_env()
    ids = set(machine_ids().values())
    r = run_fleetctl("list-machines", "--no-legend", "-l", "--fields", "machine", env=env)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) == ids
    # another machine's API, named only by the environment
    m2 = next(m for m in machines() if m["name"] == "m2")
    r = run_fleetctl("list-machines", "--no-legend", "-l", "--fields", "machine",
                     env={**env, "FLEETCTL_ENDPOINT": f"{m2['ip']}:9810"})
    assert r.returncode == 0 and set(r.stdout.split()) == ids, r.stderr


def test_endpoint_flag_overrides_the_environment() -> None:
    env = tls_env()
    good = env["FLEETCTL_ENDPOINT"]
    bad = {**env, "FLEETCTL_ENDPOINT": "unix:///nonexistent/fleet.sock"}
    r = run_fleetctl("list-machines", "--no-legend", env=bad)
    assert r.returncode != 0
    assert "/nonexistent/fleet.sock" in r.stderr, r.stderr
    r = run_fleetctl("--endpoint", good, "list-machines", "--no-legend", env=bad)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2, r.stderr


def test_tls_endpoint_without_a_client_certificate_is_refused() -> None:
    env = tls_env()
    for drop in ("FLEETCTL_CERT_FILE", "FLEETCTL_KEY_FILE"):
        partial = {k: v for k, v in env.items() if k != drop}
        r = run_fleetctl("list-machines", "--no-legend", env=partial, timeout_s=60)
        assert r.returncode != 0, (drop, r.stdout)
        assert r.stderr.strip(), drop


def test_request_timeout_comes_from_the_environment() -> None:
    """fleet read every global flag from FLEETCTL_<FLAG>: FLEETCTL_REQUEST_TIMEOUT bounds a
    call to an endpoint that accepts connections and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        env = {**tls_env(), "FLEETCTL_ENDPOINT": f"127.0.0.1:{port}",
               "FLEETCTL_REQUEST_TIMEOUT": "1"}
        t0 = time.monotonic()
        r = run_fleetctl("list-machines", env=env)
        took = time.monotonic() - t0
    assert r.returncode != 0
    assert took < 6, f"fleetctl waited {took:.1f}s, not the 1 s of FLEETCTL_REQUEST_TIMEOUT"


# --- TestMachinesList, TestMachinesPatchAddModify, TestMachinesPatchBad ------------------------

def http(method: str, path: str, body: Any = None) -> tuple[int, str, bytes]:
    env = lab_env()
    ctx = ssl.create_default_context(cafile=env["FLEETCTL_CA_FILE"])
    ctx.load_cert_chain(env["FLEETCTL_CERT_FILE"], env["FLEETCTL_KEY_FILE"])
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(env["FLEET_HTTP_ENDPOINT"] + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=15, context=ctx) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def machines_by_id() -> dict[str, dict[str, Any]]:
    status, ctype, body = http("GET", "/fleet/v1/machines")
    assert status == 200 and "application/json" in ctype, (status, ctype)
    # fleet's fields only: fleet-py's extension fields ("fleetpy...") are checked elsewhere
    return {m["id"]: {k: v for k, v in m.items() if not k.startswith("fleetpy")}
            for m in json.loads(body)["machines"]}


def test_machines_list_and_a_bad_page_token() -> None:
    status, ctype, body = http("GET", "/fleet/v1/machines")
    assert status in (200, 204) and "application/json" in ctype
    assert set(json.loads(body)["machines"][0]) >= {"id", "primaryIP"}
    status, ctype, _ = http("GET", "/fleet/v1/machines?nextPageToken=EwBMLg==")
    assert status == 400 and "application/json" in ctype, (status, ctype)


def test_machines_patch_adds_replaces_and_removes_metadata() -> None:
    ids = machine_ids()
    ips = {m["name"]: m["ip"] for m in machines()}
    m1, m2 = ids["m1"], ids["m2"]
    ops = [{"op": "add", "path": f"/{m1}/metadata/foo", "value": {"value": "bar"}},
           {"op": "replace", "path": f"/{m2}/metadata/ping", "value": {"value": "splat"}}]
    status, ctype, _ = http("PATCH", "/fleet/v1/machines", ops)
    assert status == 204 and "application/json" in ctype, (status, ctype)
    got = machines_by_id()
    assert got[m1] == {"id": m1, "primaryIP": ips["m1"],
                       "metadata": {"foo": "bar", "hostname": "m1"}}
    assert got[m2] == {"id": m2, "primaryIP": ips["m2"],
                       "metadata": {"ping": "splat", "hostname": "m2"}}
    ops = [{"op": "remove", "path": f"/{m1}/metadata/foo", "value": {"value": ""}},
           {"op": "remove", "path": f"/{m2}/metadata/ping", "value": {"value": ""}}]
    status, ctype, _ = http("PATCH", "/fleet/v1/machines", ops)
    assert status == 204 and "application/json" in ctype
    got = machines_by_id()
    assert got[m1]["metadata"] == {"hostname": "m1"}
    assert got[m2]["metadata"] == {"hostname": "m2"}


@pytest.mark.parametrize("op,suffix,value", [
    ("noop", "metadata/foo", "bar"),   # unknown operation
    ("add", "foo", "bar"),             # path outside metadata
    ("add", "metadata/foo", ""),       # no value to add
])
def test_machines_patch_refuses_a_bad_operation(op: str, suffix: str, value: str) -> None:
    m1 = machine_ids()["m1"]
    before = machines_by_id()
    status, ctype, _ = http("PATCH", "/fleet/v1/machines",
                            [{"op": op, "path": f"/{m1}/{suffix}", "value": {"value": value}}])
    assert status == 400 and "application/json" in ctype, (status, ctype)
    assert machines_by_id() == before
