#!/bin/bash
# Vagrant lab: install etcd (Debian's etcd-server) and make this VM one member of the
# cluster given by ETCD_INITIAL_CLUSTER (name=http://ip:2380,...). Idempotent.
set -euo pipefail
: "${ETCD_NAME:?}" "${ETCD_IP:?}" "${ETCD_INITIAL_CLUSTER:?}"
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s etcd-server >/dev/null 2>&1; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends etcd-server etcd-client >/dev/null
fi
cat > /etc/default/etcd <<CONF
ETCD_NAME=$ETCD_NAME
ETCD_DATA_DIR=/var/lib/etcd/fleet-lab
ETCD_LISTEN_PEER_URLS=http://$ETCD_IP:2380
ETCD_LISTEN_CLIENT_URLS=http://$ETCD_IP:2379,http://127.0.0.1:2379
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$ETCD_IP:2380
ETCD_ADVERTISE_CLIENT_URLS=http://$ETCD_IP:2379
ETCD_INITIAL_CLUSTER=$ETCD_INITIAL_CLUSTER
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=fleet-py-vagrant
CONF
systemctl enable etcd.service >/dev/null 2>&1
# The first member waits for its peers: don't block provisioning on quorum.
systemctl restart --no-block etcd.service
