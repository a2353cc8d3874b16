"""fleet's JSON HTTP API v1, for clients written against the original fleet.

Resources (under `/fleet/v1`, and under fleet's older `/v1-alpha` prefix as fleet did):

| method | path          | does                                                               |
| ------ | ------------- | ------------------------------------------------------------------ |
| GET    | `/units`      | a page of Unit entities (`{"units": [...]}`)                       |
| GET    | `/units/NAME` | one Unit entity; 404 if unknown                                    |
| PUT    | `/units/NAME` | create (201) or set desiredState (204)                             |
| DELETE | `/units/NAME` | destroy (204); 404 if unknown                                      |
| GET    | `/state`      | a page of UnitState entities; `machineID`, `unitName` filter them  |
| GET    | `/state/NAME` | the first UnitState of one unit; 404 if none                       |
| GET    | `/machines`   | a page of Machine entities (metadata: API-set over configured)     |
| PATCH  | `/machines`   | JSON Patch of machine metadata (204)                               |
| GET    | `/discovery`  | the API's discovery document                                       |

Behaviour follows fleet's code where it and its documentation disagree: PUT needs
`Content-Type: application/json` (415 otherwise); PUT of an unknown unit without options, or of
an existing one without desiredState, is 409; metadata PATCH values may be plain strings (the
docs) or `{"value": "..."}` objects (fleet's code and its clients). A PUT with options that
differ from an existing unit's replaces its file (201), as fleet 0.13+ does for
`fleetctl --replace`; the unit keeps its desired state unless the body sets one.
Pages hold `token_limit` entities; `nextPageToken` is fleet's token (base64url of two
little-endian uint16: limit, page). Every refusal is fleet's error entity
`{"error": {"code": N, "message": "..."}}`; no input yields a 500.

The handlers only validate and translate: every operation goes through `FleetService`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import socket
import struct
from collections.abc import Awaitable, Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from fleetd import __version__
from fleetd.api.service import (
    AlreadyExists,
    ApiError,
    FleetService,
    InvalidArgument,
    NotFound,
    Unavailable,
    UnitInfo,
    _check_name,
)
from fleetd.api.tls import ApiTls, secure_unix_socket
from fleetd.registry import TARGET_STATES, MachineRecord, UnitStateRecord
from fleetd.unit import Unit, UnitError, UnitFile

log = logging.getLogger("fleetd.api.http")

PREFIXES = ("/fleet/v1", "/v1-alpha")
DEFAULT_TOKEN_LIMIT = 100
MAX_BODY_BYTES = 8 * 1024 * 1024
METADATA_PATH = re.compile(r"/([^/]+)/metadata/([A-Za-z0-9_.-]+)")
PATCH_OPS = ("add", "remove", "replace")
T = TypeVar("T")


class HttpError(Exception):
    """A refused request: its HTTP status and the message of fleet's error entity."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


_API_STATUS: dict[type[ApiError], int] = {
    InvalidArgument: 400, NotFound: 404, AlreadyExists: 409, Unavailable: 503}


def status_of(error: ApiError) -> int:
    for cls, status in _API_STATUS.items():
        if isinstance(error, cls):
            return status
    return 500


def error_entity(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message}}


