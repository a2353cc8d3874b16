"""The service layer's domain rules, through both real front ends (a gRPC server and the HTTP
API v1 server on unix sockets, over a real etcd), and what the engine then does.

One rule, one place (fleetd/api/service.py): a template is only ever submitted (activating one
is refused, creating one with an active desired state keeps it submitted), unit names are
validated, MachineOf cycles are refused; both front ends refuse alike (HTTP with fleet's codes)
and leave the cluster unchanged. The engine and `fleetctl why` agree on what is a template:
"a@.b.service" is an instance, scheduled like any other.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc
import pytest

from fleetd.api.grpc_server import start_grpc_server
from fleetd.api.http_v1 import HttpServer, start_http_server, unit_options
from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc
from fleetd.api.service import FleetService
from fleetd.engine.engine import Engine
from fleetd.localcluster import EtcdServer
from fleetd.machine import MachineIdentity, MachineSession
from fleetd.registry import EtcdClient, EtcdError, Registry, UnitRecord
from fleetd.unit import Unit

pytestmark = pytest.mark.integration

UNIT = "[Service]\nExecStart=/bin/sleep 1000\n"
CYCLE_A = UNIT + "[X-Fleet]\nMachineOf=rule-b.service\n"
CYCLE_B = UNIT + "[X-Fleet]\nMachineOf=rule-a.service\n"


@dataclass
class Api:
    registry: Registry
    grpc: Any  # pb_grpc.FleetStub
    http: aiohttp.ClientSession
    engine: Engine
    machine_id: str

    async def put(self, name: str, desired: str = "", text: str = "") -> tuple[int, Any]:
        """PUT /fleet/v1/units/<name> (options from `text`); (status, body or None)."""
        body: dict[str, Any] = {}
        if desired:
            body["desiredState"] = desired
        if text:
            body["options"] = unit_options(text)
        async with self.http.put(f"http://fleet/fleet/v1/units/{name}", json=body) as r:
            raw = await r.read()
            return r.status, json.loads(raw) if raw else None

    async def get(self, name: str) -> tuple[int, Any]:
        async with self.http.get(f"http://fleet/fleet/v1/units/{name}") as r:
            return r.status, json.loads(await r.read())

    async def grpc_error(self, call: Awaitable[Any]) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call
        return e.value.code(), e.value.details() or ""

    async def desired(self, name: str) -> str | None:
        view = await self.registry.get_unit(name)
        return None if view is None else view.desired


@pytest.fixture
async def api(etcd_server: EtcdServer) -> AsyncIterator[Api]:
    client = EtcdClient([etcd_server.endpoint], request_timeout_s=5.0)
    registry = Registry(client, f"/rules-{uuid.uuid4().hex[:8]}/")
    session = MachineSession(registry, MachineIdentity("e" * 32, "10.0.0.5"), 30)
    await session.establish()
    engine = Engine(registry, session, reconcile_interval_s=60)
    engine_task = asyncio.ensure_future(engine.run())
    service = FleetService(registry)
    tmp = tempfile.mkdtemp(prefix="rules-api-")
    grpc_server = await start_grpc_server(service, unix_socket=f"{tmp}/grpc.sock")
    http_server: HttpServer = await start_http_server(service, unix_socket=f"{tmp}/http.sock")
    channel = grpc.aio.insecure_channel(f"unix://{tmp}/grpc.sock")
    http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=f"{tmp}/http.sock"))
    try:
        yield Api(registry, pb_grpc.FleetStub(channel), http, engine, session.identity.id)
    finally:
        await http.close()
        await channel.close()
        await http_server.stop()
        await grpc_server.stop(None)
        engine_task.cancel()
        await asyncio.gather(engine_task, return_exceptions=True)
        await registry.revoke_lease(session.lease)
        await client.close()


async def until(pred: Callable[[], Awaitable[Any]], timeout_s: float, what: str) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not (found := await pred()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(0.02)
    return found


async def test_activating_a_template_is_refused_alike_by_grpc_and_http(api: Api) -> None:
    tmpl = "rule@.service"
    created = await api.grpc.CreateUnit(pb.CreateUnitRequest(name=tmpl, text=UNIT))
    assert created.created and created.unit.desired_state == "inactive"
    for state in ("launched", "loaded"):
        code, msg = await api.grpc_error(api.grpc.SetUnitTargetState(
            pb.SetUnitTargetStateRequest(name=tmpl, desired_state=state)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert msg.startswith(f"cannot activate template {tmpl}: a template is only submitted")
        status, body = await api.put(tmpl, state)
        assert status == 400 and body["error"] == {"code": 400, "message": msg}
    assert await api.desired(tmpl) == "inactive"  # nothing changed


async def test_a_template_created_with_an_active_state_stays_submitted_on_both(api: Api) -> None:
    # fleet's API (and python-fleet's default desiredState) create a template "launched": it is
    # kept submitted, the same over gRPC; the response says so.
    created = await api.grpc.CreateUnit(pb.CreateUnitRequest(
        name="g-rule@.service", text=UNIT, desired_state="launched"))
    assert created.unit.desired_state == "inactive"
    status, _ = await api.put("h-rule@.service", "launched", UNIT)
    assert status == 201
    status, body = await api.get("h-rule@.service")
    assert status == 200 and body["desiredState"] == "inactive"
    for name in ("g-rule@.service", "h-rule@.service"):
        assert await api.desired(name) == "inactive"


async def test_bad_names_and_machine_of_cycles_are_refused_by_both(api: Api) -> None:
    bad = "no-suffix"
    code, msg = await api.grpc_error(api.grpc.CreateUnit(pb.CreateUnitRequest(
        name=bad, text=UNIT, desired_state="launched")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unit type suffix" in msg
    status, body = await api.put(bad, "launched", UNIT)
    assert status == 400 and body["error"]["message"] == msg
    await api.grpc.CreateUnit(pb.CreateUnitRequest(name="rule-a.service", text=CYCLE_A))
    code, msg = await api.grpc_error(api.grpc.CreateUnit(pb.CreateUnitRequest(
        name="rule-b.service", text=CYCLE_B, desired_state="launched")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "MachineOf cycle rule-b.service -> rule-a.service -> rule-b.service" in msg
    status, body = await api.put("rule-b.service", "launched", CYCLE_B)
    assert status == 400 and body["error"]["message"] == msg
    assert await api.desired("rule-b.service") is None  # neither created it


async def test_an_at_dot_instance_is_scheduled_and_why_agrees(api: Api) -> None:
    # The engine used to take every name containing "@." for a template and never schedule
    # it, while the API accepted it as the instance it is (instance ".b").
    name = "rule@.b.service"
    created = await api.grpc.CreateUnit(pb.CreateUnitRequest(
        name=name, text=UNIT, desired_state="launched"))
    assert created.unit.desired_state == "launched"

    async def placed() -> bool:
        return name in (await api.registry.machine_schedule(api.machine_id))[0]

    await until(placed, 10, f"{name} scheduled")
    why = await api.grpc.ExplainUnit(pb.ExplainUnitRequest(name=name))
    assert list(why.scheduled_on) == [api.machine_id]
    assert list(why.feasible) == [api.machine_id] and not why.unschedulable_reason


async def test_a_template_stored_active_past_the_api_gets_the_apis_refusal_as_reason(
        api: Api) -> None:
    # Written straight to etcd (an older fleetd, etcdctl): the engine no longer skips it
    # silently; both front ends show why it does not run.
    name = "stored@.service"
    await api.registry.create_unit(UnitRecord(name, UNIT, Unit.from_text(name, UNIT).hash),
                                   "launched")

    async def reason() -> str:
        return (await api.grpc.GetUnit(pb.GetUnitRequest(name=name))).unschedulable_reason

    found = await until(reason, 10, "the engine's reason for the stored template")
    assert found.startswith(f"cannot activate template {name}")
    why = await api.grpc.ExplainUnit(pb.ExplainUnitRequest(name=name))
    assert why.unschedulable_reason == found and not why.scheduled_on


def _outcome(o: Any) -> tuple[int, str]:
    return o.code, o.message


async def test_create_units_answers_each_unit_as_create_unit_would(api: Api) -> None:
    # One call: a new unit, a bad name, a template and an instance made from it (no text),
    # the same file as a unit that exists (its desired state is set), a different file under
    # an existing name, a MachineOf cycle closed within the call, a name given twice.
    await api.grpc.CreateUnit(pb.CreateUnitRequest(name="old.service", text=UNIT))
    await api.grpc.CreateUnit(pb.CreateUnitRequest(name="other.service", text=UNIT))
    req = [("new.service", UNIT, "launched"), ("no-suffix", UNIT, "launched"),
           ("web@.service", UNIT, "launched"), ("web@1.service", "", "launched"),
           ("old.service", UNIT, "loaded"), ("other.service", UNIT.replace("1000", "999"), ""),
           ("rule-c.service", CYCLE_A.replace("rule-b", "rule-d"), ""),
           ("rule-d.service", CYCLE_B.replace("rule-a", "rule-c"), "launched"),
           ("new.service", UNIT, "launched")]
    got = await api.grpc.CreateUnits(pb.CreateUnitsRequest(units=[
        pb.CreateUnitRequest(name=n, text=t, desired_state=d) for n, t, d in req]))
    assert len(got.outcomes) == len(req)
    new, bad, tmpl, inst, old, other, c, d, again = got.outcomes
    assert new.code == 0 and new.response.created and new.response.unit.desired_state == "launched"
    assert bad.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "unit type suffix" in bad.message
    assert tmpl.code == 0 and tmpl.response.unit.desired_state == "inactive"
    assert inst.code == 0 and inst.response.created
    assert inst.response.unit.hash == tmpl.response.unit.hash  # the template's file
    assert old.code == 0 and not old.response.created
    assert old.response.unit.desired_state == "loaded"
    assert other.code == grpc.StatusCode.ALREADY_EXISTS.value[0]
    assert "already exists with a different file" in other.message
    assert c.code == 0
    assert d.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "MachineOf cycle rule-d.service -> rule-c.service -> rule-d.service" in d.message
    assert again.code == 0 and not again.response.created
    # What etcd holds is what the answers say.
    assert await api.desired("new.service") == "launched"
    assert await api.desired("web@1.service") == "launched"
    assert await api.desired("old.service") == "loaded"
    assert await api.desired("other.service") == "inactive"
    assert await api.desired("rule-c.service") == "inactive"
    assert await api.desired("rule-d.service") is None
    assert await api.desired("no-suffix") is None
    # The same refusals, word for word, as CreateUnit's.
    for n, t, d_ in (req[1], req[5]):
        code, msg = await api.grpc_error(api.grpc.CreateUnit(pb.CreateUnitRequest(
            name=n, text=t, desired_state=d_)))
        assert msg in (bad.message, other.message) and code.value[0] in (bad.code, other.code)


async def test_create_units_writes_new_units_together_and_the_engine_places_them_all(
        api: Api) -> None:
    names = [f"batch{i:03d}.service" for i in range(100)]
    got = await api.grpc.CreateUnits(pb.CreateUnitsRequest(units=[
        pb.CreateUnitRequest(name=n, text=UNIT, desired_state="launched") for n in names]))
    assert [o.code for o in got.outcomes] == [0] * 100
    assert all(o.response.created for o in got.outcomes)
    kvs, _ = await api.registry.etcd.get_prefix(api.registry.keys.units)
    revisions = {kv.create_revision for kv in kvs if kv.key.rsplit("/", 1)[-1] in names}
    assert len(revisions) == 2  # 64 + 36: one transaction each

    async def all_placed() -> bool:
        return set(names) <= set((await api.registry.machine_schedule(api.machine_id))[0])

    await until(all_placed, 20, "the 100 units scheduled")


async def test_create_units_reports_etcd_failing_midway_for_the_units_not_written(
        api: Api) -> None:
    # A fault-injecting wrapper around the real etcd client: the second transaction fails.
    real_txn = api.registry.etcd.txn
    calls = 0

    async def txn(*args: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise EtcdError("txn: etcd unreachable (injected)")
        return await real_txn(*args, **kw)

    names = [f"half{i:03d}.service" for i in range(100)]
    api.registry.etcd.txn = txn  # type: ignore[method-assign]
    try:
        got = await api.grpc.CreateUnits(pb.CreateUnitsRequest(units=[
            pb.CreateUnitRequest(name=n, text=UNIT) for n in names]))
    finally:
        api.registry.etcd.txn = real_txn  # type: ignore[method-assign]
    codes = [o.code for o in got.outcomes]
    assert codes == [0] * 64 + [grpc.StatusCode.UNAVAILABLE.value[0]] * 36
    assert "injected" in got.outcomes[-1].message
    assert await api.desired(names[63]) == "inactive"
    assert await api.desired(names[64]) is None
