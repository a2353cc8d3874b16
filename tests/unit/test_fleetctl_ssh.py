"""How fleetctl builds its ssh command lines (checked against the real ssh in integration)."""

from __future__ import annotations

import os

import pytest

from fleetctl.rolling import plan_batches
from fleetctl.sshcmd import SSHOptions, api_tunnel_argv, machine_argv, split_host_port


@pytest.mark.parametrize(("address", "expected"), [
    ("10.0.0.1", ("10.0.0.1", 22)),
    ("10.0.0.1:2222", ("10.0.0.1", 2222)),
    ("[fd00::1]:2200", ("fd00::1", 2200)),
    ("[fd00::1]", ("fd00::1", 22)),
    ("bastion.example", ("bastion.example", 22)),
])
def test_split_host_port(address: str, expected: tuple[str, int]) -> None:
    assert split_host_port(address, 22) == expected


def test_machine_argv_checks_host_keys_against_fleetctls_known_hosts() -> None:
    argv = machine_argv(SSHOptions(user="bob", port=2222, known_hosts_file="/k/hosts"),
                        "10.0.0.5", [])
    assert argv[0] == "ssh" and argv[-2:] == ["--", "10.0.0.5"]
    assert "UserKnownHostsFile=/k/hosts" in argv and "StrictHostKeyChecking=ask" in argv
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-l") + 1] == "bob"
    assert "-J" not in argv and "-A" not in argv


def test_machine_argv_without_checking_and_through_a_tunnel() -> None:
    argv = machine_argv(SSHOptions(strict_host_key_checking=False, tunnel="1.2.3.4:2200",
                                   forward_agent=True), "10.0.0.5", ["echo", "hi"])
    assert "StrictHostKeyChecking=no" in argv and "UserKnownHostsFile=/dev/null" in argv
    assert argv[argv.index("-J") + 1] == "core@1.2.3.4:2200"
    assert "-A" in argv and argv[-4:] == ["--", "10.0.0.5", "echo", "hi"]


def test_known_hosts_path_expands_home() -> None:
    argv = SSHOptions().common()
    assert f"UserKnownHostsFile={os.path.expanduser('~/.fleetctl/known_hosts')}" in argv


@pytest.mark.parametrize(("remote", "target"), [
    ("/var/run/fleet-py.sock", "/var/run/fleet-py.sock"),
    ("127.0.0.1:7000", "127.0.0.1:7000"),
])
def test_api_tunnel_forwards_a_local_socket_to_the_remote_api(remote: str, target: str) -> None:
    argv = api_tunnel_argv(SSHOptions(tunnel="bastion:2022", user="ops"), "/tmp/x.sock", remote)
    assert argv[argv.index("-L") + 1] == f"/tmp/x.sock:{target}"
    assert "-N" in argv and "ExitOnForwardFailure=yes" in argv
    assert argv[argv.index("-p") + 1] == "2022" and argv[-1] == "bastion"


@pytest.mark.parametrize(("n", "batch", "sizes"), [
    (5, 2, [2, 2, 1]), (3, 1, [1, 1, 1]), (2, 5, [2]), (0, 1, []),
])
def test_rolling_batches(n: int, batch: int, sizes: list[int]) -> None:
    targets = [(f"u{i}", "m") for i in range(n)]
    batches = plan_batches(targets, batch)
    assert [len(b) for b in batches] == sizes
    assert [t for b in batches for t in b] == targets


def test_rolling_batch_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        plan_batches([("u", "m")], 0)