# --- pagination ----------------------------------------------------------------------------
@dataclass(frozen=True)
class PageToken:
    """fleet's page token: `limit` entities per page, 1-based `page`."""

    limit: int
    page: int

    def encode(self) -> str:
        return base64.urlsafe_b64encode(struct.pack("<HH", self.limit, self.page)).decode()

    def next(self) -> PageToken:
        return PageToken(self.limit, self.page + 1)

    @classmethod
    def decode(cls, value: str, limit: int) -> PageToken:
        """Parse and check a token; HttpError 400 for anything but a token this server issues."""
        try:
            raw = base64.b64decode(value.encode("ascii"), altchars=b"-_", validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise HttpError(400, "invalid value of nextPageToken query parameter: "
                                 "not base64url") from None
        if len(raw) != 4:
            raise HttpError(400, "invalid value of nextPageToken query parameter: "
                                 f"{len(raw)} bytes, expected 4")
        tok_limit, page = struct.unpack("<HH", raw)
        if tok_limit != limit:
            raise HttpError(400, f"invalid value of nextPageToken query parameter: token limit "
                                 f"must be {limit}")
        if page == 0:
            raise HttpError(400, "invalid value of nextPageToken query parameter: token page "
                                 "must be greater than zero")
        return cls(tok_limit, page)


def page_token(values: Sequence[str], limit: int) -> PageToken:
    """The token of a request's `nextPageToken` query values (the first page if none)."""
    if len(values) > 1:
        raise HttpError(400, "too many values for nextPageToken query parameter")
    if not values:
        return PageToken(limit, 1)
    return PageToken.decode(values[0], limit)


def paginate(items: Sequence[T], token: PageToken) -> tuple[list[T], str | None]:
    """One page of `items` and the token of the next page (None on the last page)."""
    start = (token.page - 1) * token.limit
    stop = start + token.limit
    page = list(items[start:stop])
    return page, (token.next().encode() if stop < len(items) else None)


# --- entities ------------------------------------------------------------------------------
def unit_options(text: str) -> list[dict[str, str]]:
    """A unit file as fleet's list of UnitOption entities."""
    try:
        options = UnitFile.parse(text).options
    except UnitError:
        return []
    return [{"section": s, "name": n, "value": v} for s, n, v in options]


def unit_entity(info: UnitInfo) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "name": info.name,
        "options": unit_options(info.text),
        "desiredState": info.desired_state,
        "currentState": info.current_state,
    }
    if len(info.machine_ids) == 1 and not info.is_global:
        entity["machineID"] = info.machine_ids[0]
    return entity


def state_entity(s: UnitStateRecord) -> dict[str, Any]:
    return {"name": s.unit, "hash": s.hash, "machineID": s.machine_id,
            "systemdLoadState": s.load_state, "systemdActiveState": s.active_state,
            "systemdSubState": s.sub_state}


def machine_entity(m: MachineRecord, draining: Collection[str] = (),
                   reserved: tuple[int, int] | None = None) -> dict[str, Any]:
    """fleet's Machine entity; fleet-py's extensions (fleet's clients ignore fields they do
    not know): `"state": "draining"` on a draining machine only, and the resources field."""
    entity: dict[str, Any] = {"id": m.id, "primaryIP": m.ip, "metadata": dict(m.metadata)}
    if m.id in draining:
        entity["state"] = "draining"
    # -- resources: a fleet-py extension field --
    if reserved is not None:
        entity[RESOURCES_FIELD] = {
            "cpuMilli": m.cpu, "memoryBytes": m.memory,
            "hostReservedCpuMilli": m.reserved_cpu, "hostReservedMemoryBytes": m.reserved_memory,
            "reservedCpuMilli": reserved[0], "reservedMemoryBytes": reserved[1]}
    return entity


RESOURCES_FIELD = "fleetpyResources"
"""The Machine entity's extension field: capacity, host reserve and what units reserve
(milli-CPUs, bytes; a capacity of 0 = not published by that machine's fleetd)."""


# --- request bodies ------------------------------------------------------------------------
def decode_json(body: bytes) -> Any:
    if not body.strip():
        raise HttpError(400, "unable to decode body: empty body")
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as e:
        raise HttpError(400, f"unable to decode body: {e}") from None


def _opt_str(obj: dict[str, Any], field: str, where: str) -> str:
    value = obj.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HttpError(400, f"unable to decode body: {where}{field} must be a string, "
                             f"got {_json_type(value)}")
    return value


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "string" if isinstance(value, str) else "null"


@dataclass(frozen=True)
class UnitBody:
    """A decoded PUT /units/NAME body: the fields fleet reads (others are ignored)."""

    name: str
    desired_state: str
    options: tuple[tuple[str, str, str], ...]


def parse_unit_body(data: Any) -> UnitBody:
    """Check the shape and types of a Unit entity; HttpError 400 naming the field if wrong."""
    if not isinstance(data, dict):
        raise HttpError(400, f"unable to decode body: expected a Unit object, got "
                             f"{_json_type(data)}")
    name = _opt_str(data, "name", "")
    desired = _opt_str(data, "desiredState", "")
    _opt_str(data, "currentState", "")
    _opt_str(data, "machineID", "")
    raw_options = data.get("options")
    if raw_options is None:
        raw_options = []
    if not isinstance(raw_options, list):
        raise HttpError(400, "unable to decode body: options must be an array of UnitOption "
                             f"objects, got {_json_type(raw_options)}")
    options = []
    for i, opt in enumerate(raw_options):
        where = f"options[{i}]."
        if not isinstance(opt, dict):
            raise HttpError(400, f"unable to decode body: options[{i}] must be a UnitOption "
                                 f"object, got {_json_type(opt)}")
        section = _opt_str(opt, "section", where)
        oname = _opt_str(opt, "name", where)
        value = _opt_str(opt, "value", where)
        if not section:
            raise HttpError(400, f"invalid unit option {where[:-1]}: section is empty")
        if not oname:
            raise HttpError(400, f"invalid unit option {where[:-1]}: name is empty")
        options.append((section, oname, value))
    return UnitBody(name, desired, tuple(options))


