"""`fleetctl dashboard`: serve the cluster dashboard (fleetctl.dashboard) on a local address,
reading the cluster through the same API, endpoint and TLS files as every other command."""

from __future__ import annotations

import argparse

from fleetctl.command import OPTS, Command, fail, flag

DEFAULT_LISTEN = "127.0.0.1:8089"


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address the dashboard serves on (default: {DEFAULT_LISTEN})")
    flag(p, "--open", help="open the dashboard in a web browser")
    flag(p, "--force", help="allow a --listen address that is not a loopback address")
    p.add_argument("--http-endpoint", default="", metavar="URL",
                   help="fleetd's HTTP API listener (default: $FLEET_HTTP_ENDPOINT, or the "
                   "local socket with the default endpoint)")


def _run(a: argparse.Namespace) -> int:
    import importlib

    try:
        dashboard = importlib.import_module("fleetctl.dashboard")  # only this command needs it
    except ModuleNotFoundError as e:
        if e.name != "fleetctl.dashboard":
            raise
        fail("the dashboard is not part of this installation (module fleetctl.dashboard is "
             "missing)")
    from fleetctl.client import DEFAULT_ENDPOINT

    if OPTS.tunnel:
        fail("dashboard does not support --tunnel yet: run it on a machine that reaches "
             "fleetd's HTTP listener, or forward that port with ssh -L", 2)
    code: int = dashboard.run(endpoint=OPTS.endpoint or DEFAULT_ENDPOINT, tls=OPTS.tls,
                              listen=a.listen, open_browser=a.open, force=a.force,
                              http_endpoint=a.http_endpoint)
    return code


COMMANDS = {"dashboard": Command(
    "dashboard", "Serve the cluster dashboard (a web page) on a local address.\n\n"
    "It reads the cluster through fleetd's API with the global connection flags (--endpoint,\n"
    "--ca-file, --cert-file, --key-file, --tunnel). A --listen address other than loopback\n"
    "shows the cluster to the network, so it needs --force.", _arguments, _run)}
