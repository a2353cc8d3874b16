"""`fleetctl dashboard`: fleetd's web dashboard in a local browser, through a loopback proxy.

Like `kubectl proxy`: it listens on a loopback address (127.0.0.1:8089 unless told otherwise)
and forwards to fleetd's HTTP listener with fleetctl's own endpoint and credentials (the mutual
TLS client certificate), so the browser needs none. It forwards only the dashboard
(`/dashboard/...`) and fleet's HTTP API v1 (`/fleet/v1/...`), refuses everything else, and
refuses a request whose Host is not the proxy's own (a web page cannot reach it through DNS
rebinding) or a write whose Origin is another site's. A non-loopback listen address is refused
unless `force` (anyone who reaches it then controls the cluster).

fleetd's HTTP listener is not the gRPC endpoint fleetctl uses; it is, in this order:
`http_endpoint` (`--http-endpoint`), the `FLEET_HTTP_ENDPOINT` environment variable (which
`fleet-lab env` sets), or, for fleetctl's default unix socket, fleetd's default HTTP socket
(/var/run/fleet.sock). Forms: https://host:port, http://host:port, unix:///path or /path.

    python -m fleetctl.dashboard [--listen 127.0.0.1:8089] [--open] [--force]
        [--endpoint E] [--http-endpoint H] [--ca-file F --cert-file F --key-file F]
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import posixpath
import signal
import ssl
import sys
import urllib.parse
from typing import Any

from fleetctl.client import DEFAULT_ENDPOINT, FleetctlError, TlsFiles, grpc_target

DEFAULT_LISTEN = "127.0.0.1:8089"
#: fleetd's default HTTP API v1 socket (fleetd.config.DEFAULT_HTTP_SOCKET; not imported, to
#: keep fleetctl from loading fleetd's configuration code)
DEFAULT_HTTP_SOCKET = "/var/run/fleet.sock"
FORWARDED_PREFIXES = ("/dashboard/", "/fleet/v1/")
FORWARDED_EXACT = ("/dashboard", "/fleet/v1")
CONNECT_TIMEOUT_S = 10.0
#: fleetd pings every open event stream each 5 s: a stream silent this long lost its fleetd.
READ_TIMEOUT_S = 30.0
#: fleetd's own limit on HTTP bodies (fleetd.api.http_v1.MAX_BODY_BYTES): fleetd judges them.
MAX_BODY_BYTES = 8 * 1024 * 1024 + 1
#: On Ctrl-C, open event streams are cut after this long (they never end by themselves).
SHUTDOWN_TIMEOUT_S = 1.0
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
              "trailer", "transfer-encoding", "upgrade", "host"}
#: Never sent on: the browser's credentials for the proxy's origin are not the cluster's.
DROPPED_REQUEST_HEADERS = {"cookie", "authorization", "origin", "referer"}
WILDCARD_HOSTS = ("", "0.0.0.0", "::")


class DashboardProxyError(FleetctlError):
    """A refused proxy configuration (exit 2) or a fleetd the proxy cannot reach (exit 1)."""


def parse_listen(listen: str) -> tuple[str, int]:
    """(host, port) of `host:port` / `[v6]:port`; DashboardProxyError if malformed."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise DashboardProxyError(f"--listen {listen!r} is not host:port", 2)
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_listen(listen: str, force: bool) -> tuple[str, int]:
    """The listen address, refused (exit 2) unless loopback or forced."""
    host, port = parse_listen(listen)
    if not force and not is_loopback(host):
        raise DashboardProxyError(
            f"refusing to listen on {listen}: not a loopback address, and whoever reaches the "
            "proxy controls the cluster with your credentials (use --force to do it anyway)", 2)
    return host, port


def http_upstream(endpoint: str, http_endpoint: str = "") -> str:
    """fleetd's HTTP listener for fleetctl's gRPC `endpoint` (see the module docstring)."""
    chosen = http_endpoint or os.environ.get("FLEET_HTTP_ENDPOINT", "")
    if not chosen:
        target = grpc_target(endpoint or DEFAULT_ENDPOINT)
        if target == grpc_target(DEFAULT_ENDPOINT):
            chosen = DEFAULT_HTTP_SOCKET
        else:
            raise DashboardProxyError(
                f"cannot tell fleetd's HTTP API address from the gRPC endpoint {endpoint}: "
                "pass --http-endpoint https://HOST:PORT (fleetd's http_tcp) or set "
                "FLEET_HTTP_ENDPOINT", 2)
    chosen = chosen.strip().rstrip("/")
    if chosen.startswith("/"):
        chosen = "unix://" + chosen
    if chosen.startswith("unix://") and len(chosen) > len("unix://"):
        return chosen
    if chosen.startswith(("http://", "https://")) and "/" not in chosen.split("://", 1)[1]:
        return chosen
    raise DashboardProxyError(f"HTTP endpoint {chosen!r}: expected https://host:port, "
                              "http://host:port or unix:///path", 2)


