"""fleetd.systemd.cli_tools: the journalctl and systemctl command lines behind `fleetctl journal`
and `fleetctl status`."""

from __future__ import annotations

import pytest

from fleetd.systemd.cli_tools import SystemdTools, ToolError


def test_journal_and_status_command_lines() -> None:
    user, system = SystemdTools(user=True), SystemdTools()
    assert user.journal_argv("a.service", 5, "cat", True) == [
        "journalctl", "--no-pager", "--quiet", "--user-unit", "a.service", "-n", "5", "-o",
        "cat", "-f"]
    assert system.journal_argv("a.service", 0)[3:7] == ["--unit", "a.service", "-n", "10"]
    assert user.status_argv("a.service", 3) == ["systemctl", "--user", "status", "--no-pager",
                                                "--full", "--lines", "3", "--", "a.service"]
    with pytest.raises(ToolError, match="invalid journal output format"):
        system.journal_argv("a.service", 10, "yaml")
