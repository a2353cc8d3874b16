"""fleetd's API listeners: unix sockets 0660 with a configured group; TCP (gRPC and HTTP API
v1) only with mutual TLS, unless the operator explicitly asks for plain text."""

from __future__ import annotations

import grp
import json
import os
import pathlib
import socket
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from fleetd.api.pb import fleet_pb2 as pb
from fleetd.api.pb import fleet_pb2_grpc as pb_grpc
from fleetd.certificates import CertificateAuthority, IssuedCertificate
from fleetd.localcluster import LocalCluster, free_port
from tests.harness.fleetd import SingleFleetd, fleetctl_tls_flags
from tests.integration.conftest import Host, single_host, wait_until

GROUP = "fleet-sec-test"


class TlsHost(Host):
    """The host with a CA: fleetd's server certificate, an admin client's, and an intruder's
    from another CA."""

    def __init__(self, host: TlsHost) -> None:
        super().__init__(host.root, host.etcd, host.manager)
        self.ca = CertificateAuthority.create(self.root / "pki")
        self.server = self.ca.issue("fleetd", ips=["127.0.0.1"], dns=["localhost"])
        self.client = self.ca.issue("admin")
        self.rogue = CertificateAuthority.create(self.root / "rogue").issue("intruder")


@pytest.fixture(scope="module")
def host() -> Iterator[TlsHost]:
    with single_host("fsa-") as h:
        yield TlsHost(h)


@pytest.fixture(scope="module")
def group() -> Iterator[int]:
    created = False
    try:
        gid = grp.getgrnam(GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
        created = True
        gid = grp.getgrnam(GROUP).gr_gid
    yield gid
    if created:
        subprocess.run(["groupdel", GROUP], check=False)


@pytest.fixture(scope="module")
def secure(host: TlsHost, group: int) -> Iterator[tuple[SingleFleetd, str, str]]:
    """A fleetd serving gRPC and HTTP on TCP with mutual TLS, sockets owned by GROUP."""
    d = host.root / "secure"
    d.mkdir()
    grpc_addr, http_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    f = SingleFleetd(d, host.manager, host.etcd.endpoint, {
        "api_tcp": grpc_addr, "http_tcp": http_addr, "api_socket_group": GROUP,
        "api_tls_cafile": host.server.ca_file, "api_tls_certfile": host.server.cert_file,
        "api_tls_keyfile": host.server.key_file})
    f.start()
    try:
        f.wait_for_socket()
        wait_until(lambda: f.machine_id in f.fleetctl("list-machines", "-l").stdout, 20,
                   what="fleetd registered")
        yield f, grpc_addr, http_addr
    finally:
        f.stop()


def grpc_list_machines(address: str, creds: grpc.ChannelCredentials | None) -> list[str]:
    channel = (grpc.secure_channel(address, creds) if creds is not None
               else grpc.insecure_channel(address))
    try:
        resp = pb_grpc.FleetStub(channel).ListMachines(pb.ListMachinesRequest(), timeout=5)
        return [m.id for m in resp.machines]
    finally:
        channel.close()


def creds(ca_file: str, cert: IssuedCertificate | None) -> grpc.ChannelCredentials:
    def read(p: str) -> bytes:
        return pathlib.Path(p).read_bytes()
    if cert is None:
        return grpc.ssl_channel_credentials(read(ca_file))
    return grpc.ssl_channel_credentials(read(ca_file), read(cert.key_file),
                                        read(cert.cert_file))


def https_get(url: str, ca_file: str, cert: IssuedCertificate | None) -> dict[str, object]:
    ctx = ssl.create_default_context(cafile=ca_file)
    if cert is not None:
        ctx.load_cert_chain(cert.cert_file, cert.key_file)
    with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
        return dict(json.load(r))


# --- unix sockets --------------------------------------------------------------------------
def test_unix_sockets_have_mode_0660_and_the_configured_group(
        secure: tuple[SingleFleetd, str, str], group: int) -> None:
    f, _, _ = secure
    for path in (f.api_socket, f.http_socket):
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660, (path, oct(st.st_mode))
        assert st.st_gid == group, path


def test_an_unknown_socket_group_is_refused_at_startup(host: TlsHost) -> None:
    d = host.root / "badgroup"
    d.mkdir()
    r = SingleFleetd(d, host.manager, host.etcd.endpoint,
                     {"api_socket_group": "no-such-group-xyz"}).run_to_exit()
    assert r.returncode == 2, r.stderr
    assert "api_socket_group 'no-such-group-xyz' is not a group" in r.stderr


# --- gRPC over TCP -------------------------------------------------------------------------
def test_grpc_tcp_serves_a_client_with_a_certificate_from_the_ca(
        host: TlsHost, secure: tuple[SingleFleetd, str, str]) -> None:
    f, grpc_addr, _ = secure
    assert grpc_list_machines(grpc_addr, creds(host.ca.ca_file, host.client)) == [f.machine_id]


@pytest.mark.parametrize("client", ["plain text", "no client certificate", "another CA"])
def test_grpc_tcp_refuses_a_client_without_a_valid_certificate(
        host: TlsHost, secure: tuple[SingleFleetd, str, str], client: str) -> None:
    _, grpc_addr, _ = secure
    c = {"plain text": None, "no client certificate": creds(host.ca.ca_file, None),
         "another CA": creds(host.ca.ca_file, host.rogue)}[client]
    with pytest.raises(grpc.RpcError) as e:
        grpc_list_machines(grpc_addr, c)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]


