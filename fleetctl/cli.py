"""fleetctl: fleet's command-line client, over fleetd's gRPC API.

Heavy modules (grpc, generated code) are imported only when a command runs, so `fleetctl help`
stays quick.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Any

import typer

from fleetctl.client import Client, FleetctlError, NotFoundError
from fleetctl.table import parse_fields, render, short_id
from fleetd import __version__

# Like fleet, a bare `fleetctl` prints the same help as -h, --help and `help` and exits 0, and
# that help names the version.
app = typer.Typer(add_completion=False, invoke_without_command=True,
                  help=f"fleetctl: control a fleet-py cluster.\n\nVersion: {__version__}",
                  context_settings={"help_option_names": ["-h", "--help"]})


class Options:
    endpoint: str | None = None
    request_timeout: float = 10.0
    tunnel: str = ""
    ssh: Any = None  # fleetctl.sshcmd.SSHOptions
    api_tunnel: Any = None  # fleetctl.sshcmd.ApiTunnel once opened
    tls: Any = None  # fleetctl.client.TlsFiles


OPTS = Options()


def client() -> Client:
    """The API client; through an SSH tunnel to the --tunnel host when one is given."""
    endpoint = OPTS.endpoint
    if OPTS.tunnel:
        if OPTS.api_tunnel is None:
            import atexit

            from fleetctl.client import DEFAULT_ENDPOINT
            from fleetctl.sshcmd import ApiTunnel

            try:
                tunnel = ApiTunnel(OPTS.ssh, endpoint or DEFAULT_ENDPOINT)
            except OSError as e:
                fail(str(e))
                raise
            atexit.register(tunnel.close)
            OPTS.api_tunnel = tunnel
        endpoint = str(OPTS.api_tunnel.endpoint)
        server_name = tunnel_server_name(OPTS.endpoint) if OPTS.tls else ""
        return Client(endpoint, OPTS.request_timeout, OPTS.tls, server_name)
    return Client(endpoint, OPTS.request_timeout, OPTS.tls)


def tunnel_server_name(endpoint: str | None) -> str:
    """The host fleetd's certificate must name when its TCP API is reached through a tunnel
    ("" for a unix socket: no TLS there)."""
    from fleetctl.client import grpc_target

    target = grpc_target(endpoint or "unix:")
    if target.startswith("unix:"):
        return ""
    return target.rsplit(":", 1)[0].strip("[]")


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(code)


def version_text() -> str:
    """fleet's `fleetctl --version` line."""
    return f"fleetctl version {__version__}"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit(0)


# Every global flag also reads FLEETCTL_<FLAG> from the environment, as fleet's getFlagsFromEnv
# did; a flag on the command line wins.
@app.callback()
def _root(
    ctx: typer.Context,
    endpoint: str = typer.Option(None, "--endpoint", envvar="FLEETCTL_ENDPOINT",
                                 help="fleetd API: unix:///path or host:port"),
    request_timeout: float = typer.Option(10.0, "--request-timeout",
                                          envvar="FLEETCTL_REQUEST_TIMEOUT",
                                          help="seconds to wait for one API call"),
    tunnel: str = typer.Option("", "--tunnel", envvar="FLEETCTL_TUNNEL",
                               help="reach the API (and machines) through SSH to this host[:port]"),
    ssh_username: str = typer.Option("core", "--ssh-username", envvar="FLEETCTL_SSH_USERNAME",
                                     help="user name for SSH connections"),
    ssh_port: int = typer.Option(22, "--ssh-port", envvar="FLEETCTL_SSH_PORT",
                                 help="port of sshd on the machines"),
    ssh_timeout: float = typer.Option(10.0, "--ssh-timeout", envvar="FLEETCTL_SSH_TIMEOUT",
                                      help="seconds to wait for an SSH connection"),
    known_hosts_file: str = typer.Option("~/.fleetctl/known_hosts", "--known-hosts-file",
                                         envvar="FLEETCTL_KNOWN_HOSTS_FILE",
                                         help="known-hosts file of fleetctl's SSH connections"),
    strict_host_key_checking: bool = typer.Option(
        True, "--strict-host-key-checking/--no-strict-host-key-checking",
        envvar="FLEETCTL_STRICT_HOST_KEY_CHECKING",
        help="verify host keys against the known-hosts file"),
    ca_file: str = typer.Option("", "--ca-file", envvar="FLEETCTL_CA_FILE",
                                help="CA certificate that signed fleetd's TLS certificate"),
    cert_file: str = typer.Option("", "--cert-file", envvar="FLEETCTL_CERT_FILE",
                                  help="TLS client certificate presented to fleetd"),
    key_file: str = typer.Option("", "--key-file", envvar="FLEETCTL_KEY_FILE",
                                 help="private key of the TLS client certificate"),
    _version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                  help="print fleetctl's version and exit"),
) -> None:
    if ctx.invoked_subcommand is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    from fleetctl.client import TlsFiles
    from fleetctl.sshcmd import SSHOptions

    OPTS.tls = TlsFiles(ca_file, cert_file, key_file)

    OPTS.endpoint = endpoint
    OPTS.request_timeout = request_timeout
    OPTS.tunnel = tunnel
    OPTS.ssh = SSHOptions(user=ssh_username, port=ssh_port, known_hosts_file=known_hosts_file,
                          strict_host_key_checking=strict_host_key_checking,
                          timeout_s=ssh_timeout, tunnel=tunnel)


