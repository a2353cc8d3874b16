"""The Vagrant lab without a box: the Vagrantfile's syntax (`ruby -c`), and what it defines,
by evaluating it against a stub `Vagrant` that records the configuration. The fleetd part of
its provisioning (packaging/provision-fleetd.sh) runs inside the nspawn lab, in
test_lab_cli.py."""

from __future__ import annotations

import json
import pathlib
import shlex
import shutil
import subprocess

REPO = pathlib.Path(__file__).resolve().parents[2]
VAGRANTFILE = REPO / "vagrant" / "Vagrantfile"

STUB = r'''
require "json"
$machines = {}
class Recorder
  def initialize(store) @store = store end
  def method_missing(name, *args, **kw, &blk)
    key = name.to_s.sub(/=$/, "")
    if name.to_s.end_with?("=")
      @store[key] = args.first
      return args.first
    end
    child = (@store[key] ||= {})
    if blk then blk.call(Recorder.new(child)) end
    if !args.empty? || !kw.empty?
      (@store["_calls"] ||= []) << [key, args, kw]
    end
    Recorder.new(child)
  end
  def respond_to_missing?(*) true end
end
class VM < Recorder
  def initialize(store) super(store) end
  def define(name, **opts, &blk)
    m = { "opts" => opts, "provision" => [], "network" => [] }
    $machines[name] = m
    blk.call(Node.new(m))
  end
end
class Node
  def initialize(m) @m = m end
  def vm() NodeVM.new(@m) end
end
class NodeVM
  def initialize(m) @m = m end
  def hostname=(h) @m["hostname"] = h end
  def network(kind, **kw) @m["network"] << [kind, kw] end
  def provision(name, **kw) @m["provision"] << [name, kw] end
end
class Config
  def initialize() @vm = VM.new({}) end
  def vm() @vm end
end
module Vagrant
  def self.configure(_version) yield Config.new end
end
load ARGV[0]
puts JSON.generate($machines)
'''


def test_vagrantfile_syntax() -> None:
    ruby = shutil.which("ruby")
    assert ruby, "ruby is installed by scripts/setup"
    r = subprocess.run([ruby, "-c", str(VAGRANTFILE)], capture_output=True, text=True)
    assert r.returncode == 0 and "Syntax OK" in r.stdout, r.stderr
    vagrant = shutil.which("vagrant")
    if vagrant:  # only where Vagrant itself is installed
        r = subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=VAGRANTFILE.parent,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


def test_vagrantfile_defines_three_vms_with_etcd_and_the_shared_fleetd_provisioning(
        tmp_path: pathlib.Path) -> None:
    stub = tmp_path / "stub.rb"
    stub.write_text(STUB)
    r = subprocess.run(["ruby", str(stub), str(VAGRANTFILE)], capture_output=True, text=True,
                       cwd=VAGRANTFILE.parent)
    assert r.returncode == 0, r.stderr
    machines = json.loads(r.stdout)
    assert list(machines) == ["core-01", "core-02", "core-03"]
    ips = []
    for i, (name, m) in enumerate(machines.items(), 1):
        assert m["hostname"] == name
        [(kind, net)] = m["network"]
        assert kind == "private_network"
        ips.append(net["ip"])
        names = [p[0] for p in m["provision"]]
        assert names == ["etcd", "fleet-py", "fleetd"]
        etcd = m["provision"][0][1]
        assert etcd["path"] == "provision-etcd.sh"
        assert etcd["env"]["ETCD_NAME"] == name and etcd["env"]["ETCD_IP"] == net["ip"]
        assert etcd["env"]["ETCD_INITIAL_CLUSTER"].count("=http://") == 3
        argv = shlex.split(m["provision"][2][1]["inline"])
        assert argv[0].endswith("/packaging/provision-fleetd.sh")
        assert argv[argv.index("--public-ip") + 1] == net["ip"]
        assert argv[argv.index("--etcd-servers") + 1].count("http://") == 3
        assert (REPO / "vagrant" / etcd["path"]).exists()
        assert m["opts"].get("primary", False) == (i == 1)
    assert len(set(ips)) == 3
    for script in ("vagrant/provision-etcd.sh", "vagrant/provision-fleet-py.sh",
                   "packaging/provision-fleetd.sh"):
        assert subprocess.run(["bash", "-n", str(REPO / script)]).returncode == 0, script


def test_provision_fleetd_offline_root(tmp_path: pathlib.Path) -> None:
    """--root writes the unit, the ExecStart drop-in, fleet.conf and the enable link."""
    script = REPO / "packaging" / "provision-fleetd.sh"
    tls = tmp_path / "etc/fleet/tls"  # picked up by default: mutual TLS on --api-tcp
    tls.mkdir(parents=True)
    for name in ("ca.pem", "fleetd.pem", "fleetd-key.pem"):
        (tls / name).write_text("")
    r = subprocess.run([str(script), "--root", str(tmp_path), "--fleetd", "/opt/x/fleetd",
                        "--etcd-servers", "http://10.0.0.1:2379", "--public-ip", "10.0.0.2",
                        "--metadata", "region=us-east,disk=ssd", "--api-tcp", "10.0.0.2:9810",
                        "--agent-ttl", "5s"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    unit_dir = tmp_path / "etc/systemd/system"
    unit = (unit_dir / "fleetd.service").read_text()
    assert "Type=notify" in unit and "Restart=on-failure" in unit
    # ExecStopPost= too: the crash hand-over must run the same fleetd (fleetd/after_exit.py)
    assert (unit_dir / "fleetd.service.d/10-exec.conf").read_text() == (
        "[Service]\nExecStart=\nExecStart=/opt/x/fleetd --config /etc/fleet/fleet.conf\n"
        "ExecStopPost=\nExecStopPost=/opt/x/fleetd --config /etc/fleet/fleet.conf "
        "--after-exit\n")
    assert (unit_dir / "multi-user.target.wants/fleetd.service").is_symlink()
    from fleetd.config import read_config_file

    conf_path = tmp_path / "etc/fleet/fleet.conf"
    assert conf_path.stat().st_mode & 0o777 == 0o600  # it may hold credentials
    conf = read_config_file(str(conf_path))
    assert conf == {"etcd_servers": "http://10.0.0.1:2379", "public_ip": "10.0.0.2",
                    "metadata": "region=us-east,disk=ssd", "api_tcp": "10.0.0.2:9810",
                    "agent_ttl": "5s", "api_tls_cafile": "/etc/fleet/tls/ca.pem",
                    "api_tls_certfile": "/etc/fleet/tls/fleetd.pem",
                    "api_tls_keyfile": "/etc/fleet/tls/fleetd-key.pem"}


def test_provision_fleetd_refuses_plain_tcp_unless_told(tmp_path: pathlib.Path) -> None:
    script = REPO / "packaging" / "provision-fleetd.sh"
    base = [str(script), "--root", str(tmp_path), "--api-tcp", "10.0.0.2:9810"]
    r = subprocess.run(base, capture_output=True, text=True)
    assert r.returncode == 2 and "need mutual TLS" in r.stderr
    r = subprocess.run([*base, "--api-tcp-insecure", "--api-socket-group", "fleet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from fleetd.config import read_config_file

    conf = read_config_file(str(tmp_path / "etc/fleet/fleet.conf"))
    assert conf["api_tcp_insecure"] == "true" and conf["api_socket_group"] == "fleet"