# --- HTTP API v1 over TCP ------------------------------------------------------------------
def test_http_tcp_serves_a_client_with_a_certificate_from_the_ca(
        host: TlsHost, secure: tuple[SingleFleetd, str, str]) -> None:
    f, _, http_addr = secure
    body = https_get(f"https://{http_addr}/fleet/v1/machines", host.ca.ca_file, host.client)
    assert [m["id"] for m in body["machines"]] == [f.machine_id]  # type: ignore[attr-defined]


@pytest.mark.parametrize("client", ["no client certificate", "another CA"])
def test_http_tcp_refuses_a_client_without_a_valid_certificate(
        host: TlsHost, secure: tuple[SingleFleetd, str, str], client: str) -> None:
    _, _, http_addr = secure
    cert = None if client == "no client certificate" else host.rogue
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        https_get(f"https://{http_addr}/fleet/v1/machines", host.ca.ca_file, cert)


def test_http_tcp_refuses_plain_http(secure: tuple[SingleFleetd, str, str]) -> None:
    _, _, http_addr = secure
    host_, port = http_addr.rsplit(":", 1)
    with socket.create_connection((host_, int(port)), 5) as s:
        s.sendall(b"GET /fleet/v1/machines HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        data = s.recv(4096)
    assert b"machines" not in data and not data.startswith(b"HTTP/1.1 200")


# --- fleetctl ------------------------------------------------------------------------------
def test_fleetctl_with_ca_cert_and_key_files_talks_to_the_mtls_api(
        host: TlsHost, secure: tuple[SingleFleetd, str, str]) -> None:
    f, grpc_addr, _ = secure
    r = f.fleetctl(*fleetctl_tls_flags(host.client), "list-machines", "-l", endpoint=grpc_addr)
    assert r.returncode == 0 and f.machine_id in r.stdout, r.stderr
    # the same from fleet's environment variables
    r = f.fleetctl("list-machines", "-l", endpoint=grpc_addr, env={
        "FLEETCTL_CA_FILE": host.client.ca_file, "FLEETCTL_CERT_FILE": host.client.cert_file,
        "FLEETCTL_KEY_FILE": host.client.key_file})
    assert r.returncode == 0 and f.machine_id in r.stdout, r.stderr


def test_fleetctl_without_a_valid_certificate_is_refused_with_a_hint(
        host: TlsHost, secure: tuple[SingleFleetd, str, str]) -> None:
    f, grpc_addr, _ = secure
    r = f.fleetctl("--request-timeout", "3", "list-machines", endpoint=grpc_addr)
    assert r.returncode == 1
    assert f"cannot reach fleetd at {grpc_addr}" in r.stderr
    assert "--ca-file, --cert-file and --key-file" in r.stderr
    r = f.fleetctl("--request-timeout", "3", *fleetctl_tls_flags(host.rogue), "list-machines",
                   endpoint=grpc_addr)
    assert r.returncode == 1 and "cannot reach fleetd" in r.stderr, r.stderr
    r = f.fleetctl("--ca-file", "/nonexistent/ca.pem", "list-machines", endpoint=grpc_addr)
    assert r.returncode == 1 and "cannot read --ca-file /nonexistent/ca.pem" in r.stderr


# --- refusing insecure TCP -----------------------------------------------------------------
@pytest.mark.parametrize("option", ["api_tcp", "http_tcp"])
def test_fleetd_refuses_tcp_without_tls_or_the_insecure_flag(option: str) -> None:
    r = subprocess.run([sys.executable, "-m", "fleetd.main", f"--{option}=127.0.0.1:1"],
                       capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "FLEET_CONFIG": os.devnull})
    assert r.returncode == 2, r.stderr
    assert f"{option} needs mutual TLS" in r.stderr and "api_tcp_insecure=true" in r.stderr
    assert "Traceback" not in r.stderr


