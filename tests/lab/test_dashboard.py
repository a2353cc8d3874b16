"""The web dashboard in a real headless browser (Debian's chromium through chromium-driver and
selenium) on the nspawn lab, reached through `fleetctl dashboard`'s loopback proxy with the
lab's fleetctl credentials, as an operator would open it.

Each test leaves screenshots in artifacts/dashboard/ (named in the README) and the first one
records the page's load time and bytes in artifacts/dashboard/load.json. m2 and m3 carry
`role=worker` and the test units ask for it, so a power cut never hits m1, the machine whose
HTTP listener the proxy forwards to (`fleet-lab env`'s FLEET_HTTP_ENDPOINT).
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.lab.conftest import (
    REPO,
    active_on,
    fleetctl,
    is_active,
    lab,
    lab_env,
    machine_ids,
    name_of,
    reset_cluster,
    running_lab,
    wait_until,
)

T = TypeVar("T")
#: How the proxy is started: `fleetctl dashboard` once the CLI has the command.
DASHBOARD_COMMAND = [os.path.join(os.path.dirname(sys.executable), "fleetctl"), "dashboard"]
ARTIFACTS = REPO / "artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WORKERS = {"m2": "role=worker", "m3": "role=worker"}


@pytest.fixture(scope="module")
def lab_workers() -> Iterator[None]:
    with running_lab(3, WORKERS):
        yield


class DashboardProxy:
    """`fleetctl dashboard` on a loopback port, with the lab's fleetctl environment."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, listen: str = "127.0.0.1:0") -> str:
        proc = subprocess.Popen([*DASHBOARD_COMMAND, "--listen", listen],
                                env={**os.environ, **lab_env()}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("Dashboard: "):
            proc.kill()
            raise AssertionError(f"fleetctl dashboard did not start: {line}"
                                 f"{proc.communicate()[1]}")
        self.proc, self.url = proc, line.split()[-1]
        return self.url

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            assert self.proc.wait(10) == 0
            self.proc = None


@pytest.fixture(scope="module")
def proxy(lab_workers: None) -> Iterator[DashboardProxy]:
    p = DashboardProxy()
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def proxy_url(proxy: DashboardProxy) -> str:
    return proxy.url


@pytest.fixture(scope="module")
def browser(proxy_url: str) -> Iterator[WebDriver]:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--no-first-run", "--disable-extensions",
                "--disable-background-networking", "--disable-component-update"):
        opts.add_argument(arg)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def clean(lab_workers: None) -> Iterator[None]:
    reset_cluster()
    yield
    reset_cluster()


