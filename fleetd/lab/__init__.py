"""`fleet-lab`: a multi-machine fleet-py lab on systemd-nspawn containers (see lab.py)."""

from fleetd.lab.lab import Lab, LabError

__all__ = ["Lab", "LabError"]
