#!/bin/bash
# Vagrant lab: a virtualenv with fleet-py (synced to /opt/fleet-py/src) in /opt/fleet-py/venv,
# with fleetd and fleetctl on PATH. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in python3 python3-venv dbus systemd-container; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -x /opt/fleet-py/venv/bin/python ] || python3 -m venv /opt/fleet-py/venv
/opt/fleet-py/venv/bin/pip install -q --upgrade pip
/opt/fleet-py/venv/bin/pip install -q /opt/fleet-py/src
ln -sfn /opt/fleet-py/venv/bin/fleetd /usr/local/bin/fleetd
ln -sfn /opt/fleet-py/venv/bin/fleetctl /usr/local/bin/fleetctl
