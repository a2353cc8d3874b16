"""The engine's cache of the cluster: what it folds in from etcd keys."""

from __future__ import annotations

import json
from types import SimpleNamespace

from fleetd.engine.engine import Engine, EngineCache
from fleetd.registry import MachineRecord, Registry
from fleetd.registry.schema import encode


def test_engine_schedules_against_api_metadata_merged_over_configured() -> None:
    """The leader's cache folds `<p>/metadata/<id>` in; a change there is a relevant event."""
    reg = Registry(None, "/p/")  # type: ignore[arg-type]  # no etcd needed: cache only
    engine = Engine(reg, SimpleNamespace(identity=SimpleNamespace(id="m1")))  # type: ignore
    c = EngineCache()
    k = reg.keys
    assert engine._apply_kv(c, k.machine("m1"), encode(MachineRecord("m1", "ip",
                                                                     {"region": "us",
                                                                      "disk": "ssd"})))
    assert engine._apply_kv(c, k.machine_metadata("m1"),
                            json.dumps({"role": "web", "disk": None}).encode())
    engine.cache = c
    snap, _ = engine.snapshot()
    assert dict(snap.machines["m1"].metadata) == {"region": "us", "role": "web"}
    assert engine._apply_kv(c, k.machine_metadata("m1"), None)
    snap, _ = engine.snapshot()
    assert dict(snap.machines["m1"].metadata) == {"region": "us", "disk": "ssd"}
