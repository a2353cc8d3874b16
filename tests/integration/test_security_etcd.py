"""fleetd and the registry against an etcd that requires client certificates or a password:
the right credentials work, missing or wrong ones fail with an error that says why."""

from __future__ import annotations

import asyncio
import pathlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

from fleetd.certificates import CertificateAuthority
from fleetd.localcluster import UserManager
from fleetd.registry import EtcdClient, EtcdError
from tests.harness.etcd import SecureEtcd
from tests.harness.fleetd import SingleFleetd
from tests.integration.conftest import wait_until

PASSWORD = "s3cret-root"


@pytest.fixture(scope="module")
def root() -> Iterator[pathlib.Path]:
    d = pathlib.Path(tempfile.mkdtemp(prefix="fse-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_etcd(root: pathlib.Path) -> Iterator[SecureEtcd]:
    etcd = SecureEtcd(root / "tls-etcd", CertificateAuthority.create(root / "etcd-pki"))
    etcd.start()
    yield etcd
    etcd.stop()


@pytest.fixture(scope="module")
def auth_etcd(root: pathlib.Path) -> Iterator[SecureEtcd]:
    etcd = SecureEtcd(root / "auth-etcd")
    etcd.start()
    etcd.enable_auth(PASSWORD)
    yield etcd
    etcd.stop()


@pytest.fixture(scope="module")
def manager(root: pathlib.Path) -> Iterator[UserManager]:
    m = UserManager(root / "m")
    m.start()
    yield m
    m.kill()


def roundtrip(endpoints: list[str], **credentials: Any) -> bytes:
    """Put and get one key with a fresh client (on its own event loop)."""
    async def go() -> bytes:
        client = EtcdClient(endpoints, request_timeout_s=2, **credentials)
        try:
            await client.put("/sec/key", b"value")
            kv = await client.get("/sec/key")
            assert kv is not None
            return kv.value
        finally:
            await client.close()
    return asyncio.run(go())


# --- TLS with client certificates ----------------------------------------------------------
def test_registry_with_the_right_client_certificate_reads_and_writes(
        tls_etcd: SecureEtcd) -> None:
    c = tls_etcd.client
    assert c is not None
    assert roundtrip([tls_etcd.endpoint], ca_file=c.ca_file, cert_file=c.cert_file,
                     key_file=c.key_file) == b"value"


def test_registry_without_a_client_certificate_is_refused(tls_etcd: SecureEtcd) -> None:
    assert tls_etcd.client is not None
    with pytest.raises(EtcdError, match="etcd put /sec/key failed: UNAVAILABLE"):
        roundtrip([tls_etcd.endpoint], ca_file=tls_etcd.client.ca_file)


def test_registry_with_a_certificate_from_another_ca_is_refused(
        tls_etcd: SecureEtcd, root: pathlib.Path) -> None:
    assert tls_etcd.client is not None
    rogue = CertificateAuthority.create(root / "rogue-pki").issue("rogue")
    with pytest.raises(EtcdError, match="UNAVAILABLE"):
        roundtrip([tls_etcd.endpoint], ca_file=tls_etcd.client.ca_file,
                  cert_file=rogue.cert_file, key_file=rogue.key_file)


def test_registry_refuses_an_etcd_server_signed_by_an_unknown_ca(
        tls_etcd: SecureEtcd, root: pathlib.Path) -> None:
    """The client checks the server too: a CA that did not sign etcd's certificate fails."""
    assert tls_etcd.client is not None
    other_ca = CertificateAuthority.load_or_create(root / "rogue-pki")
    with pytest.raises(EtcdError, match="UNAVAILABLE"):
        roundtrip([tls_etcd.endpoint], ca_file=other_ca.ca_file,
                  cert_file=tls_etcd.client.cert_file, key_file=tls_etcd.client.key_file)


def test_a_missing_certificate_file_is_named_in_the_error() -> None:
    with pytest.raises(EtcdError, match=r"cannot read etcd_certfile /nonexistent/c\.pem"):
        EtcdClient(["https://127.0.0.1:1"], cert_file="/nonexistent/c.pem",
                   key_file="/nonexistent/k.pem")


def test_fleetd_with_etcd_client_certificates_joins_the_cluster(
        tls_etcd: SecureEtcd, manager: UserManager, root: pathlib.Path) -> None:
    c = tls_etcd.client
    assert c is not None
    d = root / "fleetd-tls"
    d.mkdir()
    fleetd = SingleFleetd(d, manager, tls_etcd.endpoint, {
        "etcd_cafile": c.ca_file, "etcd_certfile": c.cert_file, "etcd_keyfile": c.key_file})
    fleetd.start()
    try:
        fleetd.wait_for_socket()
        out = wait_until(lambda: fleetd.machine_id in (r := fleetd.fleetctl(
            "list-machines", "-l", "--no-legend")).stdout and r.stdout, 20,
            what="fleetd registered through TLS etcd")
        assert fleetd.machine_id in out
    finally:
        fleetd.stop()


def test_fleetd_without_etcd_client_certificates_says_why_it_cannot_register(
        tls_etcd: SecureEtcd, manager: UserManager, root: pathlib.Path) -> None:
    assert tls_etcd.client is not None
    d = root / "fleetd-nocert"
    d.mkdir()
    fleetd = SingleFleetd(d, manager, tls_etcd.endpoint,
                          {"etcd_cafile": tls_etcd.client.ca_file})
    fleetd.start()
    try:
        wait_until(lambda: "registering machine" in fleetd.output(), 20,
                   what="fleetd to report the refused registration")
        line = next(x for x in fleetd.output().splitlines() if "registering machine" in x)
        assert "failed: etcd" in line and "UNAVAILABLE" in line, line
        r = fleetd.fleetctl("list-machines")
        assert fleetd.machine_id not in r.stdout
    finally:
        fleetd.stop()


# --- user / password auth ------------------------------------------------------------------
def test_registry_with_the_right_password_reads_and_writes(auth_etcd: SecureEtcd) -> None:
    assert roundtrip([auth_etcd.endpoint], username="root", password=PASSWORD) == b"value"


def test_registry_with_a_wrong_password_fails_naming_the_user(auth_etcd: SecureEtcd) -> None:
    with pytest.raises(EtcdError, match=r"etcd authentication as user 'root' failed: .*"
                       r"invalid user ID or password"):
        roundtrip([auth_etcd.endpoint], username="root", password="wrong")


def test_registry_without_credentials_is_refused(auth_etcd: SecureEtcd) -> None:
    with pytest.raises(EtcdError, match="etcd put /sec/key failed"):
        roundtrip([auth_etcd.endpoint])


def test_a_revoked_auth_token_is_replaced_transparently(auth_etcd: SecureEtcd) -> None:
    """Turning auth off and on again invalidates every token: the client authenticates again
    and retries the call instead of failing it."""
    async def go() -> bytes:
        client = EtcdClient([auth_etcd.endpoint], username="root", password=PASSWORD)
        try:
            await client.put("/sec/token", b"1")
            old = client._metadata
            user = f"root:{PASSWORD}"
            for args in (["auth", "disable"], ["auth", "enable"]):
                r = await asyncio.to_thread(auth_etcd.etcdctl, *args, user=user)
                assert r.returncode == 0, r.stderr
            await client.put("/sec/token", b"2")
            kv = await client.get("/sec/token")
            assert client._metadata != old
            assert kv is not None
            return kv.value
        finally:
            await client.close()
    assert asyncio.run(go()) == b"2"


def test_fleetd_with_the_right_password_joins_and_with_a_wrong_one_says_why(
        auth_etcd: SecureEtcd, manager: UserManager, root: pathlib.Path) -> None:
    d1, d2 = root / "fleetd-pw", root / "fleetd-badpw"
    d1.mkdir()
    d2.mkdir()
    good = SingleFleetd(d1, manager, auth_etcd.endpoint,
                        {"etcd_username": "root", "etcd_password": PASSWORD}, prefix="/pw/")
    bad = SingleFleetd(d2, manager, auth_etcd.endpoint,
                       {"etcd_username": "root", "etcd_password": "nope"}, prefix="/pw/")
    good.start()
    bad.start()
    try:
        good.wait_for_socket()
        wait_until(lambda: good.machine_id in good.fleetctl("list-machines", "-l").stdout, 20,
                   what="fleetd registered with etcd password auth")
        wait_until(lambda: "authentication as user 'root' failed" in bad.output(), 20,
                   what="the wrong password to be reported")
        assert bad.machine_id not in good.fleetctl("list-machines", "-l").stdout
    finally:
        good.stop()
        bad.stop()


def test_etcd_password_given_as_a_flag_is_not_visible_in_ps_and_a_password_file_works(
        auth_etcd: SecureEtcd, manager: UserManager, root: pathlib.Path) -> None:
    import subprocess

    d1, d2 = root / "fleetd-pwflag", root / "fleetd-pwfile"
    d1.mkdir()
    d2.mkdir()
    flag = SingleFleetd(d1, manager, auth_etcd.endpoint, {"etcd_username": "root"},
                        prefix="/pwflag/")
    secret = d2 / "etcd-password"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    from_file = SingleFleetd(d2, manager, auth_etcd.endpoint,
                             {"etcd_username": "root", "etcd_password_file": str(secret)},
                             prefix="/pwflag/")
    flag.start(f"--etcd_password={PASSWORD}")
    from_file.start()
    try:
        flag.wait_for_socket()
        from_file.wait_for_socket()
        listed = wait_until(lambda: (lambda out: out if flag.machine_id in out
                                     and from_file.machine_id in out else "")(
            flag.fleetctl("list-machines", "-l").stdout), 20,
            what="both fleetds registered with etcd password auth")
        assert listed
        cmdline = pathlib.Path(f"/proc/{flag.proc.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline, cmdline
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert PASSWORD not in ps
        assert "--etcd_password is visible to every user in ps" in flag.output()
    finally:
        flag.stop()
        from_file.stop()