def unit_text(name: str, options: Sequence[tuple[str, str, str]]) -> str:
    """The unit file text of fleet's options; HttpError 400 if they do not form a valid unit."""
    try:
        text = UnitFile.from_options(options, name=name).serialize()
        Unit.from_text(name, text)
    except UnitError as e:
        raise HttpError(400, str(e)) from None
    return text


def parse_metadata_patch(data: Any) -> dict[str, list[tuple[str, str | None]]]:
    """A JSON Patch of machine metadata as per-machine (key, value or None to remove) changes,
    in request order; HttpError 400 for any invalid operation (nothing is applied then)."""
    if not isinstance(data, list):
        raise HttpError(400, f"unable to decode body: expected a JSON Patch array of "
                             f"operations, got {_json_type(data)}")
    changes: dict[str, list[tuple[str, str | None]]] = {}
    for i, op in enumerate(data):
        if not isinstance(op, dict):
            raise HttpError(400, f"invalid operation {i}: expected an object, got "
                                 f"{_json_type(op)}")
        kind = op.get("op")
        if not isinstance(kind, str) or kind not in PATCH_OPS:
            raise HttpError(400, f"invalid op in operation {i}: expect add, remove, or replace"
                                 f", got {json.dumps(kind)}")
        path = op.get("path")
        if not isinstance(path, str):
            raise HttpError(400, f"machine metadata path invalid in operation {i}: path must "
                                 f"be a string, got {_json_type(path)}")
        m = METADATA_PATH.fullmatch(path)
        if m is None:
            raise HttpError(400, f"machine metadata path invalid in operation {i}: {path!r} is "
                                 "not /<machine-id>/metadata/<name> (name: A-Z a-z 0-9 _ . -)")
        machine_id, key = m.group(1), m.group(2)
        value: str | None = None
        if kind != "remove":
            raw = op.get("value")
            if isinstance(raw, dict):  # fleet's code and fleetctl: {"value": "v"}
                raw = raw.get("value")
            if not isinstance(raw, str) or not raw:
                raise HttpError(400, f"invalid value in operation {i}: {kind} requires a "
                                     "non-empty string value (\"v\" or {\"value\": \"v\"})")
            value = raw
        changes.setdefault(machine_id, []).append((key, value))
    return changes


# --- the discovery document ----------------------------------------------------------------
def _schema_ref(name: str) -> dict[str, str]:
    return {"$ref": name}


def _str(description: str) -> dict[str, str]:
    return {"type": "string", "description": description}


