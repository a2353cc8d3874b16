"""fleetctl: the command-line client of fleet-py."""