def test_fleetd_refuses_an_incomplete_tls_configuration(host: TlsHost) -> None:
    r = subprocess.run([sys.executable, "-m", "fleetd.main", "--api_tcp=127.0.0.1:1",
                        f"--api_tls_certfile={host.server.cert_file}"],
                       capture_output=True, text=True, timeout=30,
                       env={"PATH": "/usr/bin:/bin", "FLEET_CONFIG": os.devnull})
    assert r.returncode == 2 and "api_tls_cafile is missing" in r.stderr, r.stderr


def test_fleetd_refuses_unreadable_tls_files(host: TlsHost) -> None:
    d = host.root / "badfiles"
    d.mkdir()
    r = SingleFleetd(d, host.manager, host.etcd.endpoint, {
        "api_tcp": f"127.0.0.1:{free_port()}", "api_tls_cafile": "/nonexistent/ca.pem",
        "api_tls_certfile": host.server.cert_file,
        "api_tls_keyfile": host.server.key_file}).run_to_exit()
    assert r.returncode == 2 and "cannot read api_tls_cafile /nonexistent/ca.pem" in r.stderr


def test_the_insecure_flag_serves_plain_text_and_logs_a_warning(host: TlsHost) -> None:
    d = host.root / "insecure"
    d.mkdir()
    addr = f"127.0.0.1:{free_port()}"
    f = SingleFleetd(d, host.manager, host.etcd.endpoint,
                     {"api_tcp": addr, "api_tcp_insecure": "true"})
    f.start()
    try:
        f.wait_for_socket()
        warning = [x for x in f.output().splitlines() if "api_tcp_insecure" in x]
        assert warning and "WARNING" in warning[0] and "WITHOUT TLS" in warning[0], f.output()
        wait_until(lambda: grpc_list_machines(addr, None) == [f.machine_id], 20,
                   what="plain-text gRPC served")
    finally:
        f.stop()


# --- forwarding between fleetds ------------------------------------------------------------
def test_status_and_journal_are_forwarded_between_fleetds_over_mtls(
        tmp_path: pathlib.Path) -> None:
    unit = tmp_path / "tick.service"
    unit.write_text("[Unit]\nDescription=tick\n\n[Service]\n"
                    "ExecStart=/bin/sh -c 'while :; do echo tick; sleep 0.2; done'\n")
    with LocalCluster(2, agent_ttl_s=4) as cluster:
        m1, m2 = cluster.machines
        unit.write_text(unit.read_text() + f"\n[X-Fleet]\nMachineID={m2.machine_id}\n")
        cluster.fleetctl("start", str(unit), check=True, endpoint=m1.endpoint)
        wait_until(lambda: m2.is_active("tick.service"), 20, what="tick active on m2")
        r = cluster.fleetctl("status", "tick.service", endpoint=m1.endpoint)
        assert r.returncode == 0 and "Active: active (running)" in r.stdout, r.stderr
        lines = wait_until(lambda: cluster.fleetctl(
            "journal", "-n", "2", "-o", "cat", "tick.service",
            endpoint=m1.endpoint).stdout.splitlines() == ["tick", "tick"], 10,
            what="journal forwarded from m2")
        assert lines
        # m2's API is not reachable for a fleetd or client without a certificate of the CA
        with pytest.raises(grpc.RpcError):
            grpc_list_machines(m2.api_tcp, None)
