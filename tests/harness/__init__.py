"""Test harnesses that run real infrastructure (etcd, systemd --user managers, fleetd), and the
one polling wait the suites share."""

from fleetd.localcluster.usermanager import UserManager
from tests.harness.wait import wait_until

__all__ = ["UserManager", "wait_until"]
