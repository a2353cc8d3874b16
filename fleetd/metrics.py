"""Prometheus metrics of fleetd, served over HTTP at `metrics_listen` (`/metrics`).

One registry per process; components record through the module-level metric objects.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger("fleetd.metrics")

REGISTRY = CollectorRegistry()

ENGINE_RECONCILES = Counter("fleet_engine_reconcile_total", "Engine reconcile passes",
                            registry=REGISTRY)
ENGINE_RECONCILE_SECONDS = Histogram(
    "fleet_engine_reconcile_duration_seconds", "Duration of one engine reconcile pass",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=REGISTRY)
ENGINE_UNSCHEDULABLE = Gauge(
    "fleet_engine_unschedulable_units", "Units the engine could not place, by failing check",
    ["reason"], registry=REGISTRY)
ENGINE_LEADER = Gauge("fleet_engine_leader", "1 while this fleetd leads the engine",
                      registry=REGISTRY)
AGENT_TASKS = Counter("fleet_agent_tasks_total", "Tasks the agent applied to systemd",
                      ["type"], registry=REGISTRY)
AGENT_TASK_SECONDS = Histogram(
    "fleet_agent_task_duration_seconds", "Duration of one agent task", ["type"],
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5), registry=REGISTRY)
UNITS_BY_STATE = Gauge("fleet_agent_units", "Units on this machine by systemd active state",
                       ["active_state"], registry=REGISTRY)
ETCD_ERRORS = Counter("fleet_etcd_request_errors_total", "etcd requests that failed",
                      ["operation"], registry=REGISTRY)
LEASE_RENEWALS = Counter("fleet_lease_renewals_total", "Successful machine lease renewals",
                         registry=REGISTRY)
LEASE_LOSSES = Counter("fleet_lease_losses_total", "Times the machine lease was lost (fencing)",
                       registry=REGISTRY)
LOOP_LAG_SECONDS = Histogram(
    "fleet_event_loop_lag_seconds", "How late fleetd's event loop ran a 100 ms timer (a stall "
    "delays lease renewals: past the fence point it fences)",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=REGISTRY)
LEASE_KEPT = Counter("fleet_lease_kept_after_fence_total",
                     "Fences after which the lease proved still alive: units started again here",
                     registry=REGISTRY)


async def _handle(request: web.Request) -> web.Response:
    from aiohttp import web

    return web.Response(body=generate_latest(REGISTRY),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


async def start_metrics_server(address: str) -> web.AppRunner:
    """Serve /metrics on `address` (host:port) on the running asyncio loop."""
    from aiohttp import web  # only here: the metrics every process records need no HTTP

    host, _, port = address.rpartition(":")
    app = web.Application()
    app.router.add_get("/metrics", _handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host or "127.0.0.1", int(port)).start()
    log.info("metrics on http://%s/metrics", address)
    return runner


#: A loop stall this long is logged (a renewal waits behind it), with this text.
LOOP_LAG_WARN_S = 0.25
STALL_LOG = "event loop stalled"


async def watch_loop_lag(period_s: float = 0.1) -> None:
    """Measure how late the event loop runs a periodic timer: the time any callback (an engine
    pass, a parse, a big response) held the loop, which every lease renewal waits behind."""
    loop = asyncio.get_running_loop()
    while True:
        due = loop.time() + period_s
        await asyncio.sleep(period_s)
        lag = max(0.0, loop.time() - due)
        LOOP_LAG_SECONDS.observe(lag)
        if lag >= LOOP_LAG_WARN_S:
            log.warning("%s %.2fs (lease renewals wait behind it)", STALL_LOG, lag)