def until(d: WebDriver, fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """Poll the page (every 50 ms) until fn returns a truthy value."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            got = fn()
        except (StaleElementReferenceException, WebDriverException):
            got = None  # re-rendered between find and read
        if got:
            return got
        if time.monotonic() > deadline:
            shot(d, "timeout-" + what.replace(" ", "-")[:40])
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def read(d: WebDriver, fn: Callable[[], T], timeout_s: float = 5) -> T:
    """Read the page once it holds still: fn is re-run when a render (the lease ticks re-render
    the machines every second) replaced an element between its find and its read."""
    return until(d, lambda: (fn(),), timeout_s, "a stable read of the page")[0]


def click(d: WebDriver, css: str) -> None:
    """Click the element `css` selects, found afresh (a render may replace it between the find
    and the click: the unit page re-renders its buttons on every event)."""
    def once() -> bool:
        d.find_element(By.CSS_SELECTOR, css).click()
        return True
    until(d, once, 5, f"a click on {css}")


def shot(d: WebDriver, name: str) -> None:
    d.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def cards(d: WebDriver, unit: str) -> list[dict[str, str]]:
    """The unit's cards in the cluster picture: machine id and active state of each."""
    return [{"machine": e.get_attribute("data-machine") or "",
             "active": e.get_attribute("data-active") or ""}
            for e in d.find_elements(By.CSS_SELECTOR, f'.card[data-unit="{unit}"]')]


def active_card(d: WebDriver, unit: str, exclude: str = "") -> str:
    for c in cards(d, unit):
        if c["active"] == "active" and c["machine"] != exclude:
            return c["machine"]
    return ""


def open_dashboard(d: WebDriver, url: str) -> None:
    d.get(url)
    until(d, lambda: d.find_element(By.ID, "conn").get_attribute("data-state") == "live", 20,
          "the live feed")


def snapshot_bytes(url: str) -> int:
    """Bytes of the live feed up to the end of its first event (the snapshot)."""
    host, _, port = url.split("/")[2].rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    try:
        conn.request("GET", "/dashboard/api/events")
        resp = conn.getresponse()
        total = 0
        while True:
            line = resp.readline()
            assert line, "the feed ended before its snapshot"
            total += len(line)
            if line.startswith(b"data: "):
                return total + len(resp.readline())
    finally:
        conn.close()


def worker_unit(tmp: pathlib.Path, name: str, body: str = "/bin/sleep infinity") -> str:
    path = tmp / name
    path.write_text(f"[Unit]\nDescription=dashboard lab test {name}\n\n[Service]\n"
                    f"ExecStart={body}\n\n[X-Fleet]\nMachineMetadata=role=worker\n")
    return str(path)


def test_page_lists_every_machine_and_unit(browser: WebDriver, proxy_url: str, clean: None,
                                           units_dir: pathlib.Path) -> None:
    names = ["dash-a.service", "dash-b.service", "dash-c.service"]
    fleetctl("start", *[worker_unit(units_dir, n) for n in names])
    open_dashboard(browser, proxy_url)
    ids = machine_ids()
    until(browser, lambda: all(active_card(browser, n) for n in names), 20,
          "every unit active on the page")
    shown = read(browser, lambda: {
        e.get_attribute("data-machine-id")
        for e in browser.find_elements(By.CSS_SELECTOR, "#cluster .machine:not([data-gone])")})
    assert shown == set(ids.values())
    rows = read(browser, lambda: {e.get_attribute("data-unit") for e in browser.find_elements(
        By.CSS_SELECTOR, "#units tbody tr[data-unit]")})
    assert rows == set(names)
    for n in names:  # on the machine the cluster says, never on m1 (no role=worker)
        where = fleetctl("list-units", "--no-legend", "-l", "--fields", "unit,machine").stdout
        mid = next(line.split()[1].split("/")[0] for line in where.splitlines()
                   if line.split()[0] == n)
        assert read(browser, lambda u=n: active_card(browser, u)) == mid  # type: ignore[misc]
        assert name_of(mid) in WORKERS
    machines_table = read(browser, lambda: {
        e.get_attribute("data-machine-id")
        for e in browser.find_elements(By.CSS_SELECTOR, "#machines tbody tr")})
    assert machines_table == set(ids.values())

    def health() -> dict[str, tuple[str, str, str]]:
        return {e.find_element(By.XPATH, "ancestor::tr").get_attribute("data-machine-id") or "":
                (e.get_attribute("data-health") or "", e.get_attribute("data-lease-left") or "",
                 e.get_attribute("data-lease-ttl") or "")
                for e in browser.find_elements(By.CSS_SELECTOR,
                                               "#machines td.health [data-health]")}
    until(browser, lambda: set(health()) == set(ids.values())
          and all(h[0] == "live" for h in health().values()), 10, "every machine's lease live")
    leases = read(browser, health)
    assert len({h[2] for h in leases.values()}) == 1 and all(
        0 < int(h[1]) <= int(h[2]) for h in leases.values()), leases
    shot(browser, "01-overview")

    def table_order() -> list[str]:
        return [e.get_attribute("data-unit") or "" for e in browser.find_elements(
            By.CSS_SELECTOR, "#units tbody tr[data-unit]")]
    assert read(browser, table_order) == names  # sorted by name
    click(browser, '#units th[data-sort="name"]')
    until(browser, lambda: table_order() == names[::-1], 5, "the units sorted descending")
    box = browser.find_element(By.ID, "filter")
    box.send_keys("dash-b")
    until(browser, lambda: table_order() == ["dash-b.service"], 5, "the filtered table")
    assert {e.get_attribute("data-unit") for e in browser.find_elements(
        By.CSS_SELECTOR, "#cluster .card[data-unit]")} == {"dash-b.service"}
    shot(browser, "01b-filtered")
    box.clear()
    box.send_keys(" ")  # clear() fires no input event: this does (and filters on nothing)
    until(browser, lambda: len(table_order()) == len(names), 5, "the filter cleared")
    # load time and bytes: Navigation/Resource Timing of a load through the proxy with the
    # browser's cache off, and the size of the snapshot the live feed starts with
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    browser.get("about:blank")
    t0 = time.monotonic()
    open_dashboard(browser, proxy_url)
    until(browser, lambda: all(active_card(browser, n) for n in names), 20,
          "every unit on the page again")
    live_s = time.monotonic() - t0
    browser.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
    timing: dict[str, Any] = browser.execute_script("""
        const nav = performance.getEntriesByType('navigation')[0];
        const res = performance.getEntriesByType('resource');
        return {dom_content_loaded_ms: nav.domContentLoadedEventEnd, load_ms: nav.loadEventEnd,
                html_bytes: nav.encodedBodySize,
                static: res.filter(r => r.name.includes('/static/')).map(
                    r => ({name: r.name.split('/').pop(), bytes: r.encodedBodySize,
                           decoded: r.decodedBodySize}))};""")
    timing["open_to_every_unit_shown_s"] = round(live_s, 3)
    timing["snapshot_event_bytes"] = snapshot_bytes(proxy_url)
    timing["total_static_bytes"] = timing["html_bytes"] + sum(r["bytes"]
                                                              for r in timing["static"])
    (ARTIFACTS / "load.json").write_text(json.dumps(timing, indent=1) + "\n")
    print(f"dashboard load: {timing}")
    assert timing["load_ms"] < 5000 and timing["total_static_bytes"] < 100_000


def test_started_unit_appears_within_two_seconds_without_reload(
        browser: WebDriver, proxy_url: str, clean: None, units_dir: pathlib.Path) -> None:
    open_dashboard(browser, proxy_url)
    browser.execute_script("window.__no_reload = 'same page';")
    path = worker_unit(units_dir, "dash-new.service")
    assert not cards(browser, "dash-new.service")
    t_call = time.monotonic()
    fleetctl("start", "--no-block", path)
    t0 = time.monotonic()
    until(browser, lambda: cards(browser, "dash-new.service"), 2.0,
          "the started unit on the page within 2 s")
    seen_s = time.monotonic() - t0
    until(browser, lambda: active_card(browser, "dash-new.service"), 20, "the unit active")
    active_s = time.monotonic() - t_call
    assert browser.execute_script("return window.__no_reload;") == "same page"
    print(f"dash-new.service on the page {seen_s:.3f}s after fleetctl returned; active on the "
          f"page {active_s:.3f}s after fleetctl was run")
    shot(browser, "02-started-unit")


def test_power_cut_shows_the_unit_moving_to_another_machine(
        browser: WebDriver, proxy_url: str, clean: None, units_dir: pathlib.Path) -> None:
    fleetctl("start", worker_unit(units_dir, "dash-move.service"))
    open_dashboard(browser, proxy_url)
    browser.execute_script("window.__no_reload = 'same page';")
    victim_id = until(browser, lambda: active_card(browser, "dash-move.service"), 20,
                      "dash-move.service active")
    victim = name_of(victim_id)
    assert victim in WORKERS
    shot(browser, "03-before-power-cut")
    t0 = time.monotonic()
    lab("stop", victim)
    new_id = until(browser, lambda: active_card(browser, "dash-move.service",
                                                exclude=victim_id), 90,
                   "dash-move.service active on another machine")
    moved_s = time.monotonic() - t0
    assert name_of(new_id) in WORKERS and new_id != victim_id
    assert active_on("dash-move.service") == [name_of(new_id)]  # systemd agrees
    # The page re-renders on every event: read the lost tile and the new card in one script
    # (no element handle kept across a render) and wait for the state the page settles in.
    def after_move() -> dict[str, str] | None:
        got = browser.execute_script(
            """const [lost, unit, now] = arguments;
               const tile = document.querySelector(
                 `#cluster .machine[data-machine-id="${lost}"]`);
               const card = document.querySelector(
                 `.card[data-unit="${unit}"][data-machine="${now}"]`);
               if (!tile || !card) return null;
               const ghost = tile.querySelector(`[data-ghost="${unit}"]`);
               return {gone: tile.getAttribute("data-gone") || "", tile: tile.innerText,
                       ghost: ghost ? ghost.innerText : "", card: card.innerText};""",
            victim_id, "dash-move.service", new_id)
        if got and got["gone"] == "true" and "now on" in got["ghost"]:
            return dict(got)
        return None
    seen = until(browser, after_move, 5, "the lost machine's tile gone, its card pointing on")
    assert seen is not None
    assert "lease expired" in seen["tile"], seen
    assert "moved from" in seen["card"], seen
    # The page holds that state: read it again, found afresh (the lease ticks re-render the tile
    # every second, so an element handle kept from the read above can go stale).
    again = until(browser, after_move, 5, "the lost tile and the moved card on a second read")
    assert "lease expired" in again["tile"] and "moved from" in again["card"], again
    assert browser.execute_script("return window.__no_reload;") == "same page"
    print(f"power cut of {victim}: the page showed dash-move.service active on "
          f"{name_of(new_id)} {moved_s:.2f}s later")
    shot(browser, "04-after-failover")


def test_stop_button_stops_the_unit(browser: WebDriver, proxy_url: str, clean: None,
                                    units_dir: pathlib.Path) -> None:
    fleetctl("start", worker_unit(units_dir, "dash-stop.service"))
    open_dashboard(browser, proxy_url + "#/unit/dash-stop.service")
    until(browser, lambda: browser.find_elements(
        By.CSS_SELECTOR, '#unit-where tr[data-active="active"]'), 20, "the unit active")
    machine = name_of(read(browser, lambda: browser.find_element(
        By.CSS_SELECTOR, '#unit-where tr[data-active="active"]').get_attribute(
            "data-machine-id")) or "")
    assert is_active(machine, "dash-stop.service")
    click(browser, "#btn-stop")
    dialog = browser.find_element(By.ID, "confirm")
    until(browser, dialog.is_displayed, 5, "the confirmation dialog")
    assert "Stop dash-stop.service?" in dialog.text
    shot(browser, "05-stop-confirmation")
    click(browser, "#confirm-cancel")  # cancelled: nothing is sent
    until(browser, lambda: not dialog.is_displayed(), 5, "the dialog closed")
    assert not browser.find_elements(By.ID, "action-notice")
    assert browser.find_element(By.ID, "unit-desired").text == "launched"
    click(browser, "#btn-stop")
    until(browser, dialog.is_displayed, 5, "the confirmation dialog again")
    click(browser, "#confirm-ok")
    wait_until(lambda: not is_active(machine, "dash-stop.service"), 30,
               what=f"dash-stop.service stopped in {machine}'s systemd")
    until(browser, lambda: browser.find_element(By.ID, "unit-desired").text == "loaded", 10,
          "desired state loaded on the page")
    # The page follows what the machine's agent publishes: active no more (deactivating, then
    # inactive once the agent publishes it; see fleetctl's view printed below).
    until(browser, lambda: browser.find_elements(
        By.CSS_SELECTOR, '#unit-where tr[data-active]:not([data-active="active"])'), 10,
          "the unit no longer active on the page")
    print("fleetctl after the stop button:", fleetctl(
        "list-units", "--no-legend", "--fields", "unit,active,sub").stdout.strip())
    assert lab("exec", machine, "--", "systemctl", "is-active", "dash-stop.service",
               check=False).stdout.strip() in ("inactive", "failed")
    shot(browser, "06-stopped")


def test_a_drained_machine_shows_draining_and_its_capacity(
        browser: WebDriver, proxy_url: str, clean: None) -> None:
    open_dashboard(browser, proxy_url)
    m3 = machine_ids()["m3"]

    def column() -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'#cluster .machine[data-machine-id="{m3}"]')
    assert read(browser, lambda: column().get_attribute("data-state")) == "active"
    # the lab's machines publish the host's capacity: the column says what is free of it
    assert "free" in read(browser, lambda: column().find_element(
        By.CSS_SELECTOR, "[data-capacity]").text)
    fleetctl("drain", "--no-block", m3)
    try:
        until(browser, lambda: column().get_attribute("data-state") == "draining", 2.0,
              "m3 shown draining within 2 s")
        assert "draining" in read(browser, lambda: column().find_element(
            By.CSS_SELECTOR, "h3").text)
        assert read(browser, lambda: browser.find_element(
            By.CSS_SELECTOR, f'#machines tr[data-machine-id="{m3}"] .machine-state').text
        ) == "draining"
        shot(browser, "07-draining")
    finally:
        fleetctl("undrain", m3)
    until(browser, lambda: column().get_attribute("data-state") == "active", 2.0,
          "m3 shown active again after undrain")