# --- unit arguments ------------------------------------------------------------------------
def resolve_args(args: list[str]) -> list[tuple[str, str | None]]:
    """(unit name, path of the argument's local file or None) for each argument, by fleet's
    rule: the name is the argument's base name, `.service` appended when it has no unit
    type; the file is the argument itself (with that suffix) when it exists."""
    from fleetd.unit import UnitError, normalize_name, validate_name

    out = []
    for arg in args:
        path = normalize_name(arg)
        name = normalize_name(os.path.basename(arg))
        try:
            validate_name(name)
        except UnitError as e:
            fail(str(e))
        out.append((name, path if os.path.isfile(path) else None))
    return out


def read_unit_file(path: str) -> str:
    from fleetd.unit import MAX_UNIT_FILE_BYTES

    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_UNIT_FILE_BYTES + 1)  # never slurp a huge file
    except OSError as e:
        fail(f"unable to read unit file {path}: {e.strerror}")
    if len(raw) > MAX_UNIT_FILE_BYTES:
        fail(f"unit file {path} is larger than {MAX_UNIT_FILE_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"unit file {path} is not valid UTF-8 (byte {e.start})")
    raise AssertionError("unreachable")


#: Desired states in which `<command> --replace` may replace a unit's file (fleet's rule: a
#: command never moves a unit backwards, e.g. `submit --replace` leaves a launched unit alone).
REPLACEABLE_IN = {"submit": ("inactive",), "load": ("inactive", "loaded"),
                  "start": ("inactive", "loaded", "launched")}


def _checked(name: str, text: str, source: str) -> str:
    """`text` if it is a valid unit file for `name` (an instance's template expanded for the
    instance); otherwise exit naming the unit and the file."""
    from fleetd.unit import Unit, UnitError

    try:
        Unit.from_text(name, text)
    except UnitError as e:
        fail(f"{e} (from {source})")
    return text


def _file_hash(text: str) -> str | None:
    from fleetd.unit import UnitError, UnitFile

    try:
        return UnitFile.parse(text).hash()
    except UnitError:
        return None


def _warn(message: str) -> None:
    typer.echo(f"WARNING: {message}", err=True)


@dataclass(frozen=True)
class _Plan:
    name: str
    text: str  # "" = the cluster instantiates the instance from its submitted template
    replace: bool


def ensure_units(c: Client, args: list[str], command: str, desired: str = "",
                 replace: bool = False, already_set: set[str] | None = None) -> list[str]:
    """Make every argument a unit in the cluster, by fleet's rules, and return the names:

    1. a unit of that name in the cluster is used as it is (a warning if the local file, or
       the local template of an instance, differs; `--replace` replaces it with the local
       file instead, when the unit's desired state allows it for `command`);
    2. else the local file is submitted;
    3. else, for an instance, its template submitted in the cluster, or else the template
       file next to the argument (DIR/foo@.service for DIR/foo@1.service), is instantiated.

    Nothing is changed unless every argument is valid. Units created here get `desired` in
    the same call; their names are added to `already_set`."""
    from fleetd.unit import UnitName

    cluster = {u.name: u for u in c.call("ListUnits").units}
    plans: list[_Plan] = []
    for arg, (name, path) in zip(args, resolve_args(args), strict=True):
        parsed = UnitName.parse(name)
        tmpl_path = None
        if parsed.is_instance:
            candidate = os.path.join(os.path.dirname(arg), parsed.template())
            tmpl_path = candidate if os.path.isfile(candidate) else None
        local: tuple[str, str] | None = None
        if path:
            local = (read_unit_file(path), f"local unit file {path}")
        elif tmpl_path:
            local = (read_unit_file(tmpl_path), f"local template unit file {tmpl_path}")
        existing = cluster.get(name)
        if existing is not None:
            differs = local is not None and _file_hash(local[0]) != existing.hash
            if not replace:
                if differs:
                    assert local is not None
                    _warn(f"Unit {name} in the cluster differs from {local[1]}; "
                          "add --replace to override")
                continue
            if local is None:
                fail(f"unable to replace unit {name}: no unit file {normalize(arg)}"
                     + (f" nor template {parsed.template()} next to it"
                        if parsed.is_instance else ""))
                raise AssertionError("unreachable")
            text = _checked(name, local[0], local[1])
            if not differs:
                typer.echo(f"Found same Unit({name}) in the cluster, nothing to do")
            elif existing.desired_state not in REPLACEABLE_IN.get(command, ()):
                _warn(f"can not replace Unit({name}) in state '{existing.desired_state}', "
                      "use the appropriate command")
            else:
                plans.append(_Plan(name, text, True))
            continue
        if path:
            plans.append(_Plan(name, _checked(name, read_unit_file(path), path), False))
            continue
        if not parsed.is_instance:
            fail(f"unable to find unit file {normalize(arg)}: no such file, and unit {name} "
                 "is not in the cluster")
        template = cluster.get(parsed.template())
        if template is not None:
            if tmpl_path and local is not None and _file_hash(local[0]) != template.hash:
                _warn(f"Unit {template.name} in the cluster differs from {local[1]}; "
                      f"instantiating {name} from the cluster's")
            tmpl_text = c.call("GetUnit", name=template.name).text
            _checked(name, tmpl_text, f"template {template.name} in the cluster")
            plans.append(_Plan(name, "", False))
        elif local is not None:
            plans.append(_Plan(name, _checked(name, local[0], local[1]), False))
        else:
            fail(f"unable to find unit file {normalize(arg)} or template "
                 f"{parsed.template()}: neither is in the cluster or on disk "
                 f"(looked for {os.path.join(os.path.dirname(arg), parsed.template())})")
    for plan in plans:
        try:
            c.call("CreateUnit", name=plan.name, text=plan.text, desired_state=desired,
                   replace=plan.replace)
        except NotFoundError as e:
            fail(str(e))
        except FleetctlError as e:
            fail(str(e), e.exit_code)
        if already_set is not None and desired:
            already_set.add(plan.name)
        if plan.replace:
            _replace_instances(c, plan.name)
    return [name for name, _ in resolve_args(args)]


def normalize(arg: str) -> str:
    from fleetd.unit import normalize_name

    return normalize_name(arg)


def _replace_instances(c: Client, template: str) -> None:
    """After replacing a template, give each submitted instance of it the new file too (the
    agents then restart them where they run)."""
    from fleetd.unit import UnitName

    parsed = UnitName.parse(template)
    if not parsed.is_template:
        return
    for u in c.call("ListUnits").units:
        n = UnitName.parse(u.name)
        if n.is_instance and n.template() == template:
            c.call("CreateUnit", name=u.name, text="", desired_state="", replace=True)


# --- blocking ------------------------------------------------------------------------------
BLOCK_ATTEMPT_S = 0.5  # one --block-attempts attempt
POLL_S = 0.05


def wait_for(c: Client, names: list[str], target: str, attempts: int) -> bool:
    """Wait until every unit reaches `target` as its agent reports it; print fleet's lines.
    Returns False if attempts ran out."""
    deadline = time.monotonic() + attempts * BLOCK_ATTEMPT_S if attempts > 0 else None
    pending = list(names)
    while pending:
        units = {u.name: u for u in c.call("ListUnits").units}
        states = c.call("ListUnitStates", names=pending).states
        by_unit: dict[str, list[Any]] = {}
        for s in states:
            by_unit.setdefault(s.name, []).append(s)
        for name in list(pending):
            u = units.get(name)
            reached, where = _reached(u, by_unit.get(name, []), target)
            if reached:
                pending.remove(name)
                if target == "inactive":
                    typer.echo(f"Unit {name} inactive")
                elif u is not None and u.__getattribute__("global"):
                    typer.echo(f"Triggered global unit {name} {_verb(target)}")
                else:
                    typer.echo(f"Unit {name} {target} on {where}")
        if not pending:
            return True
        if deadline is not None and time.monotonic() > deadline:
            for name in pending:
                typer.echo(f"Error waiting for unit {name} to reach state {target}", err=True)
            return False
        time.sleep(POLL_S)
    return True


def _verb(target: str) -> str:
    return {"launched": "start", "loaded": "load", "inactive": "unload"}.get(target, target)


def _reached(u: Any, states: list[Any], target: str) -> tuple[bool, str]:
    if u is None:
        return target == "inactive", ""
    if target == "inactive":
        return not u.machine_ids and not states, ""
    if u.__getattribute__("global"):
        return bool(u.machine_ids), ""
    for s in states:
        if s.machine_id in u.machine_ids and s.state == target:
            return True, f"{short_id(s.machine_id, False)}/{s.machine_ip}"
    return False, ""


def set_state(args: list[str], target: str, no_block: bool, block_attempts: int,
              command: str = "", replace: bool = False) -> None:
    """Set the desired state of units; `command` (submit/load/start) first submits the
    arguments that are not in the cluster yet (see `ensure_units`)."""
    if target != "inactive":
        from fleetd.unit import UnitName

        for name, _ in resolve_args(args):
            if UnitName.parse(name).is_template:
                fail(f"cannot activate template {name}: a template is only submitted; "
                     "start its instances (e.g. " + name.replace("@.", "@1.") + ")")
    c = client()
    try:
        done: set[str] = set()
        if command:
            names = ensure_units(c, args, command, target, replace=replace, already_set=done)
        else:
            names = [n for n, _ in resolve_args(args)]
            if target == "loaded":
                _refuse_stop_of_inactive(c, names)
        for name in names:
            if name in done:
                continue  # created with its desired state in one call
            try:
                c.call("SetUnitTargetState", name=name, desired_state=target)
            except NotFoundError:
                fail(f"unit {name} does not exist")
        if no_block:
            return
        if not wait_for(c, names, target, block_attempts):
            raise typer.Exit(1)
    except FleetctlError as e:
        fail(str(e), e.exit_code)


def _refuse_stop_of_inactive(c: Client, names: list[str]) -> None:
    """fleet refuses to stop a (non-global) unit that is not loaded anywhere."""
    units = {u.name: u for u in c.call("ListUnits").units}
    for name in names:
        u = units.get(name)
        if u is None:
            fail(f"unit {name} does not exist")
        elif not u.__getattribute__("global") and u.desired_state == "inactive":
            fail(f"Unable to stop unit {name} in state inactive")


NO_BLOCK = typer.Option(False, "--no-block", help="do not wait until the units reach the state")
BLOCK_ATTEMPTS = typer.Option(0, "--block-attempts",
                              help="wait at most N attempts (0.5 s each); 0 waits forever")
UNITS = typer.Argument(..., help="unit names or unit file paths")


@app.command()
def submit(units: list[str] = UNITS,
           replace: bool = typer.Option(False, "--replace",
                                        help="replace the file of an existing unit")) -> None:
    """Upload unit files into the cluster without scheduling them."""
    c = client()
    try:
        ensure_units(c, units, "submit", replace=replace)
    except FleetctlError as e:
        fail(str(e), e.exit_code)


REPLACE = typer.Option(False, "--replace",
                       help="replace the file of an existing unit and restart it where it runs")


@app.command()
def load(units: list[str] = UNITS, no_block: bool = NO_BLOCK,
         block_attempts: int = BLOCK_ATTEMPTS, replace: bool = REPLACE) -> None:
    """Schedule units onto machines and load them into systemd, without starting them."""
    set_state(units, "loaded", no_block, block_attempts, "load", replace=replace)


@app.command()
def start(units: list[str] = UNITS, no_block: bool = NO_BLOCK,
          block_attempts: int = BLOCK_ATTEMPTS, replace: bool = REPLACE) -> None:
    """Schedule units (submitting files first) and start them."""
    set_state(units, "launched", no_block, block_attempts, "start", replace=replace)


@app.command()
def stop(units: list[str] = UNITS, no_block: bool = NO_BLOCK,
         block_attempts: int = BLOCK_ATTEMPTS) -> None:
    """Stop units; they stay loaded on their machines."""
    set_state(units, "loaded", no_block, block_attempts)


@app.command()
def unload(units: list[str] = UNITS, no_block: bool = NO_BLOCK,
           block_attempts: int = BLOCK_ATTEMPTS) -> None:
    """Stop units and unschedule them from their machines."""
    set_state(units, "inactive", no_block, block_attempts)


@app.command()
def destroy(units: list[str] = UNITS) -> None:
    """Remove units from the cluster entirely (stopping them where they run)."""
    c = client()
    try:
        for name, _ in resolve_args(units):
            try:
                c.call("DestroyUnit", name=name)
            except NotFoundError:
                fail(f"unit {name} does not exist")
            typer.echo(f"Destroyed {name}")
    except FleetctlError as e:
        fail(str(e), e.exit_code)


@app.command("cat")
def cat_(unit: str = typer.Argument(..., help="unit name")) -> None:
    """Print the unit file of a submitted unit."""
    from fleetd.unit import normalize_name

    c = client()
    try:
        u = c.call("GetUnit", name=normalize_name(unit))
    except NotFoundError:
        fail(f"unit {normalize_name(unit)} not found")
    except FleetctlError as e:
        fail(str(e), e.exit_code)
    sys.stdout.write(u.text if u.text.endswith("\n") else u.text + "\n")


FULL = typer.Option(False, "--full", "-l", help="do not abbreviate machine ids and hashes")
NO_LEGEND = typer.Option(False, "--no-legend", help="do not print the header line")

MACHINE_FIELDS = ["machine", "ip", "metadata"]
UNIT_FIELDS = ["unit", "machine", "active", "sub", "load", "hash", "desc"]
UNIT_FILE_FIELDS = ["unit", "hash", "dstate", "state", "target", "global", "desc", "tmachine"]


def _fields(raw: str, allowed: list[str], command: str) -> list[str]:
    try:
        return parse_fields(raw, allowed, command)
    except ValueError as e:
        fail(str(e))
    raise AssertionError("unreachable")


def _metadata(md: Any) -> str:
    return ",".join(f"{k}={md[k]}" for k in sorted(md)) or "-"


OUTPUT = typer.Option("table", "--output", "-o", help="table, or json for scripts")


def _emit(rows: list[Any], cols: list[str], columns: dict[str, Any], no_legend: bool,
          output: str, json_columns: dict[str, Any] | None = None) -> None:
    """Print rows as fleet's table or, with -o json, as a JSON list of objects with the
    selected fields (full ids and hashes; JSON types where they exist)."""
    if output == "json":
        import json

        jc = {**columns, **(json_columns or {})}
        sys.stdout.write(json.dumps([{f: jc[f](r) for f in cols} for r in rows], indent=2)
                         + "\n")
    elif output == "table":
        sys.stdout.write(render(rows, cols, columns, legend=not no_legend))
    else:
        fail(f"invalid output format {output!r}: expected table or json")


@app.command("list-machines")
def list_machines(full: bool = FULL, no_legend: bool = NO_LEGEND,
                  fields: str = typer.Option("machine,ip,metadata", "--fields"),
                  output: str = OUTPUT) -> None:
    """List the live machines of the cluster."""
    cols = _fields(fields, MACHINE_FIELDS, "list-machines")
    try:
        machines = client().call("ListMachines").machines
    except FleetctlError as e:
        fail(str(e), e.exit_code)
    rows = [{"m": m} for m in machines]
    columns = {"machine": lambda r: short_id(r["m"].id, full), "ip": lambda r: r["m"].ip or "-",
               "metadata": lambda r: _metadata(r["m"].metadata)}
    _emit(rows, cols, columns, no_legend, output, {
        "machine": lambda r: r["m"].id, "ip": lambda r: r["m"].ip,
        "metadata": lambda r: dict(sorted(r["m"].metadata.items()))})


@app.command("list-units")
def list_units(full: bool = FULL, no_legend: bool = NO_LEGEND,
               fields: str = typer.Option("unit,machine,active,sub", "--fields"),
               output: str = OUTPUT) -> None:
    """List units scheduled in the cluster with their systemd state on their machine."""
    cols = _fields(fields, UNIT_FIELDS, "list-units")
    c = client()
    try:
        units = {u.name: u for u in c.call("ListUnits").units}
        states = c.call("ListUnitStates").states
    except FleetctlError as e:
        fail(str(e), e.exit_code)
    rows: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for s in states:
        u = units.get(s.name)
        rows.append({"u": u, "name": s.name, "machine": f"{short_id(s.machine_id, full)}/"
                     f"{s.machine_ip or '-'}", "machine_id": s.machine_id,
                     "active": s.active_state or "-",
                     "sub": s.sub_state or "-", "load": s.load_state or "-",
                     "hash": s.hash, "is_global": bool(u and u.__getattribute__("global"))})
        if s.active_state in ("active", "activating", "reloading"):
            seen[s.name] = seen.get(s.name, 0) + 1
    reported = {s.name for s in states}
    for name, u in sorted(units.items()):
        if name not in reported and u.machine_ids:
            for mid in u.machine_ids:
                rows.append({"u": u, "name": name, "machine": short_id(mid, full),
                             "machine_id": mid,
                             "active": "-", "sub": "-", "load": "-", "hash": u.hash,
                             "is_global": u.__getattribute__("global")})
    rows.sort(key=lambda r: (r["name"], r["machine"]))
    columns = {
        "unit": lambda r: r["name"], "machine": lambda r: r["machine"],
        "active": lambda r: r["active"], "sub": lambda r: r["sub"], "load": lambda r: r["load"],
        "hash": lambda r: r["hash"] if full else r["hash"][:7],
        "desc": lambda r: (r["u"].description if r["u"] else "") or "-",
    }
    twice = sorted(n for n, k in seen.items() if k > 1 and not
                   (units.get(n) and units[n].__getattribute__("global")))
    if output == "table":
        for r in rows:  # flag the offending rows themselves, not only the summary below
            if r["name"] in twice:
                r["name"] = f"{r['name']} (!)"
    _emit(rows, cols, columns, no_legend, output, {
        "machine": lambda r: r["machine_id"], "hash": lambda r: r["hash"],
        "unit": lambda r: r["name"].removesuffix(" (!)")})
    for name in twice:
        typer.echo(f"WARNING: unit {name} is running on {seen[name]} machines at once; "
                   "fleet must never let this happen: report it", err=True)
    if twice:
        raise typer.Exit(2)


@app.command("list-unit-files")
def list_unit_files(full: bool = FULL, no_legend: bool = NO_LEGEND,
                    fields: str = typer.Option("unit,hash,dstate,state,target", "--fields"),
                    output: str = OUTPUT) -> None:
    """List every submitted unit with its desired and current state and target machine."""
    cols = _fields(fields, UNIT_FILE_FIELDS, "list-unit-files")
    if "tmachine" in cols:
        typer.echo('WARNING: The "tmachine" field is deprecated. Use "target" instead', err=True)
    c = client()
    try:
        units = c.call("ListUnits").units
        ips = {m.id: m.ip for m in c.call("ListMachines").machines}
    except FleetctlError as e:
        fail(str(e), e.exit_code)

    def target(u: Any) -> str:
        if u.__getattribute__("global"):
            return "global"
        if not u.machine_ids:
            return "-"
        mid = u.machine_ids[0]
        return f"{short_id(mid, full)}/{ips.get(mid, '-')}"

    def json_target(u: Any) -> str | None:
        """As the table: "global", the machine's full id, or null when not scheduled."""
        if u.__getattribute__("global"):
            return "global"
        return u.machine_ids[0] if u.machine_ids else None

    def state(u: Any) -> str | None:
        """fleet shows no single state for a global unit (it has one per machine)."""
        return None if u.__getattribute__("global") else (u.current_state or None)

    columns = {
        "unit": lambda u: u.name, "hash": lambda u: u.hash if full else u.hash[:7],
        "dstate": lambda u: u.desired_state, "state": lambda u: state(u) or "-",
        "target": target, "tmachine": target,
        "global": lambda u: str(u.__getattribute__("global")).lower(),
        "desc": lambda u: u.description or "-",
    }
    _emit(list(units), cols, columns, no_legend, output, {
        "hash": lambda u: u.hash, "state": state,
        "target": json_target, "tmachine": json_target,
        "global": lambda u: bool(u.__getattribute__("global")), "desc": lambda u: u.description})


@app.command()
def why(unit: str = typer.Argument(..., help="unit name")) -> None:
    """Explain why a unit is or is not scheduled: which check rejected which machine."""
    from fleetd.unit import normalize_name

    name = normalize_name(unit)
    try:
        ex = client().call("ExplainUnit", name=name)
    except NotFoundError:
        fail(f"unit {name} does not exist")
    except FleetctlError as e:
        fail(str(e), e.exit_code)
    typer.echo(f"Unit {name}: desired state {ex.desired_state}")
    if ex.scheduled_on:
        typer.echo("Scheduled on: " + ", ".join(ex.scheduled_on))
    if ex.unschedulable_reason:
        typer.echo("Not scheduled: " + ex.unschedulable_reason)
    typer.echo("Feasible machines: " + (", ".join(ex.feasible) or "none"))
    for r in ex.rejected:
        typer.echo(f"  {r.machine_id}: rejected by {r.check}: {r.detail}")


@app.command()
def version() -> None:
    """Print fleetctl's version."""
    typer.echo(version_text())


@app.command("help")
def help_(ctx: typer.Context,
          command: str = typer.Argument("", help="command to describe")) -> None:
    """Show the commands, or the help of one command."""
    root = ctx.find_root()
    if not command:
        typer.echo(root.get_help())
        return
    group: Any = root.command
    cmd = group.get_command(root, command)
    if cmd is None:
        fail(f"unknown command {command!r}; run `fleetctl help` for the list")
        return
    sub = type(ctx)(cmd, info_name=command, parent=root)
    typer.echo(cmd.get_help(sub))


def main() -> None:
    try:
        app()
    except FleetctlError as e:
        typer.echo(f"Error: {e}", err=True)
        sys.exit(e.exit_code)


# Commands defined in their own modules register themselves on `app`.
import fleetctl.remote  # noqa: E402
import fleetctl.rolling  # noqa: E402, F401