def discovery_document() -> dict[str, Any]:
    """A Google API discovery document (the format fleet published) for this API."""
    page_param = {"nextPageToken": {"type": "string", "location": "query",
                                    "description": "token of the page to return"}}
    name_param = {"unitName": {"type": "string", "required": True, "location": "path",
                               "description": "name of the unit"}}
    schemas: dict[str, Any] = {
        "Machine": {"id": "Machine", "type": "object", "properties": {
            "id": _str("the machine's machine-id"),
            "primaryIP": _str("address to reach the machine at"),
            "metadata": {"type": "object", "additionalProperties": {"type": "string"},
                         "description": "the machine's metadata (API-set over configured)"},
            "state": _str("fleet-py extension, only on a draining machine: draining"),
            RESOURCES_FIELD: {"type": "object", "description": (  # resources (extension)
                "fleet-py extension: cpuMilli, memoryBytes (capacity; 0 = not published), "
                "hostReservedCpuMilli, hostReservedMemoryBytes (kept for the host), "
                "reservedCpuMilli, reservedMemoryBytes (reserved by the units there)"),
                "additionalProperties": {"type": "integer"}}}},
        "MachinePage": {"id": "MachinePage", "type": "object", "properties": {
            "machines": {"type": "array", "items": _schema_ref("Machine")},
            "nextPageToken": {"type": "string"}}},
        "UnitOption": {"id": "UnitOption", "type": "object", "properties": {
            "section": _str("section of the option, e.g. Service"),
            "name": _str("option name, e.g. ExecStart"),
            "value": _str("option value")}},
        "Unit": {"id": "Unit", "type": "object", "properties": {
            "name": _str("unit name"),
            "options": {"type": "array", "items": _schema_ref("UnitOption")},
            "desiredState": {"type": "string", "enum": list(TARGET_STATES)},
            "currentState": {"type": "string", "enum": list(TARGET_STATES)},
            "machineID": _str("machine the unit is scheduled to")}},
        "UnitPage": {"id": "UnitPage", "type": "object", "properties": {
            "units": {"type": "array", "items": _schema_ref("Unit")},
            "nextPageToken": {"type": "string"}}},
        "UnitState": {"id": "UnitState", "type": "object", "properties": {
            "name": _str("unit name"), "hash": _str("SHA1 of the unit file"),
            "machineID": _str("reporting machine"),
            "systemdLoadState": _str("systemd load state"),
            "systemdActiveState": _str("systemd active state"),
            "systemdSubState": _str("systemd sub state")}},
        "UnitStatePage": {"id": "UnitStatePage", "type": "object", "properties": {
            "states": {"type": "array", "items": _schema_ref("UnitState")},
            "nextPageToken": {"type": "string"}}},
    }
    resources = {
        "Machines": {"methods": {
            "List": {"id": "fleet.Machine.List", "httpMethod": "GET", "path": "machines",
                     "parameters": page_param, "response": _schema_ref("MachinePage")},
            "Patch": {"id": "fleet.Machine.Patch", "httpMethod": "PATCH", "path": "machines",
                      "description": "JSON Patch (add/remove/replace) of "
                                     "/<machine-id>/metadata/<name>"}}},
        "Units": {"methods": {
            "List": {"id": "fleet.Unit.List", "httpMethod": "GET", "path": "units",
                     "parameters": page_param, "response": _schema_ref("UnitPage")},
            "Get": {"id": "fleet.Unit.Get", "httpMethod": "GET", "path": "units/{unitName}",
                    "parameters": name_param, "parameterOrder": ["unitName"],
                    "response": _schema_ref("Unit")},
            "Set": {"id": "fleet.Unit.Set", "httpMethod": "PUT", "path": "units/{unitName}",
                    "parameters": name_param, "parameterOrder": ["unitName"],
                    "request": _schema_ref("Unit")},
            "Delete": {"id": "fleet.Unit.Delete", "httpMethod": "DELETE",
                       "path": "units/{unitName}", "parameters": name_param,
                       "parameterOrder": ["unitName"]}}},
        "UnitState": {"methods": {
            "List": {"id": "fleet.UnitState.List", "httpMethod": "GET", "path": "state",
                     "parameters": {**page_param,
                                    "machineID": {"type": "string", "location": "query"},
                                    "unitName": {"type": "string", "location": "query"}},
                     "response": _schema_ref("UnitStatePage")}}},
    }
    return {
        "kind": "discovery#restDescription", "discoveryVersion": "v1", "id": "fleet:v1",
        "name": "fleet", "version": "v1", "title": "fleet API",
        "description": f"fleet-py {__version__}: fleet's HTTP API v1",
        "protocol": "rest",
        # Like fleet's, deliberately unusable: clients set the root to their endpoint.
        "rootUrl": "$ENDPOINT/", "servicePath": "fleet/v1/", "batchPath": "batch",
        "parameters": {"alt": {"type": "string", "default": "json", "enum": ["json"],
                               "location": "query"}},
        "schemas": schemas, "resources": resources,
    }


# --- the server ----------------------------------------------------------------------------
Handler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


def _json(status: int, body: Any) -> web.Response:
    return web.Response(status=status, text=json.dumps(body, separators=(",", ":")),
                        content_type="application/json")


def _no_content(status: int) -> web.Response:
    return web.Response(status=status)


def _not_allowed(allowed: Sequence[str], what: str) -> HttpError:
    err = HttpError(405, f"only {', '.join(allowed)} supported against {what}")
    err.allowed = tuple(allowed)  # type: ignore[attr-defined]
    return err


