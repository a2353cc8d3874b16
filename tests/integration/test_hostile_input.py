"""Hostile and broken input at every entry point refuses with a clear error and leaves the cluster
unchanged (every key fleet's APIs write, read from etcd before and after).

Entry points: fleetctl arguments and unit files, gRPC, HTTP v1, fleet.conf (fleetd refuses to
start), machine metadata (configured, gRPC, HTTP PATCH). Limits: unit names 255 bytes, unit
files 1 MiB (`MAX_UNIT_FILE_BYTES`), fleet.conf 64 KiB, metadata per `fleetd/metadata.py`,
gRPC requests 8 MiB, HTTP bodies 8 MiB.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc
from fleetd.localcluster import LocalCluster
from fleetd.metadata import MAX_METADATA_KEYS
from fleetd.registry import EtcdClient, Keys
from fleetd.unit import MAX_UNIT_FILE_BYTES
from tests.harness.cases import record
from tests.integration.test_http_api import JSON, request

GOOD = "[Unit]\nDescription=ok\n\n[Service]\nExecStart=/bin/sleep 1000\n"


class EtcdSnapshot:
    """Reads every key the APIs write, straight from etcd."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.prefix = cluster.prefix
        k = Keys(cluster.prefix)
        # Keys the APIs write: unit files, desired states, API-set metadata (not the engine's
        # schedule or the agents' states, which move on their own).
        self.api_keys = (k.units, k.desired, k.metadata)
        self.loop = asyncio.new_event_loop()


        async def connect() -> EtcdClient:  # a grpc.aio channel belongs to the running loop
            return EtcdClient([cluster.etcd.endpoint])

        self.etcd = self.loop.run_until_complete(connect())

    def read(self) -> dict[str, bytes]:
        kvs, _ = self.loop.run_until_complete(self.etcd.get_prefix(self.prefix))
        return {kv.key: kv.value for kv in kvs if kv.key.startswith(self.api_keys)}

    def close(self) -> None:
        self.loop.run_until_complete(self.etcd.close())
        self.loop.close()


@pytest.fixture(scope="module")
def snap(cluster: LocalCluster) -> Iterator[EtcdSnapshot]:
    s = EtcdSnapshot(cluster)
    yield s
    s.close()


@pytest.fixture(scope="module")
def stub(cluster: LocalCluster) -> Iterator[Any]:
    channel = grpc.insecure_channel("unix:" + cluster.machines[0].api_socket)
    yield pb_grpc.FleetStub(channel)
    channel.close()


HOSTILE_NAMES = [
    "a/b.service", "../etc.service", "a..b.service", "..service", "a\x01b.service",
    "a\x00b.service", "a\nb.service", "a\x1b[31m.service", "a" * 300 + ".service",
    "a" * 248 + ".service", "é.service", "a b.service", ".hidden.service", "a@@b.service",
    "a.exe", "", "@x.service", "a\u202e.service",
]


def _unit_file_cases() -> list[tuple[str, bytes, str]]:
    """(what, file content, phrase the error must name)."""
    return [
        ("over the size limit", b"[Unit]\nDescription=" + b"x" * MAX_UNIT_FILE_BYTES + b"\n",
         "large"),
        ("non-UTF-8", b"[Unit]\nDescription=\xff\xfe\n", "UTF-8"),
        ("unclosed section", b"[Unit\nDescription=x\n", 'no closing "]"'),
        ("text after section", b"[Unit] junk\n", "after section header"),
        ("empty section", b"[]\nA=b\n", "empty section name"),
        ("line without =", b"[Unit]\nnonsense\n", "expected Name=Value"),
        ("option before section", b"Description=x\n[Unit]\n", "before the first"),
        ("option without name", b"[Unit]\n=x\n", "option without a name"),
        ("NUL in value", b"[Unit]\nDescription=a\x00b\n", "control character"),
        ("escape in value", b"[Service]\nExecStart=/bin/echo \x1b[2J\n", "control character"),
        ("control in section", b"[Un\x07it]\nA=b\n", "control character"),
        ("unknown X-Fleet option", b"[X-Fleet]\nMachineIDs=abc\n", "unknown option"),
        ("Global with MachineID", b"[X-Fleet]\nGlobal=true\nMachineID=abc\n",
         "cannot be used with"),
        ("MachineID with MachineOf", b"[X-Fleet]\nMachineID=a\nMachineOf=b.service\n",
         "cannot be used with"),
        ("two MachineIDs", b"[X-Fleet]\nMachineID=a\nMachineID=b\n", "more than one"),
        ("Global not boolean", b"[X-Fleet]\nGlobal=maybe\n", "not a boolean"),
        ("bad MachineMetadata", b"[X-Fleet]\nMachineMetadata=novalue\n", "key=value"),
        ("MachineOf itself", b"[X-Fleet]\nMachineOf=victim.service\n", "names the unit itself"),
        ("Replaces with Conflicts", b"[X-Fleet]\nReplaces=a.service\nConflicts=b.service\n",
         "cannot be used with"),
    ]


