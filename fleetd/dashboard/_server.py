"""aiohttp handlers of the dashboard: its static files and its `/dashboard/api/` endpoints.

| method | path                                | does                                            |
| ------ | ----------------------------------- | ----------------------------------------------- |
| GET    | `/dashboard/`                       | the page (`index.html`, `app.js`, `style.css`)  |
| GET    | `/dashboard/api/events`             | SSE: a snapshot, then every change (`Watch`)    |
| GET    | `/dashboard/api/units/NAME`         | one unit with its file and placement reasons    |
| GET    | `/dashboard/api/units/NAME/journal` | SSE: the unit's journal, followed               |
| POST   | `/dashboard/api/units/NAME/ACTION`  | start, stop, unload, (rolling-)restart, destroy |

Events carry their etcd revision as the SSE `id`: a browser that reconnects sends it back
(`Last-Event-ID`, or `?since=`) and the stream resumes after it, or starts over with a fresh
snapshot when that history was compacted. A `ping` every HEARTBEAT_S lets the page see a
stalled connection, and names the engine leader (a leader change is no watched event).
POSTs must be `Content-Type: application/json`, which a cross-site form cannot send without
a CORS preflight this server never answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import pathlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.service import ApiError, FleetService, NotFound, Unavailable

log = logging.getLogger("fleetd.dashboard")

PREFIX = "/dashboard"
STATIC_DIR = pathlib.Path(__file__).resolve().parent / "static"
STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript",
                "style.css": "text/css"}
HEARTBEAT_S = 5.0
#: How often the feed sends each machine's lease (granted TTL, seconds left): the page's
#: health column. Browsers share one read per period (`Dashboard.leases`).
LEASES_EVERY_S = 1.0
#: A browser that falls this many events behind is dropped; it reconnects and resumes.
MAX_QUEUED_EVENTS = 10_000
JOURNAL_LINES = 50
MAX_JOURNAL_LINES = 1000
JOURNAL_OUTPUT = "short-iso"
#: Desired states the page's buttons set (fleet's start, stop, unload).
TARGETS = {"start": "launched", "stop": "loaded", "unload": "inactive"}
#: A rolling restart: how long each machine's copy has to be active again, and how long it
#: must stay so (a Type=simple service is active the moment it forks).
ROLLING_WAIT_S = 60.0
ROLLING_STABLE_S = 1.0
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
       "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class DashboardError(Exception):
    """A refused dashboard request: its HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _status_of(e: ApiError) -> int:
    from fleetd.api.http_v1 import status_of
    from fleetd.api.remote import NotRunning

    return 409 if isinstance(e, NotRunning) else status_of(e)


# --- JSON of the Watch stream's messages ---------------------------------------------------
def machine_json(m: Any) -> dict[str, Any]:
    """A machine for the page: its registration, drain state (`fleetctl drain`) and capacity
    (milli-CPUs and bytes units may reserve: capacity minus the host's reserve; 0 = not
    published) with what its units reserve."""
    return {"id": m.id, "ip": m.ip, "metadata": dict(m.metadata), "hostname": m.hostname,
            "version": m.version, "engine_leader": m.engine_leader,
            "state": m.state or "active",
            "cpu_milli": max(0, m.cpu_milli - m.host_reserved_cpu_milli),
            "memory_bytes": max(0, m.memory_bytes - m.host_reserved_memory_bytes),
            "reserved_cpu_milli": m.reserved_cpu_milli,
            "reserved_memory_bytes": m.reserved_memory_bytes}


def unit_json(u: Any) -> dict[str, Any]:
    return {"name": u.name, "hash": u.hash, "desired_state": u.desired_state,
            "current_state": u.current_state, "machine_ids": list(u.machine_ids),
            "unschedulable_reason": u.unschedulable_reason, "description": u.description,
            "global": _is_global(u)}


def _is_global(u: Any) -> bool:
    return bool(u.is_global)


def state_json(s: Any) -> dict[str, Any]:
    return {"name": s.name, "machine_id": s.machine_id, "machine_ip": s.machine_ip,
            "hash": s.hash, "state": s.state, "load_state": s.load_state,
            "active_state": s.active_state, "sub_state": s.sub_state,
            "main_pid": s.main_pid}