class HttpApi:
    """fleet's HTTP API v1 over a FleetService (one aiohttp application)."""

    def __init__(self, service: FleetService, token_limit: int = DEFAULT_TOKEN_LIMIT,
                 outputs: Any = None) -> None:
        self.service = service
        self.token_limit = token_limit
        self.outputs = outputs  # the dashboard's journals and restarts (api.remote.UnitOutputs)
        self._discovery = json.dumps(discovery_document(), indent=1)

    def app(self) -> web.Application:
        from fleetd.dashboard import Dashboard

        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[self._errors])
        Dashboard(self.service, self.outputs).add_routes(app)  # /dashboard/, before the rest
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    @web.middleware
    async def _errors(self, request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                      ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except HttpError as e:
            response = _json(e.status, error_entity(e.status, e.message))
            allowed = getattr(e, "allowed", None)
            if allowed:
                response.headers["Allow"] = ", ".join(allowed)
        except ApiError as e:
            status = status_of(e)
            response = _json(status, error_entity(status, str(e)))
        except web.HTTPException as e:  # aiohttp's own refusals (e.g. body too large)
            response = _json(e.status, error_entity(e.status, e.reason))
        except Exception as e:
            log.exception("HTTP %s %s failed", request.method, request.path)
            response = _json(500, error_entity(500, f"internal error: {e}"))
        response.headers["Server"] = f"fleetd/{__version__} (fleet-py)"
        return response

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        path, method = request.path, request.method
        log.debug("HTTP %s %s", method, request.path_qs)
        if path == "/":
            raise HttpError(405, "/ is not a resource: the API is under /fleet/v1")
        for prefix in PREFIXES:
            if path == prefix:
                raise HttpError(405, f"{prefix} is not a resource: use {prefix}/units, "
                                     f"{prefix}/state, {prefix}/machines or "
                                     f"{prefix}/discovery")
            if not path.startswith(prefix + "/"):
                continue
            resource, sep, item = path[len(prefix) + 1:].partition("/")
            if sep and (not item or "/" in item):
                break
            route = self._routes().get((resource, bool(sep)))
            if route is None:
                break
            handlers, what = route
            handler = handlers.get(method)
            if handler is None:
                raise _not_allowed(list(handlers), what)
            return await handler(request, item)
        raise HttpError(404, f"no resource at {path}")

    def _routes(self) -> dict[tuple[str, bool], tuple[dict[str, Handler], str]]:
        return {
            ("units", False): ({"GET": self.list_units}, "the units collection"),
            ("units", True): ({"GET": self.get_unit, "PUT": self.put_unit,
                               "DELETE": self.delete_unit}, "a unit"),
            ("state", False): ({"GET": self.list_states}, "the state collection"),
            ("state", True): ({"GET": self.get_state}, "a unit state"),
            ("machines", False): ({"GET": self.list_machines, "PATCH": self.patch_machines},
                                  "the machines collection"),
            ("discovery", False): ({"GET": self.discovery}, "the discovery document"),
        }

    def _token(self, request: web.Request) -> PageToken:
        return page_token(request.query.getall("nextPageToken", []), self.token_limit)

    @staticmethod
    def _page(key: str, items: list[dict[str, Any]], token: str | None) -> web.Response:
        body: dict[str, Any] = {key: items}
        if token:
            body["nextPageToken"] = token
        return _json(200, body)

    # --- units --------------------------------------------------------------------------
    async def list_units(self, request: web.Request, _: str) -> web.StreamResponse:
        token = self._token(request)
        units = await self.service.list_units(with_text=True)
        page, nxt = paginate(units, token)
        return self._page("units", [unit_entity(u) for u in page], nxt)

    async def get_unit(self, request: web.Request, name: str) -> web.StreamResponse:
        return _json(200, unit_entity(await self.service.get_unit(name)))

    async def delete_unit(self, request: web.Request, name: str) -> web.StreamResponse:
        await self.service.destroy_unit(name)
        return _no_content(204)

    async def put_unit(self, request: web.Request, name: str) -> web.StreamResponse:
        ctype = request.headers.getall("Content-Type", [])
        if len(ctype) != 1 or ctype[0].split(";", 1)[0].strip().lower() != "application/json":
            raise HttpError(415, "only acceptable Content-Type is application/json")
        body = parse_unit_body(decode_json(await request.read()))
        if body.name and body.name != name:
            raise HttpError(400, f"name in URL {name!r} differs from unit name in request "
                                 f"body {body.name!r}")
        _check_name(name)  # before the body's options are read; the other rules: the service's
        desired = body.desired_state
        if desired and desired not in TARGET_STATES:
            raise HttpError(400, f"invalid desiredState {desired!r}: expected one of "
                                 + ", ".join(TARGET_STATES))
        if body.options:
            text = unit_text(name, body.options)
            try:
                existing: UnitInfo | None = await self.service.get_unit(name)
            except NotFound:
                existing = None
            replace = existing is not None and existing.hash != UnitFile.parse(text).hash()
            try:
                _, created = await self.service.create_unit(name, text, desired, replace)
            except AlreadyExists as e:
                raise HttpError(409, str(e)) from None
            return _no_content(201 if created or replace else 204)
        try:
            await self.service.get_unit(name)
        except NotFound:
            raise HttpError(409, f"unit {name} does not exist and options field empty") \
                from None
        if not desired:
            raise HttpError(409, f"must provide desiredState to update existing unit {name}")
        await self.service.set_target_state(name, desired)
        return _no_content(204)

    # --- state --------------------------------------------------------------------------
    async def list_states(self, request: web.Request, _: str) -> web.StreamResponse:
        token = self._token(request)
        machine_id = request.query.get("machineID", "")
        unit_name = request.query.get("unitName", "")
        states, _ips = await self.service.list_states([unit_name] if unit_name else None,
                                                      machine_id)
        page, nxt = paginate(states, token)
        return self._page("states", [state_entity(s) for s in page], nxt)

    async def get_state(self, request: web.Request, name: str) -> web.StreamResponse:
        states, _ips = await self.service.list_states([name])
        if not states:
            raise HttpError(404, f"unit state of {name} does not exist")
        return _json(200, state_entity(states[0]))

    # --- machines -----------------------------------------------------------------------
    async def list_machines(self, request: web.Request, _: str) -> web.StreamResponse:
        token = self._token(request)
        machines, _leader, used = await self.service.list_machines_reserved()
        draining = await self.service.draining()
        page, nxt = paginate(machines, token)
        return self._page("machines", [machine_entity(m, draining, used.get(m.id, (0, 0)))
                                       for m in page], nxt)

    async def patch_machines(self, request: web.Request, _: str) -> web.StreamResponse:
        changes = parse_metadata_patch(decode_json(await request.read()))
        if changes:
            await self.service.set_machine_metadata(changes)
        # fleet answered through sendResponse, which labels even an empty 204 as JSON
        return web.Response(status=204, content_type="application/json")

    # --- discovery ----------------------------------------------------------------------
    async def discovery(self, request: web.Request, _: str) -> web.StreamResponse:
        return web.Response(status=200, text=self._discovery, content_type="application/json")


class HttpServer:
    """The running HTTP API: `stop()` closes it and removes its unix socket."""

    def __init__(self, runner: web.AppRunner, unix_socket: str) -> None:
        self.runner = runner
        self.unix_socket = unix_socket

    async def stop(self) -> None:
        await self.runner.cleanup()
        if self.unix_socket and os.path.exists(self.unix_socket):
            os.unlink(self.unix_socket)


def _remove_stale_socket(path: str) -> None:
    """Unlink a unix socket left by a dead process; refuse to steal one that answers."""
    if not os.path.exists(path):
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            os.unlink(path)
            return
    raise OSError(f"HTTP API socket {path} is in use by another process")


def split_host_port(address: str) -> tuple[str, int]:
    """(host, port) of `host:port`; an empty host (`:port`) means every interface."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"http_tcp {address!r} is not host:port")
    return host.strip("[]"), int(port)


async def start_http_server(service: FleetService, *, unix_socket: str = "",
                            tcp_address: str = "",
                            token_limit: int = DEFAULT_TOKEN_LIMIT,
                            tls: ApiTls | None = None,
                            socket_group: str = "", outputs: Any = None) -> HttpServer:
    """Serve the HTTP API v1 on a unix socket (mode 0660, group `socket_group`) and/or TCP
    host:port (HTTPS requiring a client certificate with `tls`; plain HTTP without it, which
    the caller must have allowed)."""
    runner = web.AppRunner(HttpApi(service, token_limit, outputs).app(), access_log=None)
    await runner.setup()
    try:
        if unix_socket:
            os.makedirs(os.path.dirname(unix_socket) or ".", exist_ok=True)
            _remove_stale_socket(unix_socket)
            await web.UnixSite(runner, unix_socket).start()
            secure_unix_socket(unix_socket, socket_group)
        if tcp_address:
            host, port = split_host_port(tcp_address)
            await web.TCPSite(runner, host or None, port,
                              ssl_context=tls.server_context() if tls else None).start()
    except BaseException:
        await runner.cleanup()
        raise
    where = ", ".join(a for a in (unix_socket, tcp_address) if a)
    if where:
        log.info("HTTP API v1 listening on %s", where)
    return HttpServer(runner, unix_socket)
