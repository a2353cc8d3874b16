#!/bin/bash
# Install fleetd as a systemd system service: fleetd.service (Type=notify, restart on failure)
# and /etc/fleet/fleet.conf. Shared by the nspawn lab (fleet-lab, with --root pointing at a
# container's /etc overlay, or run inside a machine with `fleet-lab exec`) and the Vagrant lab
# (inside each VM).
#
#   provision-fleetd.sh [--root DIR] [--no-start | --no-block] [--fleetd CMD]
#                       [--etcd-servers URLS] [--etcd-key-prefix P] [--public-ip IP]
#                       [--metadata k=v,...] [--api-tcp HOST:PORT] [--http-tcp HOST:PORT] [--agent-ttl DURATION]
#                       [--engine-reconcile-interval DURATION] [--api-socket-group GROUP]
#                       [--api-tls-cafile F --api-tls-certfile F --api-tls-keyfile F]
#                       [--api-tcp-insecure]
#
# TCP listeners (--api-tcp, --http-tcp) need mutual TLS: the --api-tls-* files, or by default
# /etc/fleet/tls/{ca.pem,fleetd.pem,fleetd-key.pem} when they exist (under --root DIR too);
# --api-tcp-insecure serves them in plain text instead (fleetd logs a warning).
#
# Every option can also come from the environment (FLEET_ETCD_SERVERS, FLEET_PUBLIC_IP,
# FLEET_METADATA, FLEET_API_TCP, FLEET_AGENT_TTL, FLEET_ETCD_KEY_PREFIX,
# FLEET_ENGINE_RECONCILE_INTERVAL, FLEETD_EXEC). --root DIR writes into DIR/etc instead of
# /etc and only enables the unit (as `systemctl --root`); without --root the script reloads
# systemd and (re)starts fleetd unless --no-start is given, waiting for its READY=1 unless
# --no-block is given (a VM provisioned before etcd has quorum).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root=""
start=1
block=1
fleetd_exec="${FLEETD_EXEC:-}"
etcd_servers="${FLEET_ETCD_SERVERS:-http://127.0.0.1:2379}"
key_prefix="${FLEET_ETCD_KEY_PREFIX:-}"
public_ip="${FLEET_PUBLIC_IP:-}"
metadata="${FLEET_METADATA:-}"
api_tcp="${FLEET_API_TCP:-}"
http_tcp="${FLEET_HTTP_TCP:-}"
agent_ttl="${FLEET_AGENT_TTL:-}"
reconcile="${FLEET_ENGINE_RECONCILE_INTERVAL:-}"
socket_group="${FLEET_API_SOCKET_GROUP:-}"
tls_ca=""
tls_cert=""
tls_key=""
tcp_insecure=0
usage() { sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --root) root="${2%/}"; shift 2 ;;
    --no-start) start=0; shift ;;
    --no-block) block=0; shift ;;
    --fleetd) fleetd_exec="$2"; shift 2 ;;
    --etcd-servers) etcd_servers="$2"; shift 2 ;;
    --etcd-key-prefix) key_prefix="$2"; shift 2 ;;
    --public-ip) public_ip="$2"; shift 2 ;;
    --metadata) metadata="$2"; shift 2 ;;
    --api-tcp) api_tcp="$2"; shift 2 ;;
    --http-tcp) http_tcp="$2"; shift 2 ;;
    --agent-ttl) agent_ttl="$2"; shift 2 ;;
    --engine-reconcile-interval) reconcile="$2"; shift 2 ;;
    --api-socket-group) socket_group="$2"; shift 2 ;;
    --api-tls-cafile) tls_ca="$2"; shift 2 ;;
    --api-tls-certfile) tls_cert="$2"; shift 2 ;;
    --api-tls-keyfile) tls_key="$2"; shift 2 ;;
    --api-tcp-insecure) tcp_insecure=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "provision-fleetd.sh: unknown argument $1" >&2; usage 2 >&2 ;;
  esac
done
etc="$root/etc"
unit_dir="$etc/systemd/system"
mkdir -p "$unit_dir/multi-user.target.wants" "$etc/fleet"
install -m 0644 "$here/fleetd.service" "$unit_dir/fleetd.service"
if [ -n "$fleetd_exec" ]; then
  mkdir -p "$unit_dir/fleetd.service.d"
  printf '[Service]\nExecStart=\nExecStart=%s --config /etc/fleet/fleet.conf\nExecStopPost=\nExecStopPost=%s --config /etc/fleet/fleet.conf --after-exit\n' \
    "$fleetd_exec" "$fleetd_exec" > "$unit_dir/fleetd.service.d/10-exec.conf"
else
  rm -f "$unit_dir/fleetd.service.d/10-exec.conf"
fi
if [ -z "$tls_ca$tls_cert$tls_key" ] && [ -f "$etc/fleet/tls/ca.pem" ] \
    && [ -f "$etc/fleet/tls/fleetd.pem" ] && [ -f "$etc/fleet/tls/fleetd-key.pem" ]; then
  tls_ca=/etc/fleet/tls/ca.pem
  tls_cert=/etc/fleet/tls/fleetd.pem
  tls_key=/etc/fleet/tls/fleetd-key.pem
fi
if { [ -n "$api_tcp" ] || [ -n "$http_tcp" ]; } && [ -z "$tls_ca" ] && [ "$tcp_insecure" = 0 ]; then
  echo "provision-fleetd.sh: --api-tcp/--http-tcp need mutual TLS: --api-tls-cafile," \
    "--api-tls-certfile, --api-tls-keyfile (or files in /etc/fleet/tls), or --api-tcp-insecure" >&2
  exit 2
fi
conf="$etc/fleet/fleet.conf"
{
  echo "# Written by provision-fleetd.sh; see packaging/fleet.conf.example for every option."
  echo "etcd_servers=$etcd_servers"
  [ -n "$key_prefix" ] && echo "etcd_key_prefix=$key_prefix"
  [ -n "$public_ip" ] && echo "public_ip=$public_ip"
  [ -n "$metadata" ] && echo "metadata=\"$metadata\""
  [ -n "$api_tcp" ] && echo "api_tcp=$api_tcp"
  [ -n "$http_tcp" ] && echo "http_tcp=$http_tcp"
  [ -n "$agent_ttl" ] && echo "agent_ttl=$agent_ttl"
  [ -n "$reconcile" ] && echo "engine_reconcile_interval=$reconcile"
  [ -n "$socket_group" ] && echo "api_socket_group=$socket_group"
  if [ -n "$tls_ca" ]; then
    echo "api_tls_cafile=$tls_ca"
    echo "api_tls_certfile=$tls_cert"
    echo "api_tls_keyfile=$tls_key"
  fi
  [ "$tcp_insecure" = 1 ] && echo "api_tcp_insecure=true"
  true
} > "$conf.tmp"
# 0600: it may name credentials (etcd_password is better kept in etcd_password_file)
chmod 0600 "$conf.tmp"
mv "$conf.tmp" "$conf"
ln -sfn ../fleetd.service "$unit_dir/multi-user.target.wants/fleetd.service"
if [ -z "$root" ] && [ "$start" = 1 ]; then
  systemctl daemon-reload
  if [ "$block" = 1 ]; then
    systemctl restart fleetd.service
    systemctl is-active --quiet fleetd.service
  else
    systemctl restart --no-block fleetd.service
  fi
fi