def test_journal_line_written_by_the_unit_appears_on_its_page(
        browser: WebDriver, proxy_url: str, clean: None, units_dir: pathlib.Path) -> None:
    token = f"dash-journal-{uuid.uuid4().hex[:12]}"
    fleetctl("start", worker_unit(units_dir, "dash-log.service",
                                  f"/bin/sh -c 'while true; do echo {token}; sleep 1; done'"))
    open_dashboard(browser, proxy_url + "#/unit/dash-log.service")
    until(browser, lambda: browser.find_elements(
        By.CSS_SELECTOR, '#unit-where tr[data-active="active"]'), 20, "the unit active")
    journal = browser.find_element(By.ID, "journal")
    first = until(browser, lambda: journal.text if token in journal.text else "", 20,
                  "a journal line of the unit")
    count = first.count(token)
    # lines keep arriving without a reload: the journal is followed live
    until(browser, lambda: journal.text.count(token) > count, 10, "a newer journal line")
    where = browser.find_element(By.ID, "journal-where").text.lower()  # (CSS upper-cases it)
    assert "following" in where and any(f"on {m} " in where for m in WORKERS), where
    file_text = browser.find_element(By.ID, "unit-file").text
    assert "MachineMetadata=role=worker" in file_text and token in file_text
    shot(browser, "07-unit-page-journal")


def test_page_shows_a_dropped_connection_and_resumes_from_the_last_revision(
        browser: WebDriver, proxy: DashboardProxy, clean: None,
        units_dir: pathlib.Path) -> None:
    url = proxy.url
    open_dashboard(browser, url)
    browser.execute_script("window.__no_reload = 'same page';")
    conn = browser.find_element(By.ID, "conn")
    proxy.stop()
    until(browser, lambda: conn.get_attribute("data-state") == "disconnected", 15,
          "the disconnected indicator")
    banner = browser.find_element(By.ID, "banner")
    assert banner.is_displayed() and "Disconnected from fleetd" in banner.text
    shot(browser, "08-disconnected")
    # a change made while the page is cut off arrives once it reconnects, without a reload
    fleetctl("start", "--no-block", worker_unit(units_dir, "dash-while-away.service"))
    proxy.start("127.0.0.1:" + url.split("/")[2].rpartition(":")[2])
    until(browser, lambda: conn.get_attribute("data-state") == "live", 15, "live again")
    until(browser, lambda: active_card(browser, "dash-while-away.service"), 30,
          "the unit started while disconnected")
    assert not banner.is_displayed()
    assert browser.execute_script("return window.__no_reload;") == "same page"
    shot(browser, "09-reconnected")
