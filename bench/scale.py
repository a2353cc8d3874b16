"""Scale benchmarks: 1,000 simulated machines and 10,000 units (a tenth with --quick).

The engine and the API run in a real fleetd (with its own real systemd --user manager); the
simulated machines are real agents in this process whose systemd is `SimulatedSystemd`.
Simulated units carry `MachineMetadata=sim=yes`, so they land on simulated machines only.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from typing import Any

import grpc

from bench.simulation import SimulatedFleet
from fleetctl.client import BATCH_UNITS, MAX_IN_FLIGHT
from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc
from fleetd.fencing import renew_interval_s
from fleetd.localcluster import LocalCluster

SIM_UNIT = ("[Unit]\nDescription=simulated unit\n\n[Service]\nExecStart=/bin/true\n\n"
            "[X-Fleet]\nMachineMetadata=sim=yes\n")


def etcd_requests_by_method(cluster: LocalCluster) -> dict[str, float]:
    """Requests etcd has received so far by gRPC method, from its own metrics endpoint.

    Counted as request messages received (grpc_server_msg_received_total): a keep-alive or a
    watch is one message on a stream, counted when it arrives; handled_total would count a
    stream only when it closes."""
    url = f"http://127.0.0.1:{cluster.etcd.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("grpc_server_msg_received_total{"):
            method = line.split('grpc_method="', 1)[1].split('"', 1)[0]
            out[method] = out.get(method, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def etcd_requests(cluster: LocalCluster) -> float:
    return sum(etcd_requests_by_method(cluster).values())


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def count_prefix(fleet: SimulatedFleet, prefix: str) -> int:
    kvs, _ = await fleet.client.get_prefix(prefix)
    return len(kvs)


async def wait_for(cond: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(interval_s)


async def run(machines: int, units: int, idle_s: float, log: Any = print,
              sim_ttl_s: int = 10) -> dict[str, float]:
    """The scale figures. `sim_ttl_s` is the simulated machines' lease TTL: on a loaded host
    one process cannot renew 1,000 leases of 10 s in time (they fence), a longer one can (it
    also means fewer keep-alives: the idle budget below follows it)."""
    results: dict[str, float] = {}
    cluster = LocalCluster(1, agent_ttl_s=10)
    cluster.start()
    fleet = SimulatedFleet(cluster.etcd.endpoint, cluster.prefix, machines, ttl_s=sim_ttl_s)
    for m in fleet.machines:
        m.identity.metadata["sim"] = "yes"
    channel = grpc.aio.insecure_channel(cluster.machines[0].endpoint)
    stub = pb_grpc.FleetStub(channel)
    keys = fleet.registry.keys
    try:
        t0 = time.monotonic()
        await fleet.start()
        await wait_for(lambda: _eq(count_prefix(fleet, keys.machines), machines + 1), 120,
                       "machines registered")
        log(f"  {machines} simulated machines registered in {time.monotonic() - t0:.1f}s")
        # A simulated machine that lost its lease meanwhile (this process fell too far behind
        # on renewals) re-registers with a new one: its units moved, and the figures below
        # then measure the harness's overload, not fleetd. Counted, and said loudly.
        generations = [m.session.generation for m in fleet.machines]

        def relet() -> int:
            return sum(m.session.generation != g for m, g in zip(fleet.machines, generations,
                                                                 strict=True))

        # --- engine_schedule_10k_s: submit and start `units` units, as `fleetctl start` of
        # that many files does (CreateUnits of BATCH_UNITS each, MAX_IN_FLIGHT at once); all
        # decisions written.
        sem = asyncio.Semaphore(MAX_IN_FLIGHT)

        async def create(names: list[str]) -> None:
            async with sem:
                got = await stub.CreateUnits(pb.CreateUnitsRequest(units=[
                    pb.CreateUnitRequest(name=n, text=SIM_UNIT, desired_state="launched")
                    for n in names]), timeout=60)
            refused = [(n, o.message) for n, o in zip(names, got.outcomes, strict=True)
                       if o.code]
            if refused:
                raise RuntimeError(f"{len(refused)} units refused, first: {refused[0]}")

        fleetd = cluster.machines[0].fleetd
        assert fleetd is not None
        cpu0 = (cpu_s(fleetd.pid), cpu_s(os.getpid()))
        t0 = time.monotonic()
        names = [f"sim-{i:05d}.service" for i in range(units)]
        await asyncio.gather(*(create(names[i:i + BATCH_UNITS])
                               for i in range(0, units, BATCH_UNITS)))
        submitted = time.monotonic() - t0
        await wait_for(lambda: _eq(count_prefix(fleet, keys.schedule), units), 600,
                       "all units scheduled", 0.2)
        results["engine_schedule_10k_s"] = round(time.monotonic() - t0, 2)
        # Where that time went: CPU of the fleetd serving the API and the engine, and of this
        # process (the simulated machines' agents and the API clients); on a small host their
        # sum, with etcd's, bounds the figure.
        results["engine_schedule_10k_fleetd_cpu_s"] = round(cpu_s(fleetd.pid) - cpu0[0], 1)
        results["engine_schedule_10k_sim_cpu_s"] = round(cpu_s(os.getpid()) - cpu0[1], 1)
        log(f"  {units} units submitted in {submitted:.1f}s, all scheduled after "
            f"{results['engine_schedule_10k_s']:.1f}s (CPU: fleetd "
            f"{results['engine_schedule_10k_fleetd_cpu_s']:.1f}s, simulated machines "
            f"{results['engine_schedule_10k_sim_cpu_s']:.1f}s)")
        results["engine_schedule_10k_relet_machines"] = float(relet())
        if relet():
            log(f"  WARNING: {relet()} of {machines} simulated machines lost their lease while "
                "the units were scheduled (this process could not renew them in time): the "
                "figure above measures that overload, not the engine")
        await wait_for(lambda: _true(fleet.running_units() >= units), 600, "all units active",
                       0.2)
        log(f"  all {units} simulated units active after {time.monotonic() - t0:.1f}s")
        await asyncio.sleep(2)

        # --- idle_etcd_requests_per_s: nothing changes; only lease keep-alives should flow.
        idle_before = etcd_requests_by_method(cluster)
        before, t0 = etcd_requests(cluster), time.monotonic()
        await asyncio.sleep(idle_s)
        idle_rate = (etcd_requests(cluster) - before) / (time.monotonic() - t0)
        idle_after = etcd_requests_by_method(cluster)
        log("  idle per-method delta: " + ", ".join(
            f"{m}={idle_after[m] - idle_before.get(m, 0):.0f}" for m in sorted(idle_after)
            if idle_after[m] != idle_before.get(m, 0)))
        results["idle_etcd_requests_per_s"] = round(idle_rate, 1)
        budget = machines / renew_interval_s(sim_ttl_s) + 1 / renew_interval_s(10)
        log(f"  idle: {idle_rate:.1f} etcd requests/s with {machines + 1} machines "
            f"(keep-alive budget {budget:.1f}/s)")

        # --- engine_one_decision_ms_p50: one more unit -> its schedule key written (seen
        # through one etcd watch, so the measurement adds no polling load).
        seen: dict[str, asyncio.Future[float]] = {}
        stream = fleet.client.watch_prefix(keys.schedule, 0)

        async def watch() -> None:
            async for batch in stream:
                for ev in batch:
                    name = ev.kv.key.rsplit("/", 1)[-1]
                    fut = seen.get(name)
                    if fut is not None and not fut.done():
                        fut.set_result(time.perf_counter())

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0.2)
        lat = []
        loop = asyncio.get_running_loop()
        for i in range(20):
            name = f"one-{i:03d}.service"
            seen[name] = loop.create_future()
            t0 = time.perf_counter()
            await stub.CreateUnit(pb.CreateUnitRequest(name=name, text=SIM_UNIT,
                                                       desired_state="launched"), timeout=60)
            lat.append((await asyncio.wait_for(seen[name], 30) - t0) * 1000)
            await asyncio.sleep(0.05)
        watcher.cancel()
        results["engine_one_decision_ms_p50"] = round(statistics.median(lat), 2)
        log(f"  one more unit -> schedule key written: p50 "
            f"{results['engine_one_decision_ms_p50']:.1f} ms (min {min(lat):.1f}, "
            f"max {max(lat):.1f})")

        # --- etcd_requests_per_decision: every etcd request the cluster makes to take a new
        # unit from the API call to running and reported, keep-alives subtracted.
        await asyncio.sleep(1)
        k = 20
        by_method = etcd_requests_by_method(cluster)
        t0 = time.monotonic()
        for i in range(k):
            await stub.CreateUnit(pb.CreateUnitRequest(name=f"req-{i:03d}.service",
                                                       text=SIM_UNIT, desired_state="launched"),
                                  timeout=60)
        await asyncio.sleep(2)
        after = etcd_requests_by_method(cluster)
        # Lease keep-alives run on their own clock, not because of the new units.
        per = sum(after[m] - by_method.get(m, 0) for m in after if m != "LeaseKeepAlive") / k
        log("  per-method delta: " + ", ".join(
            f"{m}={after[m] - by_method.get(m, 0):.0f}" for m in sorted(after)
            if after[m] != by_method.get(m, 0)))
        results["etcd_requests_per_decision"] = round(per, 2)
        log(f"  etcd requests per new unit (API call to reported running): {per:.2f}")

        # --- list_units_10k_rpc_ms: the two calls of list-units alone (no CLI start-up), from
        # this process, which also runs the simulated agents (their load is in the figure).
        rpc_times = []
        for _ in range(5):
            t0 = time.perf_counter()
            await stub.ListUnits(pb.ListUnitsRequest(), timeout=60)
            await stub.ListUnitStates(pb.ListUnitStatesRequest(), timeout=60)
            rpc_times.append((time.perf_counter() - t0) * 1000)
        results["list_units_10k_rpc_ms"] = round(statistics.median(rpc_times), 1)
        log(f"  ListUnits + ListUnitStates: {results['list_units_10k_rpc_ms']:.0f} ms")

        # --- list_units_10k_ms: the real CLI against the real fleetd.
        env = {**os.environ, "FLEETCTL_ENDPOINT": cluster.machines[0].endpoint}
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            r = subprocess.run([sys.executable, "-m", "fleetctl", "list-units", "--no-legend"],
                               env=env, capture_output=True, text=True, timeout=120)
            times.append((time.perf_counter() - t0) * 1000)
            if r.returncode != 0:
                raise RuntimeError(r.stderr)
        rows = len(r.stdout.splitlines())
        results["list_units_10k_ms"] = round(statistics.median(times), 1)
        log(f"  fleetctl list-units with {rows} rows: {results['list_units_10k_ms']:.0f} ms")
    finally:
        await channel.close()
        await fleet.stop()
        cluster.cleanup()
    return results


async def _eq(coro: Any, value: int) -> bool:
    return bool(await coro == value)


async def _true(value: bool) -> bool:
    return value