def forwarded(path: str) -> bool:
    """Whether the proxy forwards a request for `path` (decoded, as the server saw it)."""
    if "\\" in path or "\x00" in path:
        return False
    if posixpath.normpath(path) != path.rstrip("/") and path != "/":
        return False  # dot segments (also percent-encoded ones) or doubled slashes
    return path in FORWARDED_EXACT or path.startswith(FORWARDED_PREFIXES)


def _ssl_context(upstream: str, tls: TlsFiles) -> ssl.SSLContext | None:
    if not upstream.startswith("https://"):
        return None
    if bool(tls.cert_file) != bool(tls.key_file):
        raise DashboardProxyError("--cert-file and --key-file go together", 2)
    try:
        ctx = ssl.create_default_context(cafile=os.path.expanduser(tls.ca_file)
                                         if tls.ca_file else None)
        if tls.cert_file:
            ctx.load_cert_chain(os.path.expanduser(tls.cert_file),
                                os.path.expanduser(tls.key_file))
    except (OSError, ssl.SSLError) as e:
        raise DashboardProxyError(f"cannot load the TLS files: {e}", 2) from None
    return ctx


class DashboardProxy:
    """The running proxy: `start()` binds it and returns the dashboard's URL."""

    def __init__(self, upstream: str, tls: TlsFiles, host: str, port: int) -> None:
        self.upstream = upstream
        self.tls = tls
        self.host = host
        self.port = port
        self._runner: Any = None
        self._session: Any = None
        self._allowed_hosts: set[str] = set()

    @property
    def _base(self) -> str:
        return "http://fleetd" if self.upstream.startswith("unix://") else self.upstream

    async def start(self) -> str:
        import aiohttp
        from aiohttp import web

        if self.upstream.startswith("unix://"):
            connector: aiohttp.BaseConnector = aiohttp.UnixConnector(
                path=self.upstream[len("unix://"):])
        else:
            connector = aiohttp.TCPConnector(ssl=_ssl_context(self.upstream, self.tls) or False)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S,
                                          sock_read=READ_TIMEOUT_S))
        try:
            await self._probe()
            app = web.Application(client_max_size=MAX_BODY_BYTES)
            app.router.add_route("*", "/{tail:.*}", self.handle)
            self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True,
                                        shutdown_timeout=SHUTDOWN_TIMEOUT_S)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host or None, self.port)
            try:
                await site.start()
            except OSError as e:
                raise DashboardProxyError(f"cannot listen on {self.host}:{self.port}: "
                                          f"{e.strerror or e}") from None
        except BaseException:
            await self.stop()
            raise
        port = self._runner.addresses[0][1]
        shown = self.host if self.host not in WILDCARD_HOSTS else "127.0.0.1"
        shown = f"[{shown}]" if ":" in shown else shown
        names = {"127.0.0.1", "localhost", "[::1]", shown}
        self._allowed_hosts = {f"{n}:{port}" for n in names}
        if self.host in WILDCARD_HOSTS:
            self._allowed_hosts = set()  # forced onto every interface: any name reaches it
        return f"http://{shown}:{port}/dashboard/"

    async def _probe(self) -> None:
        """Fail now, with a clear error, if fleetd's dashboard cannot be reached."""
        import aiohttp

        try:
            async with self._session.get(self._base + "/dashboard/") as r:
                if r.status == 404:
                    raise DashboardProxyError(f"fleetd at {self.upstream} serves no dashboard "
                                              "(404): it predates the dashboard")
                if r.status != 200:
                    raise DashboardProxyError(f"fleetd at {self.upstream} answered "
                                              f"{r.status} for /dashboard/")
                await r.read()
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            hint = "" if self.tls or not self.upstream.startswith("https://") else \
                " (a TCP listener requires TLS: pass --ca-file, --cert-file and --key-file)"
            raise DashboardProxyError(f"cannot reach fleetd's HTTP API at {self.upstream}: "
                                      f"{e or type(e).__name__}{hint}") from None

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @staticmethod
    def _refuse(status: int, message: str) -> Any:
        from aiohttp import web

        return web.json_response({"error": {"code": status, "message": message}},
                                 status=status)

    async def handle(self, request: Any) -> Any:
        import aiohttp
        from aiohttp import web

        if self._allowed_hosts and request.host not in self._allowed_hosts:
            return self._refuse(403, f"Host {request.host!r} is not this proxy's address")
        origin = request.headers.get("Origin")
        if request.method not in ("GET", "HEAD", "OPTIONS") and origin is not None \
                and origin != f"http://{request.host}":
            return self._refuse(403, f"cross-origin {request.method} from {origin} refused")
        if request.path == "/" and request.method == "GET":
            return web.Response(status=302, headers={"Location": "/dashboard/"})
        raw_path = request.raw_path.split("?", 1)[0]
        if not (forwarded(request.path) and forwarded(raw_path)
                and forwarded(urllib.parse.unquote(raw_path))):
            return self._refuse(404, f"fleetctl dashboard forwards only /dashboard/ and "
                                     f"/fleet/v1/, not {request.path}")
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() not in HOP_BY_HOP | DROPPED_REQUEST_HEADERS}
        # as the browser asked (aiohttp's client would otherwise ask for gzip on its behalf)
        headers["Accept-Encoding"] = request.headers.get("Accept-Encoding", "identity")
        body = await request.read() if request.can_read_body else None
        url = self._base + request.rel_url.raw_path_qs
        try:
            async with self._session.request(request.method, url, headers=headers, data=body,
                                             allow_redirects=False) as up:
                resp = web.StreamResponse(status=up.status, reason=up.reason, headers={
                    k: v for k, v in up.headers.items() if k.lower() not in HOP_BY_HOP})
                await resp.prepare(request)
                try:
                    async for chunk in up.content.iter_any():
                        await resp.write(chunk)
                except (aiohttp.ClientError, TimeoutError):
                    return resp  # fleetd went away mid-stream: end the browser's stream too
                await resp.write_eof()
                return resp
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            return self._refuse(502, f"fleetd at {self.upstream}: {e or type(e).__name__}")


