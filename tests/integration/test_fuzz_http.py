"""Fuzzing fleet's HTTP API v1 on a live fleetd (hypothesis): random methods, paths, query
strings, headers and bodies (any JSON, unit-shaped JSON with wrong types, JSON Patches, raw
bytes). Never a 5xx; every 4xx carries fleet's error entity with its status; and a refused
request leaves the keys the API writes (units, desired states, metadata) unchanged in etcd.

Bounded: at most MAX_EXAMPLES requests and BUDGET_S seconds; the count is in pytest's summary."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.localcluster import LocalCluster
from tests.harness.cases import record
from tests.integration.test_hostile_input import EtcdSnapshot
from tests.integration.test_http_api import request

MAX_EXAMPLES = 600
BUDGET_S = 45.0
STATS = {"requests": 0, "2xx": 0, "4xx": 0, "skipped_over_budget": 0}

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=15)
_names = st.one_of(
    st.sampled_from(["fz.service", "fz@.service", "fz@1.service", "hello.service", "x.timer"]),
    st.text(max_size=40),
    st.text(st.sampled_from("ab@.-_/\\%\x00\n é"), max_size=12).map(lambda s: s + ".service"))
_option = st.fixed_dictionaries({}, optional={
    "section": st.one_of(st.sampled_from(["Service", "Unit", "X-Fleet", ""]), _json),
    "name": st.one_of(st.sampled_from(["ExecStart", "Global", "MachineID", "Conflicts",
                                       "Bogus", ""]), _json),
    "value": st.one_of(st.sampled_from(["/bin/sleep 1000", "true", "abc", "*", "\x00"]),
                       _json)})
_unit_body = st.fixed_dictionaries({}, optional={
    "name": st.one_of(_names, _json),
    "desiredState": st.one_of(st.sampled_from(["inactive", "loaded", "launched", "up", ""]),
                              _json),
    "currentState": _json, "machineID": _json,
    "options": st.one_of(st.lists(st.one_of(_option, _json), max_size=4), _json)})
_patch_op = st.fixed_dictionaries({}, optional={
    "op": st.one_of(st.sampled_from(["add", "remove", "replace", "move"]), _json),
    "path": st.one_of(st.builds(lambda m, k: f"/{m}/metadata/{k}",
                                st.sampled_from(["MID", "..", "x", ""]),
                                st.text(max_size=12)), _json),
    "value": st.one_of(st.text(max_size=20), st.fixed_dictionaries({"value": _json}), _json)})
_body = st.one_of(
    st.none(), _json.map(lambda j: json.dumps(j).encode()),
    _unit_body.map(lambda j: json.dumps(j).encode()),
    st.lists(_patch_op, max_size=4).map(lambda j: json.dumps(j).encode()),
    st.binary(max_size=200))
_resource = st.one_of(
    st.sampled_from(["units", "state", "machines", "discovery", "", "units/", "bogus"]),
    _names.map(lambda n: "units/" + quote(n.encode("utf-8", "surrogatepass"), safe="")),
    _names.map(lambda n: "state/" + quote(n.encode("utf-8", "surrogatepass"), safe="")))
_query = st.one_of(st.just(""), st.sampled_from(["?nextPageToken=", "?nextPageToken=AAAA",
                                                 "?nextPageToken=ZAABAA==", "?unitName=x",
                                                 "?machineID=%00", "?a=b&a=c"]))


@pytest.fixture(scope="module")
def snap(cluster: LocalCluster) -> Iterator[EtcdSnapshot]:
    s = EtcdSnapshot(cluster)
    yield s
    s.close()
    record("fuzz: HTTP API v1 (live fleetd)", STATS["requests"],
           f"{STATS['2xx']} accepted, {STATS['4xx']} refused with fleet's error entity and "
           "etcd unchanged, 0 5xx")


def test_http_api_never_fails_and_refusals_change_nothing(cluster: LocalCluster,
                                                         snap: EtcdSnapshot) -> None:
    mid = cluster.machines[0].machine_id
    deadline = time.monotonic() + BUDGET_S

    @given(method=st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "POST"]),
           prefix=st.sampled_from(["/fleet/v1/", "/v1-alpha/", "/", "/fleet/v2/"]),
           resource=_resource, query=_query, body=_body,
           ctype=st.sampled_from(["application/json", "application/json; charset=utf-8",
                                  "text/plain", ""]))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def one(method: str, prefix: str, resource: str, query: str, body: bytes | None,
            ctype: str) -> None:
        if time.monotonic() > deadline:
            STATS["skipped_over_budget"] += 1
            return
        if body is not None:
            body = body.replace(b"MID", mid.encode())
        before = snap.read()
        headers = {"Content-Type": ctype} if ctype else {}
        r = request(cluster, method, prefix + resource + query, headers=headers,
                    raw=body if body is not None else None)
        STATS["requests"] += 1
        assert r.status < 500, (method, prefix + resource + query, body, r)
        if r.status >= 400:
            STATS["4xx"] += 1
            err: Any = r.json["error"]
            assert err["code"] == r.status and isinstance(err["message"], str), r
            assert snap.read() == before, (method, prefix + resource, body, r)
        else:
            STATS["2xx"] += 1

    one()
    for name in ("fz.service", "fz@.service", "fz@1.service", "hello.service", "x.timer"):
        request(cluster, "DELETE", "/fleet/v1/units/" + name)
    assert STATS["requests"] >= 100
