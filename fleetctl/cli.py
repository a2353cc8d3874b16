"""fleetctl's entry point: the global flags, the table of commands, and dispatch.

Start-up is what a user feels on every command, so this module imports nothing but `os`,
`sys` and fleetctl.command: the global flags are parsed by hand, the module of the command
being run is imported only once it is known (argparse, grpc and the unit model come with
the commands that need them), and `version` and the top-level help need none of them.

The CLI library was chosen by measurement (python -X importtime and whole-process runs, this
machine): argparse adds about 1-2 ms and is built only for the command being run; typer took
38 ms to import and imported pydantic on every run; click is only present vendored inside
typer (importing it imports typer). Completion scripts are static (fleetctl.completion).
"""

from __future__ import annotations

import os
import sys

from fleetctl.command import OPTS, Exit

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NoReturn

    from fleetctl.command import Command

#: Every command: name -> (module defining it, the summary `fleetctl help` lists). The summary
#: is the first line of the command's own help (a unit test keeps the two equal).
COMMANDS: dict[str, tuple[str, str]] = {
    "submit": ("units", "Upload unit files into the cluster without scheduling them."),
    "load": ("units", "Schedule units onto machines and load them into systemd, without "
             "starting them."),
    "start": ("units", "Schedule units (submitting files first) and start them."),
    "stop": ("units", "Stop units; they stay loaded on their machines."),
    "unload": ("units", "Stop units and unschedule them from their machines."),
    "destroy": ("units", "Remove units from the cluster entirely (stopping them where they "
                "run)."),
    "restart": ("rolling", "Restart launched units where they run (a global unit on every "
                "machine)."),
    "cat": ("units", "Print the unit file of a submitted unit."),
    "list-machines": ("listing", "List the live machines of the cluster."),
    "list-units": ("listing", "List units scheduled in the cluster with their systemd state "
                   "on their machine."),
    "list-unit-files": ("listing", "List every submitted unit with its desired and current "
                        "state and target machine."),
    "why": ("units", "Explain why a unit is or is not scheduled: which check rejected which "
            "machine."),
    "status": ("remote", "Print `systemctl status` of units, from the machines that run "
               "them."),
    "journal": ("remote", "Print the journal of a unit from the machine that runs it "
                "(streamed live with -f)."),
    "ssh": ("remote", "Open a shell (or run COMMAND...) over SSH on a machine or on the "
            "machine of a unit."),
    "drain": ("maintenance", "Take a machine out of service: no new units go there and its "
              "units move to other machines."),
    "undrain": ("maintenance", "Make a draining machine eligible for new units again (its "
                "units do not move back)."),
    "move": ("maintenance", "Move a unit to another machine, starting the new copy before "
             "stopping the old one."),
    "dashboard": ("dashboard_command", "Serve the cluster dashboard (a web page) on a local "
                  "address."),
    "completion": ("completion", "Print the shell completion script for bash, zsh or fish."),
    "version": ("", "Print fleetctl's version."),
    "help": ("", "Show the commands, or the help of one command."),
}


class GlobalFlag:
    """A global flag; its value also comes from FLEETCTL_<FLAG> (a flag given wins), as
    fleet's getFlagsFromEnv did."""

    def __init__(self, name: str, kind: type, metavar: str, help: str) -> None:
        self.name, self.kind, self.metavar, self.help = name, kind, metavar, help
        self.dest = name[2:].replace("-", "_")
        self.env = "FLEETCTL_" + self.dest.upper()

    def convert(self, raw: str, source: str) -> object:
        if self.kind is bool:
            value = raw.strip().lower()
            if value in ("1", "true", "t", "yes", "y", "on"):
                return True
            if value in ("0", "false", "f", "no", "n", "off"):
                return False
            usage_error(f"Invalid value for {source}: {raw!r} is not a valid boolean.")
        try:
            return self.kind(raw)
        except ValueError:
            usage_error(f"Invalid value for {source}: {raw!r} is not a valid "
                        f"{self.kind.__name__}.")


GLOBAL_FLAGS = [
    GlobalFlag("--endpoint", str, "URL", "fleetd API: unix:///path or host:port"),
    GlobalFlag("--request-timeout", float, "SECONDS", "seconds to wait for one API call"),
    GlobalFlag("--tunnel", str, "HOST[:PORT]",
               "reach the API (and machines) through SSH to this host[:port]"),
    GlobalFlag("--ssh-username", str, "USER", "user name for SSH connections"),
    GlobalFlag("--ssh-port", int, "PORT", "port of sshd on the machines"),
    GlobalFlag("--ssh-timeout", float, "SECONDS", "seconds to wait for an SSH connection"),
    GlobalFlag("--known-hosts-file", str, "FILE",
               "known-hosts file of fleetctl's SSH connections"),
    GlobalFlag("--strict-host-key-checking", bool, "",
               "verify host keys against the known-hosts file (--no-... to turn it off)"),
    GlobalFlag("--ca-file", str, "FILE", "CA certificate that signed fleetd's TLS certificate"),
    GlobalFlag("--cert-file", str, "FILE", "TLS client certificate presented to fleetd"),
    GlobalFlag("--key-file", str, "FILE", "private key of the TLS client certificate"),
]
_BY_NAME = {f.name: f for f in GLOBAL_FLAGS}


def version_text() -> str:
    """fleet's `fleetctl --version` line."""
    from fleetd import __version__

    return f"fleetctl version {__version__}"