async def _serve(proxy: DashboardProxy, open_browser: bool) -> None:
    url = await proxy.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"Dashboard: {url}", flush=True)
    print(f"(forwarding /dashboard/ and /fleet/v1/ to {proxy.upstream} with fleetctl's "
          "credentials; Ctrl-C stops)", flush=True)
    if open_browser:
        import webbrowser

        await loop.run_in_executor(None, webbrowser.open, url)
    try:
        await stop.wait()
    finally:
        await proxy.stop()


def run(endpoint: str, tls: TlsFiles, listen: str = DEFAULT_LISTEN, open_browser: bool = False,
        force: bool = False, http_endpoint: str = "") -> int:
    """Serve the dashboard proxy until SIGINT/SIGTERM; the exit code (2: refused arguments,
    1: fleetd unreachable or the address taken). `http_endpoint`: fleetd's HTTP listener
    (default: FLEET_HTTP_ENDPOINT, see the module docstring)."""
    try:
        host, port = check_listen(listen, force)
        upstream = http_upstream(endpoint, http_endpoint)
        _ssl_context(upstream, tls)  # unreadable TLS files: refused before anything listens
        asyncio.run(_serve(DashboardProxy(upstream, tls, host, port), open_browser))
    except FleetctlError as e:
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    return 0


def main(argv: list[str] | None = None) -> int:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="fleetctl dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoint", default=env("FLEETCTL_ENDPOINT", DEFAULT_ENDPOINT),
                   help="fleetctl's gRPC endpoint (env FLEETCTL_ENDPOINT)")
    p.add_argument("--http-endpoint", default="",
                   help="fleetd's HTTP listener (default: env FLEET_HTTP_ENDPOINT)")
    p.add_argument("--ca-file", default=env("FLEETCTL_CA_FILE", ""))
    p.add_argument("--cert-file", default=env("FLEETCTL_CERT_FILE", ""))
    p.add_argument("--key-file", default=env("FLEETCTL_KEY_FILE", ""))
    p.add_argument("--listen", default=DEFAULT_LISTEN, help="loopback host:port to serve on")
    p.add_argument("--open", action="store_true", help="open the dashboard in a browser")
    p.add_argument("--force", action="store_true",
                   help="allow a non-loopback --listen address")
    a = p.parse_args(argv)
    return run(a.endpoint, TlsFiles(a.ca_file, a.cert_file, a.key_file), a.listen, a.open,
               a.force, http_endpoint=a.http_endpoint)


if __name__ == "__main__":
    sys.exit(main())
