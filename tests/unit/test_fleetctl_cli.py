"""fleetctl's global surface as fleet had it: --version, one help for every help form, and
FLEETCTL_<FLAG> environment variables for the global flags (TestClientVersionFlag,
TestClientVersionHelpOutput, TestClientHelpFlag)."""

from __future__ import annotations

import socket
import time

import pytest
from typer.testing import CliRunner

from fleetctl.cli import OPTS, app
from fleetd import __version__

runner = CliRunner()


def test_version_flag_and_version_command_print_fleets_line() -> None:
    for args in (["--version"], ["version"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0 and r.stdout == f"fleetctl version {__version__}\n", args


def test_every_help_form_prints_the_same_help_with_the_version() -> None:
    outputs = []
    for args in ([], ["-h"], ["--help"], ["help"]):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)
        outputs.append(r.stdout)
    assert f"Version: {__version__}" in outputs[0]
    assert "list-units" in outputs[0]
    assert outputs[1:] == [outputs[0]] * 3


@pytest.mark.parametrize("var,value,attr,expected", [
    ("FLEETCTL_REQUEST_TIMEOUT", "2.5", "request_timeout", 2.5),
    ("FLEETCTL_ENDPOINT", "unix:///x.sock", "endpoint", "unix:///x.sock"),
    ("FLEETCTL_SSH_PORT", "2222", "ssh.port", 2222),
    ("FLEETCTL_SSH_TIMEOUT", "3", "ssh.timeout_s", 3.0),
    ("FLEETCTL_SSH_USERNAME", "admin", "ssh.user", "admin"),
    ("FLEETCTL_TUNNEL", "10.0.0.1", "tunnel", "10.0.0.1"),
    ("FLEETCTL_KNOWN_HOSTS_FILE", "/k", "ssh.known_hosts_file", "/k"),
    ("FLEETCTL_STRICT_HOST_KEY_CHECKING", "false", "ssh.strict_host_key_checking", False),
    ("FLEETCTL_CA_FILE", "/ca", "tls.ca_file", "/ca"),
])
def test_global_flags_read_fleetctl_environment_variables(
        var: str, value: str, attr: str, expected: object) -> None:
    r = runner.invoke(app, ["version"], env={var: value})
    assert r.exit_code == 0, r.output
    got: object = OPTS
    for part in attr.split("."):
        got = getattr(got, part)
    assert got == expected


def test_a_flag_on_the_command_line_wins_over_the_environment() -> None:
    r = runner.invoke(app, ["--request-timeout", "7", "version"],
                      env={"FLEETCTL_REQUEST_TIMEOUT": "2"})
    assert r.exit_code == 0 and OPTS.request_timeout == 7.0


def test_request_timeout_from_the_environment_bounds_a_silent_endpoint() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        env = {"FLEETCTL_ENDPOINT": f"127.0.0.1:{silent.getsockname()[1]}",
               "FLEETCTL_REQUEST_TIMEOUT": "0.5"}
        t0 = time.monotonic()
        r = runner.invoke(app, ["list-machines"], env=env)
        took = time.monotonic() - t0
    assert r.exit_code == 1 and "did not answer within" in r.output, r.output
    assert took < 5
