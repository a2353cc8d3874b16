"""fleetctl's global surface as fleet had it: --version, one help for every help form, and
FLEETCTL_<FLAG> environment variables for the global flags (TestClientVersionFlag,
TestClientVersionHelpOutput, TestClientHelpFlag); help that fits 80 columns; start-up that
imports only what the command needs; shell completion; the dashboard command's hand-over."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest

from fleetctl.cli import COMMANDS, OPTS, load, main
from fleetd import __version__


@pytest.fixture(autouse=True)
def _no_fleetctl_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for k in list(os.environ):
        if k.startswith("FLEETCTL_"):
            monkeypatch.delenv(k)
    yield


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_flag_and_version_command_print_fleets_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--version"], ["version"]):
        assert run(capsys, *args) == (0, f"fleetctl version {__version__}\n", ""), args


def test_every_help_form_prints_the_same_help_with_the_version(
        capsys: pytest.CaptureFixture[str]) -> None:
    outputs = []
    for args in ([], ["-h"], ["--help"], ["help"]):
        code, out, err = run(capsys, *args)
        assert code == 0, (args, err)
        outputs.append(out)
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
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        var: str, value: str, attr: str, expected: object) -> None:
    monkeypatch.setenv(var, value)
    code, _, err = run(capsys, "version")
    assert code == 0, err
    got: object = OPTS
    for part in attr.split("."):
        got = getattr(got, part)
    assert got == expected


def test_a_flag_on_the_command_line_wins_over_the_environment(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLEETCTL_REQUEST_TIMEOUT", "2")
    assert run(capsys, "--request-timeout", "7", "version")[0] == 0
    assert OPTS.request_timeout == 7.0
    assert run(capsys, "--request-timeout=8", "version")[0] == 0
    assert OPTS.request_timeout == 8.0


def test_strict_host_key_checking_takes_fleets_and_the_negated_form(
        capsys: pytest.CaptureFixture[str]) -> None:
    for args, expected in ((["--strict-host-key-checking=false"], False),
                           (["--no-strict-host-key-checking"], False),
                           (["--strict-host-key-checking"], True), ([], True)):
        assert run(capsys, *args, "version")[0] == 0
        assert OPTS.ssh.strict_host_key_checking is expected, args


@pytest.mark.parametrize("args,words", [
    (["--bogus", "version"], "No such option: --bogus"),
    (["--request-timeout"], "requires an argument"),
    (["--request-timeout", "soon", "version"], "'soon' is not a valid float"),
    (["nosuch"], "No such command 'nosuch'"),
    (["start"], "the following arguments are required: UNIT"),
    (["list-units", "--bogus"], "unrecognized arguments: --bogus"),
    (["start", "--block-attempts", "x", "a.service"], "invalid int value: 'x'"),
])
def test_a_command_line_fleetctl_cannot_run_exits_2_and_says_why(
        capsys: pytest.CaptureFixture[str], args: list[str], words: str) -> None:
    code, out, err = run(capsys, *args)
    assert code == 2 and words in err and out == "", (args, err)


def test_an_invalid_environment_value_names_the_variable(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLEETCTL_SSH_PORT", "many")
    code, _, err = run(capsys, "version")
    assert code == 2 and "FLEETCTL_SSH_PORT" in err and "'many'" in err


def test_help_of_a_command_and_of_an_unknown_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "help", "journal")
    assert code == 0 and "--follow" in out and "--lines" in out
    assert run(capsys, "journal", "--help") == (0, out, "")
    code, _, err = run(capsys, "help", "nosuch")
    assert code == 1 and "unknown command 'nosuch'" in err


def test_the_listed_summary_is_the_first_line_of_each_commands_help() -> None:
    for name, (module, summary) in COMMANDS.items():
        if module:
            assert load(name).summary == summary, name


def test_every_help_fits_80_columns(monkeypatch: pytest.MonkeyPatch,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    for args in ([], *(["help", n] for n in COMMANDS)):
        code, out, _ = run(capsys, *args)
        assert code == 0, args
        wide = [line for line in out.splitlines() if len(line) > 80]
        assert out and not wide, (args, wide)


def test_request_timeout_from_the_environment_bounds_a_silent_endpoint(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        monkeypatch.setenv("FLEETCTL_ENDPOINT", f"127.0.0.1:{silent.getsockname()[1]}")
        monkeypatch.setenv("FLEETCTL_REQUEST_TIMEOUT", "0.5")
        t0 = time.monotonic()
        code, _, err = run(capsys, "list-machines")
        took = time.monotonic() - t0
    assert code == 1 and "did not answer within" in err, err
    assert took < 5


# --- start-up: nothing but the command being run ---------------------------------------------
PROBE = """
import json, sys
from fleetctl.cli import main
code = main(sys.argv[1:])
sys.stdout.flush()
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

HEAVY = ("typer", "click", "rich", "pydantic", "grpc", "google.protobuf", "fleetd.api",
         "fleetd.registry", "fleetd.unit", "argparse", "asyncio")


