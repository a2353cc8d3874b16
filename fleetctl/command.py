"""What every fleetctl command shares: its declaration (`Command`), the global options as
parsed (`OPTS`), output helpers, the way out (`fail`, `Exit`) and the API client factory.

Kept light on purpose: the entry point imports it on every run, before it knows which command
runs; grpc and the unit model are imported only by the commands that need them.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False  # typing itself is not imported at run time: every run pays for it
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import NoReturn

    from fleetctl.client import Client, TlsFiles
    from fleetctl.sshcmd import ApiTunnel, SSHOptions


class Exit(Exception):
    """Leave fleetctl with `exit_code` (after whatever the command printed)."""

    def __init__(self, exit_code: int = 0) -> None:
        super().__init__(exit_code)
        self.exit_code = exit_code


class Command:
    """One fleetctl command: `help`'s first line is the summary `fleetctl help` lists;
    `arguments` declares its flags on an argparse parser; `run` gets the parsed namespace
    and returns the exit code."""

    def __init__(self, name: str, help: str,
                 arguments: Callable[[argparse.ArgumentParser], None],
                 run: Callable[[argparse.Namespace], int], rest: str = "") -> None:
        self.name, self.help, self.arguments, self.run = name, help, arguments, run
        # The namespace attribute that receives the arguments the command does not know
        # (ssh's remote command line); "" when they are an error.
        self.rest = rest

    def parse(self, args: list[str]) -> argparse.Namespace:
        """The parsed arguments; argparse exits 2 on a usage error, 0 after --help."""
        p = self.parser()
        if not self.rest:
            return p.parse_args(args)
        parsed, rest = p.parse_known_args(args)
        setattr(parsed, self.rest, rest)
        return parsed

    @property
    def summary(self) -> str:
        return self.help.split("\n", 1)[0]

    def parser(self) -> argparse.ArgumentParser:
        import argparse

        class Paragraphs(argparse.HelpFormatter):
            """Wraps each paragraph of the help on its own; indented lines stay as written."""

            def _fill_text(self, text: str, width: int, indent: str) -> str:
                import textwrap

                return "\n\n".join(
                    part if part.startswith(" ") else
                    textwrap.fill(" ".join(part.split()), width, initial_indent=indent,
                                  subsequent_indent=indent)
                    for part in text.split("\n\n"))

        width = _columns()
        p = argparse.ArgumentParser(
            prog=f"fleetctl {self.name}", description=self.help, allow_abbrev=False,
            formatter_class=lambda prog: Paragraphs(prog, width=width))
        self.arguments(p)
        return p


def _columns() -> int:
    """The terminal's width for help text, as argparse would find it, without the import of
    shutil (and its compression modules) argparse makes on every parser it builds."""
    import os

    try:
        return max(int(os.environ["COLUMNS"]), 40) - 2
    except (KeyError, ValueError):
        pass
    try:
        return max(os.get_terminal_size(sys.stdout.fileno()).columns, 40) - 2
    except (OSError, ValueError):
        return 78


class Options:
    """The global flags, after the command line and the FLEETCTL_<FLAG> variables. `ssh` and
    `tls` are built when a command asks for them."""

    def __init__(self) -> None:
        self.endpoint: str | None = None
        self.request_timeout = 10.0
        self.tunnel = ""
        self.ssh_username = "core"
        self.ssh_port = 22
        self.ssh_timeout = 10.0
        self.known_hosts_file = "~/.fleetctl/known_hosts"
        self.strict_host_key_checking = True
        self.ca_file = self.cert_file = self.key_file = ""
        self.api_tunnel: ApiTunnel | None = None

    @property
    def ssh(self) -> SSHOptions:
        from fleetctl.sshcmd import SSHOptions

        return SSHOptions(user=self.ssh_username, port=self.ssh_port,
                          known_hosts_file=self.known_hosts_file,
                          strict_host_key_checking=self.strict_host_key_checking,
                          timeout_s=self.ssh_timeout, tunnel=self.tunnel)

    @property
    def tls(self) -> TlsFiles:
        from fleetctl.client import TlsFiles

        return TlsFiles(self.ca_file, self.cert_file, self.key_file)


OPTS = Options()


def echo(message: str = "", err: bool = False) -> None:
    print(message, file=sys.stderr if err else sys.stdout)


def warn(message: str) -> None:
    echo(f"WARNING: {message}", err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print `Error: message` on stderr and leave with `code`."""
    echo(f"Error: {message}", err=True)
    raise Exit(code)


def client() -> Client:
    """The API client; through an SSH tunnel to the --tunnel host when one is given."""
    from fleetctl.client import Client

    if OPTS.tunnel:
        if OPTS.api_tunnel is None:
            import atexit

            from fleetctl.client import DEFAULT_ENDPOINT
            from fleetctl.sshcmd import ApiTunnel

            try:
                tunnel = ApiTunnel(OPTS.ssh, OPTS.endpoint or DEFAULT_ENDPOINT)
            except OSError as e:
                fail(str(e))
            atexit.register(tunnel.close)
            OPTS.api_tunnel = tunnel
        server_name = tunnel_server_name(OPTS.endpoint) if OPTS.tls else ""
        return Client(str(OPTS.api_tunnel.endpoint), OPTS.request_timeout, OPTS.tls,
                      server_name)
    return Client(OPTS.endpoint, OPTS.request_timeout, OPTS.tls)


def tunnel_server_name(endpoint: str | None) -> str:
    """The host fleetd's certificate must name when its TCP API is reached through a tunnel
    ("" for a unix socket: no TLS there)."""
    from fleetctl.client import grpc_target

    target = grpc_target(endpoint or "unix:")
    if target.startswith("unix:"):
        return ""
    return target.rsplit(":", 1)[0].strip("[]")


def api_errors(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run a command body, turning an API failure into `Error: ...` and its exit code."""
    from functools import wraps

    from fleetctl.client import FleetctlError

    @wraps(fn)
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except FleetctlError as e:
            fail(str(e), e.exit_code)

    return run


def units_argument(p: argparse.ArgumentParser, help: str = "unit names or unit file paths"
                   ) -> None:
    p.add_argument("units", nargs="+", metavar="UNIT", help=help)


def flag(p: argparse.ArgumentParser, *names: str, help: str) -> None:
    p.add_argument(*names, action="store_true", help=help)