def usage_error(message: str) -> NoReturn:
    """A command line fleetctl cannot run: exit 2, as fleet's did."""
    sys.stderr.write(f"Usage: fleetctl [OPTIONS] COMMAND [ARGS]...\n"
                     f"Try 'fleetctl help' for help.\n\nError: {message}\n")
    raise Exit(2)


def _wrap(text: str, indent: int, width: int = 79) -> list[str]:
    """`text` in lines of at most `width` columns, every line after the first indented."""
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width - indent:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    return [*lines, line]


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    """Two columns (name, text) as help prints them: the text wrapped to 80 columns."""
    col = min(max(len(n) for n, _ in rows) + 4, 28)
    out = []
    for name, text in rows:
        wrapped = _wrap(text, col)
        if len(name) + 4 > col:
            out += [f"  {name}", *(" " * col + w for w in wrapped)]
        else:
            out += [f"  {name.ljust(col - 2)}{wrapped[0]}", *(" " * col + w for w in wrapped[1:])]
    return out


def root_help() -> str:
    from fleetd import __version__

    flags = [(f"{f.name} {f.metavar}".strip(), f"{f.help} [${f.env}]") for f in GLOBAL_FLAGS]
    flags += [("--version", "print fleetctl's version and exit"),
              ("-h, --help", "show this help and exit")]
    return "\n".join([
        "Usage: fleetctl [OPTIONS] COMMAND [ARGS]...", "",
        "fleetctl: control a fleet-py cluster.", "", f"Version: {__version__}", "",
        "Commands:", *_rows([(n, s) for n, (_, s) in COMMANDS.items()]), "",
        "Options (each also read from the environment variable shown):", *_rows(flags), "",
        "Run `fleetctl help COMMAND` for the flags of a command.",
    ]) + "\n"


def load(name: str) -> Command:
    """The declaration of command `name`, importing the one module that defines it."""
    import importlib

    module = importlib.import_module(f"fleetctl.{COMMANDS[name][0]}")
    command: Command = module.COMMANDS[name]
    return command


def parse_globals(argv: Sequence[str]) -> list[str]:
    """Set OPTS from the global flags in front of the command (then from FLEETCTL_<FLAG>);
    return the command and its arguments ([] when none is given)."""
    given: dict[str, object] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            i += 1
            break
        if not arg.startswith("-") or arg == "-":
            break
        name, eq, value = arg.partition("=")
        if name in ("-h", "--help"):
            sys.stdout.write(root_help())
            raise Exit(0)
        if name == "--version":
            print(version_text())
            raise Exit(0)
        negated = name.startswith("--no-")
        spec = _BY_NAME.get("--" + name[5:] if negated else name)
        if spec is None or (negated and spec.kind is not bool):
            usage_error(f"No such option: {name}")
        if spec.kind is bool:
            if negated and eq:
                usage_error(f"Option {name!r} does not take a value.")
            given[spec.dest] = spec.convert(value, name) if eq else not negated
        else:
            if not eq:
                i += 1
                if i == len(argv):
                    usage_error(f"Option {name!r} requires an argument.")
                value = argv[i]
            given[spec.dest] = spec.convert(value, name)
        i += 1
    for spec in GLOBAL_FLAGS:
        if spec.dest in given:
            setattr(OPTS, spec.dest, given[spec.dest])
        elif os.environ.get(spec.env):
            setattr(OPTS, spec.dest, spec.convert(os.environ[spec.env], spec.env))
    return list(argv[i:])


def help_command(args: list[str]) -> int:
    if not args:
        sys.stdout.write(root_help())
        return 0
    if args[0] not in COMMANDS or not COMMANDS[args[0]][0]:
        if args[0] in COMMANDS:  # version, help: nothing more to say than the summary
            usage = "help [COMMAND]" if args[0] == "help" else args[0]
            print(f"Usage: fleetctl {usage}\n\n{COMMANDS[args[0]][1]}")
            return 0
        print(f"Error: unknown command {args[0]!r}; run `fleetctl help` for the list",
              file=sys.stderr)
        return 1
    load(args[0]).parser().print_help()
    return 0


def run(argv: Sequence[str]) -> int:
    """Run one fleetctl command line (without the program name); return its exit code."""
    from fleetctl.command import Options

    OPTS.__dict__.update(Options().__dict__)  # a fresh start for every run (tests run many)
    rest = parse_globals(argv)
    if not rest:
        sys.stdout.write(root_help())
        return 0
    name, args = rest[0], rest[1:]
    if name in ("version", "help") and args[:1] in (["-h"], ["--help"]):
        return help_command([name])
    if name == "version":
        if args:
            usage_error(f"Got unexpected extra argument ({args[0]})")
        print(version_text())
        return 0
    if name == "help":
        return help_command(args)
    if name not in COMMANDS:
        usage_error(f"No such command {name!r}.")
    command = load(name)
    try:
        parsed = command.parse(args)
    except SystemExit as e:  # argparse: help printed (0) or a usage error (2)
        return int(e.code or 0)
    return command.run(parsed)


def main(argv: Sequence[str] | None = None) -> int:
    """The `fleetctl` console script."""
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except Exit as e:
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `fleetctl list-units | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        from fleetctl.client import FleetctlError

        if not isinstance(e, FleetctlError):
            raise
        print(f"Error: {e}", file=sys.stderr)
        return e.exit_code


def __getattr__(name: str) -> object:
    """`fleetctl.cli.ensure_units` as before the commands moved to their own modules."""
    if name == "ensure_units":
        from fleetctl.units import ensure_units

        return ensure_units
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
