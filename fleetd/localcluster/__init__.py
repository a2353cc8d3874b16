"""A local fleet-py cluster on one host: a real etcd plus N machines, each a real
`systemd --user` manager driven by its own fleetd. Used by the integration tests and by
`fleet-cluster` (the README's main command). Root only."""

from fleetd.localcluster.cluster import EtcdServer, LocalCluster, LocalMachine, free_port
from fleetd.localcluster.usermanager import UserManager

__all__ = ["EtcdServer", "LocalCluster", "LocalMachine", "UserManager", "free_port"]