def imported(*args: str) -> tuple[int, set[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    r = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                       env=env, timeout=60)
    last = json.loads(r.stdout.splitlines()[-1])
    return last["code"], set(last["modules"])


def _loaded(modules: set[str], package: str) -> bool:
    return any(m == package or m.startswith(package + ".") for m in modules)


@pytest.mark.parametrize("args", [["version"], ["--version"], ["help"], []])
def test_version_and_help_import_no_cli_library_grpc_or_unit_model(args: list[str]) -> None:
    code, modules = imported(*args)
    assert code == 0
    assert [p for p in HEAVY if _loaded(modules, p)] == []


def test_an_api_command_imports_the_wire_client_and_its_own_module_only(
        tmp_path: pytest.TempPathFactory) -> None:
    code, modules = imported("--endpoint", f"unix://{tmp_path}/none.sock", "list-units")
    assert code == 1  # nothing listens there
    assert "fleetctl.wire" in modules and "fleetctl.protolite" in modules
    # gRPC and protobuf without grpcio or the protobuf runtime (their import cost)
    assert [p for p in ("grpc", "google.protobuf", "fleetd.api.pb.fleet_pb2")
            if _loaded(modules, p)] == []
    assert "fleetctl.listing" in modules
    others = {"fleetctl.units", "fleetctl.remote", "fleetctl.rolling", "fleetctl.completion",
              "fleetctl.dashboard_command", "fleetctl.wait"}
    assert modules & others == set()
    assert [p for p in ("typer", "click", "rich", "pydantic", "fleetd.registry", "fleetd.unit")
            if _loaded(modules, p)] == []


# --- completion ----------------------------------------------------------------------------
def bash_complete(capsys: pytest.CaptureFixture[str], line: str) -> list[str]:
    code, script, _ = run(capsys, "completion", "bash")
    assert code == 0
    words = line.split(" ")
    driver = (f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in words)})\n"
              f"COMP_CWORD={len(words) - 1}\n_fleetctl\nprintf '%s\\n' \"${{COMPREPLY[@]}}\"\n")
    r = subprocess.run(["bash", "--norc", "--noprofile"], input=driver, capture_output=True,
                       text=True, timeout=30, check=True)
    return r.stdout.split()


def test_bash_completion_completes_commands_and_their_flags(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert bash_complete(capsys, "fleetctl list-") == ["list-machines", "list-units",
                                                       "list-unit-files"]
    assert bash_complete(capsys, "fleetctl --endpoint /x.sock st") == ["start", "stop",
                                                                       "status"]
    assert bash_complete(capsys, "fleetctl start --no") == ["--no-block"]
    assert bash_complete(capsys, "fleetctl --req") == ["--request-timeout"]
    assert bash_complete(capsys, "fleetctl journal --f") == ["--follow"]
    assert bash_complete(capsys, "fleetctl completion z") == ["zsh"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_zsh_and_fish_scripts_name_every_command(capsys: pytest.CaptureFixture[str],
                                                 shell: str) -> None:
    code, script, _ = run(capsys, "completion", shell)
    assert code == 0
    for name in COMMANDS:
        assert name in script, (shell, name)
    assert "--block-attempts" in script or "block-attempts" in script


def test_completion_for_an_unknown_shell_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "completion", "tcsh")
    assert code == 1 and out == "" and "tcsh" in err and "bash, zsh, fish" in err


# --- dashboard -----------------------------------------------------------------------------
def test_dashboard_hands_the_connection_and_flags_to_fleetctl_dashboard_run(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[dict[str, Any]] = []
    recorder = types.ModuleType("fleetctl.dashboard")  # a recording stand-in for dash's module

    def fake_run(**kw: Any) -> int:
        calls.append(kw)
        return 3

    recorder.run = fake_run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fleetctl.dashboard", recorder)
    monkeypatch.setenv("FLEETCTL_CA_FILE", "/ca.pem")
    code, _, _ = run(capsys, "--endpoint", "10.0.0.1:9810", "dashboard", "--listen",
                     "0.0.0.0:9000", "--open", "--force")
    assert code == 3
    [kw] = calls
    assert kw["endpoint"] == "10.0.0.1:9810" and kw["tls"].ca_file == "/ca.pem"
    assert (kw["listen"], kw["open_browser"], kw["force"], kw["http_endpoint"]) == (
        "0.0.0.0:9000", True, True, "")
    calls.clear()
    assert run(capsys, "dashboard", "--http-endpoint", "https://10.0.0.1:49153")[0] == 3
    assert (calls[0]["listen"], calls[0]["open_browser"], calls[0]["force"],
            calls[0]["http_endpoint"]) == ("127.0.0.1:8089", False, False,
                                           "https://10.0.0.1:49153")
    calls.clear()
    code, _, err = run(capsys, "--tunnel", "10.0.0.1", "dashboard")
    assert code == 2 and not calls and "--tunnel" in err


def test_dashboard_without_its_module_is_a_clear_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "fleetctl.dashboard", None)  # as if it were not installed
    code, out, err = run(capsys, "dashboard")
    assert code == 1 and out == "" and "fleetctl.dashboard is missing" in err