def event_json(ev: Any) -> dict[str, Any]:
    """One `pb.WatchEvent` as the page's JSON: `kind` and the object (or what was deleted)."""
    k = pb.WatchEvent
    out: dict[str, Any] = {"revision": ev.revision}
    if ev.kind == k.SNAPSHOT:
        out.update(kind="snapshot",
                   machines=[machine_json(m) for m in ev.snapshot.machines],
                   units=[unit_json(u) for u in ev.snapshot.units],
                   states=[state_json(s) for s in ev.snapshot.states])
    elif ev.kind == k.MACHINE_PUT:
        out.update(kind="machine_put", machine=machine_json(ev.machine))
    elif ev.kind == k.MACHINE_DELETED:
        out.update(kind="machine_deleted", machine_id=ev.machine_id)
    elif ev.kind == k.UNIT_PUT:
        out.update(kind="unit_put", unit=unit_json(ev.unit))
    elif ev.kind == k.UNIT_DELETED:
        out.update(kind="unit_deleted", name=ev.name)
    elif ev.kind == k.STATE_PUT:
        out.update(kind="state_put", state=state_json(ev.state))
    else:
        out.update(kind="state_deleted", name=ev.name, machine_id=ev.machine_id)
    return out


def sse(data: dict[str, Any], event_id: int = 0) -> bytes:
    """One Server-Sent Event (JSON data, optional id)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class WatchEnded(Exception):
    """The Watch stream ended with a gRPC status (e.g. OUT_OF_RANGE: history compacted)."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class _InProcessCall:
    """What `FleetServicer.Watch` needs of a gRPC call context, for running it in-process."""

    async def abort(self, code: Any, details: str) -> None:
        raise WatchEnded(code, details)

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None


def _static(name: str) -> tuple[bytes, str]:
    body = (STATIC_DIR / name).read_bytes()
    return body, '"' + hashlib.sha1(body).hexdigest()[:16] + '"'