def _assert_clear(stderr: str, phrase: str) -> None:
    assert phrase.lower() in stderr.lower(), stderr
    assert "Traceback" not in stderr, stderr


def test_fleetctl_refuses_hostile_arguments_and_files(cluster: LocalCluster, snap: EtcdSnapshot,
                                                      tmp_path: pathlib.Path) -> None:
    before = snap.read()
    cases = 0
    for name in HOSTILE_NAMES:
        if not name or "/" in name or "\x00" in name:
            continue  # "/" makes it a path (covered below); no argv can hold a NUL
        for cmd in ("start", "stop", "status"):
            r = cluster.fleetctl(cmd, "--no-block", name) if cmd in ("start", "stop") \
                else cluster.fleetctl(cmd, name)
            assert r.returncode != 0, (cmd, name, r.stdout)
            _assert_clear(r.stderr, "invalid unit name" if name != "a.exe" else "unit")
            cases += 1
    # Non-UTF-8 argument bytes (the shell can pass anything).
    r = subprocess.run([sys.executable.encode(), b"-m", b"fleetctl", b"start", b"\xff.service"],
                       env={**os.environ,
                            "FLEETCTL_ENDPOINT": cluster.machines[0].endpoint},
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    _assert_clear(r.stderr, "invalid unit name")
    cases += 1
    r = cluster.fleetctl("start", "no/such/dir/x.service")
    assert r.returncode != 0
    _assert_clear(r.stderr, "unable to find unit file")
    cases += 1
    for what, content, phrase in _unit_file_cases():
        path = tmp_path / "victim.service"
        path.write_bytes(content)
        r = cluster.fleetctl("start", "--no-block", str(path))
        assert r.returncode != 0, (what, r.stdout)
        _assert_clear(r.stderr, phrase)
        cases += 1
    assert snap.read() == before, "a refused fleetctl command changed the cluster"
    record("hostile input: fleetctl arguments and unit files", cases,
           "names with / .. controls >255 bytes, non-UTF-8 argv, oversized/broken/contradictory "
           "unit files: all refused, etcd unchanged")


def test_grpc_refuses_hostile_requests(cluster: LocalCluster, snap: EtcdSnapshot,
                                       stub: Any) -> None:
    before = snap.read()
    mid = cluster.machines[0].machine_id
    calls: list[tuple[str, Any, grpc.StatusCode, str]] = []
    for name in HOSTILE_NAMES:
        calls += [("CreateUnit", pb.CreateUnitRequest(name=name, text=GOOD,
                                                      desired_state="launched"),
                   grpc.StatusCode.INVALID_ARGUMENT, "name"),
                  ("SetUnitTargetState", pb.SetUnitTargetStateRequest(
                      name=name, desired_state="launched"), grpc.StatusCode.INVALID_ARGUMENT,
                   "name"),
                  ("DestroyUnit", pb.DestroyUnitRequest(name=name),
                   grpc.StatusCode.INVALID_ARGUMENT, "name"),
                  ("UnitStatus", pb.UnitStatusRequest(name=name, machine_id=mid),
                   grpc.StatusCode.INVALID_ARGUMENT, "name"),
                  ("RestartUnit", pb.RestartUnitRequest(name=name, machine_id=mid),
                   grpc.StatusCode.INVALID_ARGUMENT, "name")]
    for what, content, phrase in _unit_file_cases():
        text = content.decode("utf-8", "replace")
        if what == "non-UTF-8":
            text = "[Unit]\nDescription=\udcff\n"  # protobuf refuses to encode it
            continue
        calls.append(("CreateUnit", pb.CreateUnitRequest(name="victim.service", text=text,
                                                         desired_state="launched"),
                      grpc.StatusCode.INVALID_ARGUMENT, phrase.split()[0]))
    calls += [
        ("CreateUnit", pb.CreateUnitRequest(name="victim.service", text=GOOD,
                                            desired_state="running"),
         grpc.StatusCode.INVALID_ARGUMENT, "desired state"),
        ("CreateUnit", pb.CreateUnitRequest(name="victim.service", text=""),
         grpc.StatusCode.INVALID_ARGUMENT, "no unit file"),
        ("CreateUnit", pb.CreateUnitRequest(name="victim.service", text="x" * (9 << 20)),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than"),
        ("SetMachineMetadata", pb.SetMachineMetadataRequest(machine_id=mid, set={"a/b": "v"}),
         grpc.StatusCode.INVALID_ARGUMENT, "metadata key"),
        ("SetMachineMetadata", pb.SetMachineMetadataRequest(machine_id=mid, set={"k": "v\x00"}),
         grpc.StatusCode.INVALID_ARGUMENT, "non-printable"),
        ("SetMachineMetadata", pb.SetMachineMetadataRequest(machine_id=mid, set={"k": "v" * 300}),
         grpc.StatusCode.INVALID_ARGUMENT, "at most"),
        ("SetMachineMetadata", pb.SetMachineMetadataRequest(machine_id=mid, set={"k" * 200: "v"}),
         grpc.StatusCode.INVALID_ARGUMENT, "at most"),
        ("SetMachineMetadata", pb.SetMachineMetadataRequest(
            machine_id=mid, set={f"k{i}": "v" for i in range(MAX_METADATA_KEYS + 1)}),
         grpc.StatusCode.INVALID_ARGUMENT, "at most"),
        ("SetMachineMetadata", pb.SetMachineMetadataRequest(machine_id="../x", set={"k": "v"}),
         grpc.StatusCode.INVALID_ARGUMENT, "machine id"),
        ("SetMachineMetadata", pb.SetMachineMetadataRequest(machine_id="m" * 500, set={"k": "v"}),
         grpc.StatusCode.INVALID_ARGUMENT, "machine id"),
        ("Journal", pb.JournalRequest(name="victim.service", output="--help"),
         grpc.StatusCode.INVALID_ARGUMENT, "output format"),
    ]
    for method, req, code, phrase in calls:
        with pytest.raises(grpc.RpcError) as info:
            result = getattr(stub, method)(req, timeout=30)
            if method == "Journal":
                list(result)
        err = info.value
        assert err.code() == code, (method, req, err.code(), err.details())  # type: ignore
        assert phrase.lower() in (err.details() or "").lower(), (method, err.details())  # type: ignore
    # The same unit requests in one CreateUnits call: each refused with its own code and
    # message, nothing written; too large a call as a whole is refused like one CreateUnit.
    creates = [(req, code, phrase) for method, req, code, phrase in calls
               if method == "CreateUnit" and code == grpc.StatusCode.INVALID_ARGUMENT]
    got = stub.CreateUnits(pb.CreateUnitsRequest(units=[r for r, _, _ in creates]), timeout=30)
    assert len(got.outcomes) == len(creates)
    for (req, code, phrase), o in zip(creates, got.outcomes, strict=True):
        assert o.code == code.value[0], (req.name, o.code, o.message)
        assert phrase.lower() in o.message.lower(), (req.name, o.message)
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateUnits(pb.CreateUnitsRequest(units=[pb.CreateUnitRequest(
            name=f"big{i}.service", text="x" * (3 << 20)) for i in range(3)]), timeout=30)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
    # Metadata within the limits, but too many keys once merged with what is already set.
    half = MAX_METADATA_KEYS // 2 + 1
    stub.SetMachineMetadata(pb.SetMachineMetadataRequest(
        machine_id=mid, set={f"a{i}": "v" for i in range(half)}), timeout=30)
    with pytest.raises(grpc.RpcError) as info:
        stub.SetMachineMetadata(pb.SetMachineMetadataRequest(
            machine_id=mid, set={f"b{i}": "v" for i in range(half)}), timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert "at most" in (info.value.details() or "")  # type: ignore[attr-defined]
    stub.SetMachineMetadata(pb.SetMachineMetadataRequest(
        machine_id=mid, delete=[f"a{i}" for i in range(half)]), timeout=30)
    after = snap.read()
    meta_key = next(k for k in after if k.endswith("metadata/" + mid))
    assert json.loads(after.pop(meta_key)) == {f"a{i}": None for i in range(half)}
    assert after == before, "a refused gRPC request changed the cluster"
    record("hostile input: gRPC", len(calls) + len(creates) + 2,
           "names, unit files, desired states, 9 MiB request, metadata keys/values/count, "
           "journal format: all refused with INVALID_ARGUMENT/RESOURCE_EXHAUSTED, etcd unchanged")


def test_http_refuses_hostile_requests(cluster: LocalCluster, snap: EtcdSnapshot) -> None:
    from urllib.parse import quote

    before = snap.read()
    mid = cluster.machines[0].machine_id
    unit_body = {"desiredState": "launched",
                 "options": [{"section": "Service", "name": "ExecStart", "value": "/bin/true"}]}
    cases: list[tuple[str, str, Any, bytes | None, dict[str, str], int]] = []
    for name in HOSTILE_NAMES:
        if not name:
            continue
        path = "/fleet/v1/units/" + quote(name.encode("utf-8", "surrogatepass"), safe="")
        cases += [("PUT", path, unit_body, None, JSON, 0), ("DELETE", path, None, None, {}, 0),
                  ("GET", path, None, None, {}, 0)]
    victim = "/fleet/v1/units/victim.service"
    bad_bodies: list[tuple[Any, bytes | None]] = [
        (None, b"\xff\xfe{"), (None, b"{"), (None, b"[]"), (None, b"null"), (None, b"1e999999"),
        (None, b"[" * 100_000), ({"options": "x"}, None), ({"options": [1]}, None),
        ({"options": [{"section": 1, "name": "a", "value": "b"}]}, None),
        ({"options": [{"section": "", "name": "a", "value": "b"}]}, None),
        ({"options": [{"section": "S", "name": "a", "value": "b\x00"}],
          "desiredState": "launched"}, None),
        ({"options": [{"section": "X-Fleet", "name": "Bogus", "value": "1"}],
          "desiredState": "launched"}, None),
        ({"options": [{"section": "X-Fleet", "name": "Global", "value": "true"},
                      {"section": "X-Fleet", "name": "MachineID", "value": "abc"}],
          "desiredState": "launched"}, None),
        ({"options": [{"section": "Service", "name": "ExecStart",
                       "value": "x" * (MAX_UNIT_FILE_BYTES + 1)}],
          "desiredState": "launched"}, None),
        ({**unit_body, "desiredState": 3}, None), ({**unit_body, "desiredState": "up"}, None),
        ({**unit_body, "name": "other.service"}, None),
        (None, b"{" + b'"a":' * 10 + b"1" + b"}" * 10),
        (None, b"x" * (9 << 20)),
    ]
    for body, raw in bad_bodies:
        cases.append(("PUT", victim, body, raw, JSON, 0))
    cases.append(("PUT", victim, unit_body, None, {"Content-Type": "text/plain"}, 415))
    patches: list[Any] = [
        {"op": "add"}, [{"op": "add", "path": f"/{mid}/metadata/a b", "value": "v"}],
        [{"op": "add", "path": f"/{mid}/metadata/k", "value": "v\x07"}],
        [{"op": "add", "path": f"/{mid}/metadata/k", "value": "v" * 300}],
        [{"op": "add", "path": f"/{mid}/metadata/{'k' * 200}", "value": "v"}],
        [{"op": "add", "path": f"/{mid}/metadata/k{i}", "value": "v"}
         for i in range(MAX_METADATA_KEYS + 1)],
        [{"op": "add", "path": f"/{mid}/metadata/k", "value": {"value": 5}}],
        [{"op": "move", "path": f"/{mid}/metadata/k"}],
        [{"op": "add", "path": "/../metadata/k", "value": "v"}],
        [{"op": "add", "path": f"/{mid}/metadata/good", "value": "v"},
         {"op": "add", "path": f"/{mid}/metadata/bad key", "value": "v"}],
    ]
    for p in patches:
        cases.append(("PATCH", "/fleet/v1/machines", p, None, JSON, 0))
    for method, path, body, raw, headers, want in cases:
        r = request(cluster, method, path, body, headers=headers, raw=raw)
        assert 400 <= r.status < 500, (method, path, body if raw is None else raw[:80], r)
        assert want in (0, r.status), (method, path, r)
        err = r.json["error"]
        assert err["code"] == r.status and err["message"], r
    assert snap.read() == before, "a refused HTTP request changed the cluster"
    record("hostile input: HTTP v1", len(cases),
           "names, non-JSON/non-UTF-8/deep/huge bodies, wrong shapes and types, bad options, "
           "JSON Patch of metadata: all 4xx with fleet's error entity, etcd unchanged")


def test_fleetd_refuses_hostile_fleet_conf(cluster: LocalCluster, snap: EtcdSnapshot,
                                           tmp_path: pathlib.Path) -> None:
    before = snap.read()
    etcd = f"etcd_servers={cluster.etcd.endpoint}\netcd_key_prefix={cluster.prefix}\n".encode()
    confs: list[tuple[str, bytes, str]] = [
        ("non-UTF-8", etcd + b"public_ip=\xff\n", "not valid UTF-8"),
        ("too large", etcd + b"#" + b"x" * (64 * 1024) + b"\n", "larger than"),
        ("control character", etcd + b"public_ip=1.2.3.4\x00\n", "control character"),
        ("no =", etcd + b"metadata\n", "expected option=value"),
        ("unknown option", etcd + b"agent_ttl_s=10\n", "unknown option"),
        ("bad duration", etcd + b"agent_ttl=soon\n", "agent_ttl"),
        ("bad metadata item", etcd + b"metadata=region\n", "key=value"),
        ("bad metadata key", etcd + b"metadata=re/gion=x\n", "metadata key"),
        ("too much metadata", etcd + b"metadata=" + b",".join(
            b"k%d=v" % i for i in range(MAX_METADATA_KEYS + 1)) + b"\n", "at most"),
        ("huge metadata value", etcd + b"metadata=k=" + b"v" * 1000 + b"\n", "at most"),
        ("ttl too small", etcd + b"agent_ttl=1\n", "at least"),
    ]
    for what, content, phrase in confs:
        path = tmp_path / "fleet.conf"
        path.write_bytes(content)
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEET")}
        r = subprocess.run([sys.executable, "-m", "fleetd.main", "--config", str(path)],
                           env=env, capture_output=True, text=True, timeout=30)
        assert r.returncode == 2, (what, r.returncode, r.stderr)
        _assert_clear(r.stderr, phrase)
    assert snap.read() == before
    record("hostile input: fleet.conf", len(confs),
           "fleetd exits 2 naming file, line and problem; etcd unchanged")
