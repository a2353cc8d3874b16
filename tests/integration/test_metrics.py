"""fleetd's Prometheus metrics, scraped over HTTP from a running cluster."""

from __future__ import annotations

import re
import urllib.request

from fleetd.localcluster import LocalCluster, LocalMachine
from tests.integration.conftest import UNITS_DIR, machines_running, wait_until


def scrape(m: LocalMachine) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{m.metrics_port}/metrics", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def total(samples: dict[str, float], pattern: str) -> float:
    return sum(v for k, v in samples.items() if re.fullmatch(pattern, k))


def test_metrics_count_engine_agent_and_lease_work(cluster: LocalCluster) -> None:
    cluster.fleetctl("start", str(UNITS_DIR / "hello.service"), check=True)
    try:
        [mid] = machines_running(cluster, "hello.service")
        holder = cluster.machine(mid)
        s = scrape(holder)
        assert total(s, r'fleet_agent_tasks_total\{type="StartUnit"\}') >= 1
        assert total(s, r'fleet_agent_units\{active_state="active"\}') >= 1
        all_samples = [scrape(m) for m in cluster.machines]
        leaders = [x for x in all_samples if x.get("fleet_engine_leader") == 1.0]
        assert len(leaders) == 1
        assert leaders[0]["fleet_engine_reconcile_total"] >= 1
        assert total(leaders[0], r"fleet_engine_reconcile_duration_seconds_count") >= 1
        # Leases are renewed every agent_ttl/3 seconds.
        wait_until(lambda: all(scrape(m).get("fleet_lease_renewals_total", 0) >= 1
                               for m in cluster.machines), cluster.agent_ttl_s * 2,
                   what="lease renewals counted")
    finally:
        cluster.fleetctl("destroy", "hello.service")
