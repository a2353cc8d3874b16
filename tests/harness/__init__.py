"""Test harnesses that run real infrastructure (etcd, systemd --user managers, fleetd)."""

from fleetd.localcluster.usermanager import UserManager

__all__ = ["UserManager"]