class Dashboard:
    """The dashboard's routes over a FleetService; `outputs` (fleetd's UnitOutputs) answers
    journals and restarts, locally or forwarded to the machine running the unit."""

    def __init__(self, service: FleetService, outputs: Any = None) -> None:
        self.service = service
        self.outputs = outputs
        self._files = {name: (*_static(name), ctype) for name, ctype in STATIC_FILES.items()}
        self._leases: tuple[float, dict[str, Any]] = (-LEASES_EVERY_S, {})
        self._leases_lock = asyncio.Lock()

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get(PREFIX, self.redirect)
        r.add_get(PREFIX + "/", self.page)
        r.add_get(PREFIX + "/static/{file}", self.static)
        r.add_get(PREFIX + "/api/events", self.events)
        r.add_get(PREFIX + "/api/units/{name}", self.unit)
        r.add_get(PREFIX + "/api/units/{name}/journal", self.journal)
        r.add_post(PREFIX + "/api/units/{name}/{action}", self.action)
        r.add_route("*", PREFIX + "/{tail:.*}", self.not_found)

    @staticmethod
    def _error(e: DashboardError | ApiError) -> web.Response:
        if isinstance(e, ApiError):
            e = DashboardError(_status_of(e), str(e))
        return web.json_response({"error": {"code": e.status, "message": e.message}},
                                 status=e.status)

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return self._error(DashboardError(404, f"no dashboard resource at {request.path}"))

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=302, headers={"Location": PREFIX + "/"})

    # --- static files -------------------------------------------------------------------
    def _file(self, request: web.Request, name: str) -> web.StreamResponse:
        body, etag, ctype = self._files[name]
        headers = {"ETag": etag, "Cache-Control": "no-cache", "X-Content-Type-Options":
                   "nosniff", "Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer"}
        if etag in request.headers.get("If-None-Match", ""):
            return web.Response(status=304, headers=headers)
        resp = web.Response(body=body, content_type=ctype, charset="utf-8", headers=headers)
        resp.enable_compression()
        return resp

    async def page(self, request: web.Request) -> web.StreamResponse:
        return self._file(request, "index.html")

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["file"]
        if name not in self._files or name == "index.html":
            return self._error(DashboardError(404, f"no dashboard file {name!r}"))
        return self._file(request, name)

    # --- the live feed ------------------------------------------------------------------
    async def _watch(self, since: int, names: tuple[str, ...] = ()) -> AsyncIterator[Any]:
        """The gRPC Watch stream's events, from a snapshot (`since` 0) or after `since`;
        only those of units `names` if any are given."""
        from fleetd.api.grpc_server import FleetServicer

        servicer = FleetServicer(self.service)
        async for ev in servicer.Watch(pb.WatchRequest(start_revision=since, names=names),
                                       _InProcessCall()):
            yield ev

    @staticmethod
    def _since(request: web.Request) -> int:
        raw = request.headers.get("Last-Event-ID") or request.query.get("since", "")
        if not raw:
            return 0
        if not raw.isdigit() or len(raw) > 19:
            raise DashboardError(400, f"since / Last-Event-ID {raw[:40]!r} is not a revision")
        return int(raw)

    @staticmethod
    async def _open_stream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no", "X-Content-Type-Options": "nosniff"})
        await resp.prepare(request)
        await resp.write(b"retry: 1000\n\n")  # how soon EventSource reconnects
        return resp

    async def events(self, request: web.Request) -> web.StreamResponse:
        try:
            since = self._since(request)
        except DashboardError as e:
            return self._error(e)
        resp = await self._open_stream(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        begun = asyncio.Event()

        def put(item: dict[str, Any] | None) -> None:
            queue.put_nowait(item)
            begun.set()

        async def pump() -> None:
            import grpc

            # Resume from the revision before the last one seen: one etcd transaction can
            # yield several events with one revision, and re-sending them is harmless.
            start = max(since - 1, 0)
            try:
                try:
                    if start:
                        put({"kind": "resumed", "revision": since})
                    async for ev in self._watch(start):
                        put(event_json(ev))
                except WatchEnded as e:
                    if not start or e.code != grpc.StatusCode.OUT_OF_RANGE:
                        raise
                    log.info("dashboard feed: revision %d is compacted; sending a snapshot",
                             since)
                    async for ev in self._watch(0):
                        put(event_json(ev))
            except (WatchEnded, ApiError) as e:
                put({"kind": "error", "message": str(e)})
            except Exception as e:  # etcd gone for good: the page shows it and reconnects
                log.warning("dashboard feed failed: %s", e)
                put({"kind": "error", "message": f"watch failed: {e}"})
            put(None)

        async def leases() -> None:
            await begun.wait()  # the snapshot (or "resumed") goes first
            while True:
                got = await self.leases()
                if got is not None:
                    queue.put_nowait({"kind": "leases", "leases": got})
                await asyncio.sleep(LEASES_EVERY_S)

        async def feed() -> None:
            health = asyncio.ensure_future(leases())
            try:
                await pump()
            finally:
                health.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await health

        async def ping() -> dict[str, Any]:
            # the engine leader is no watched object: the ping says who it is now
            return {"kind": "ping", "leader": await self._leader()}

        # Too far behind: the browser reconnects and resumes from the last id it got.
        return await self._relay(resp, queue, feed(), ping, MAX_QUEUED_EVENTS, ids=True)

    async def leases(self) -> dict[str, Any] | None:
        """Each machine's lease as etcd counts it, {id: {"ttl": granted, "left": seconds}},
        read at most once per LEASES_EVERY_S for all browsers; None if etcd does not answer
        in time (a lease is no watched object, so the feed samples it)."""
        async with self._leases_lock:
            at, got = self._leases
            if asyncio.get_running_loop().time() - at < LEASES_EVERY_S / 2:
                return got
            try:
                raw = await asyncio.wait_for(self.service.registry.machine_leases(),
                                             HEARTBEAT_S)
            except Exception as e:
                log.debug("dashboard: machine leases not read: %s", e)
                return None
            got = {mid: {"ttl": ttl, "left": left} for mid, (ttl, left) in raw.items()}
            self._leases = (asyncio.get_running_loop().time(), got)
            return got

    @staticmethod
    async def _relay(resp: web.StreamResponse, queue: asyncio.Queue[dict[str, Any] | None],
                     pump: Coroutine[Any, Any, None],
                     ping: Callable[[], Awaitable[dict[str, Any]]],
                     max_queued: int | None = None, ids: bool = False) -> web.StreamResponse:
        """Send what `pump` queues as events (with their revision as id if `ids`) until it
        queues None, more than `max_queued` wait, or the browser leaves; a `ping` every
        HEARTBEAT_S, however busy the stream. The pump stops with the stream."""
        task = asyncio.ensure_future(pump)
        loop = asyncio.get_running_loop()
        pinged = loop.time()
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(),
                                                  max(0.0, pinged + HEARTBEAT_S - loop.time()))
                except TimeoutError:
                    await resp.write(sse(await ping()))
                    pinged = loop.time()
                    continue
                if item is None:
                    break
                if max_queued is not None and queue.qsize() > max_queued:
                    break
                await resp.write(sse(item, int(item.get("revision", 0)) if ids else 0))
        except ConnectionError:
            pass  # the browser went away: the pump and what it reads stop below
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        return resp

    async def _leader(self) -> str | None:
        """The engine leader's machine id ("" if none, None if etcd does not say in time)."""
        try:
            return await asyncio.wait_for(self.service.registry.leader(), HEARTBEAT_S) or ""
        except Exception:
            return None

    # --- one unit -----------------------------------------------------------------------
    async def unit(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        try:
            info = await self.service.get_unit(name)
            try:
                ex = await self.service.explain_unit(name)
                explanation: dict[str, Any] | None = {
                    "scheduled_on": list(ex.scheduled_on), "feasible": list(ex.feasible),
                    "rejected": [{"machine_id": m, "check": c, "detail": d}
                                 for m, c, d in ex.rejected],
                    "unschedulable_reason": ex.unschedulable_reason}
            except ApiError:
                explanation = None
        except ApiError as e:
            return self._error(e)
        return web.json_response({
            "name": info.name, "text": info.text, "hash": info.hash,
            "desired_state": info.desired_state, "current_state": info.current_state,
            "machine_ids": list(info.machine_ids),
            "unschedulable_reason": info.unschedulable_reason,
            "description": info.description, "global": info.is_global,
            "explanation": explanation}, headers={"Cache-Control": "no-store"})

    async def journal(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        machine = request.query.get("machine", "")
        raw = request.query.get("lines", str(JOURNAL_LINES))
        try:
            if not raw.isdigit() or not 0 < int(raw) <= MAX_JOURNAL_LINES:
                raise DashboardError(400, f"lines {raw[:20]!r}: expected 1-{MAX_JOURNAL_LINES}")
            if self.outputs is None:
                raise Unavailable("this fleetd serves no journals")
            target, _ = await self.outputs.locate(name, machine)
        except (DashboardError, ApiError) as e:
            return self._error(e)
        resp = await self._open_stream(request)
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def pump() -> None:
            pending = b""
            try:
                async for mid, data in self.outputs.journal(name, target, int(raw),
                                                            JOURNAL_OUTPUT, True):
                    lines = (pending + data).split(b"\n")
                    pending = lines.pop()
                    for line in lines:
                        queue.put_nowait({"kind": "line", "machine_id": mid,
                                          "text": line.decode("utf-8", "replace")})
                queue.put_nowait({"kind": "end", "message": "the journal ended"})
            except ApiError as e:
                queue.put_nowait({"kind": "end", "message": str(e)})
            except Exception as e:
                log.warning("dashboard journal of %s failed: %s", name, e)
                queue.put_nowait({"kind": "end", "message": f"journal failed: {e}"})
            queue.put_nowait(None)

        await resp.write(sse({"kind": "start", "machine_id": target}))

        async def ping() -> dict[str, Any]:
            return {"kind": "ping"}

        return await self._relay(resp, queue, pump(), ping)

    async def action(self, request: web.Request) -> web.StreamResponse:
        name, action = request.match_info["name"], request.match_info["action"]
        try:
            if request.content_type != "application/json":
                raise DashboardError(415, "dashboard actions need Content-Type: "
                                          "application/json")
            if action in TARGETS:
                info = await self.service.set_target_state(name, TARGETS[action])
                return web.json_response({"name": name, "desired_state": info.desired_state})
            if action == "destroy":
                await self.service.destroy_unit(name)
                return web.json_response({"name": name, "destroyed": True})
            if action == "restart":
                return web.json_response(await self._restart(name))
            if action == "rolling-restart":
                return web.json_response(await self._restart(name, rolling=True))
            raise DashboardError(404, f"no dashboard action {action!r}: expected "
                                      + ", ".join([*TARGETS, "restart", "rolling-restart",
                                                   "destroy"]))
        except (DashboardError, ApiError) as e:
            return self._error(e)

    async def _restart(self, name: str, rolling: bool = False) -> dict[str, Any]:
        """`systemctl restart` on every machine of a launched unit, one machine at a time.
        `rolling` (as `fleetctl restart --rolling --batch 1`): each machine's copy must be
        active again with a new main PID, and stay so for ROLLING_STABLE_S, before the next
        machine restarts; the first failure stops the rollout (`stopped_at`)."""
        if self.outputs is None:
            raise Unavailable("this fleetd restarts no units")
        info = await self.service.get_unit(name)
        if info.desired_state != "launched" or not info.machine_ids:
            raise DashboardError(409, f"unit {name} is not launched: start it instead")
        results: list[dict[str, Any]] = []
        for mid in info.machine_ids:
            old_pid = await self._main_pid(name, mid) if rolling else 0
            try:
                target, out, rc = await self.outputs.restart(name, mid)
            except NotFound:
                raise
            except ApiError as e:
                target, out, rc = mid, str(e), -1
            results.append({"machine_id": target, "exit_code": rc, "output": out})
            if rolling and (rc != 0 or not await self._active_again(name, mid, old_pid)):
                if rc == 0:
                    results[-1].update(exit_code=-1, output=(
                        f"failed, or not active with a new main PID within {ROLLING_WAIT_S:.0f}s"))
                return {"name": name, "restarted": results, "stopped_at": mid}
        return {"name": name, "restarted": results, "stopped_at": None} if rolling else {
            "name": name, "restarted": results}

    async def _main_pid(self, name: str, machine_id: str) -> int:
        states, _ = await self.service.list_states([name], machine_id)
        return states[0].main_pid if states else 0

    async def _active_again(self, name: str, machine_id: str, old_pid: int) -> bool:
        """Whether the machine reports the unit active with a main PID other than `old_pid`
        for ROLLING_STABLE_S on end, within ROLLING_WAIT_S: followed on the Watch stream of
        this one unit (its snapshot, then each state the agent publishes), no polling."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + ROLLING_WAIT_S
        events: asyncio.Queue[Any] = asyncio.Queue()

        async def follow() -> None:
            try:
                async for ev in self._watch(0, (name,)):
                    events.put_nowait(ev)
            finally:
                events.put_nowait(None)

        def mine(s: Any) -> bool:
            return bool(s.name == name and s.machine_id == machine_id)

        k = pb.WatchEvent
        state: Any = None
        since: float | None = None
        task = asyncio.ensure_future(follow())
        try:
            while True:
                now = loop.time()
                if state is not None and state.active_state == "failed":
                    return False
                good = (state is not None and state.active_state == "active"
                        and state.main_pid not in (0, old_pid))
                since = (since if since is not None else now) if good else None
                if since is not None and now - since >= ROLLING_STABLE_S:
                    return True
                wait = deadline - now
                if since is not None:
                    wait = min(wait, since + ROLLING_STABLE_S - now)
                if wait <= 0:
                    return False
                try:
                    ev = await asyncio.wait_for(events.get(), wait)
                except TimeoutError:
                    continue
                if ev is None:
                    return False  # the stream ended (etcd gone): not known to be active
                if ev.kind == k.SNAPSHOT:
                    state = next((s for s in ev.snapshot.states if mine(s)), None)
                elif ev.kind == k.STATE_PUT and mine(ev.state):
                    state = ev.state
                elif ev.kind == k.STATE_DELETED and ev.name == name and \
                        ev.machine_id == machine_id:
                    state = None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
