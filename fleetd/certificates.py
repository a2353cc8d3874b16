"""A small certificate authority for labs, local clusters and tests: mutual TLS out of the box.

`CertificateAuthority.create(dir)` writes `ca.pem`/`ca-key.pem`; `issue(name, ips, dns)` writes
`<name>.pem`/`<name>-key.pem`, a leaf certificate valid for both TLS server and client use (a
fleetd serves its API and forwards calls to other fleetds with the same identity). Production
clusters bring their own PKI; nothing in fleetd itself depends on this module.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass

VALIDITY_DAYS = 825


@dataclass(frozen=True)
class IssuedCertificate:
    """Paths of one issued certificate, its key and the CA that signed it."""

    ca_file: str
    cert_file: str
    key_file: str


class CertificateAuthority:
    """A self-signed CA on disk (EC P-256), issuing server+client certificates."""

    def __init__(self, directory: pathlib.Path, key: object, cert: object) -> None:
        self.dir = directory
        self._key = key
        self._cert = cert

    @property
    def ca_file(self) -> str:
        return str(self.dir / "ca.pem")

    @classmethod
    def create(cls, directory: str | os.PathLike[str], name: str = "fleet-py CA"
               ) -> CertificateAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        d = pathlib.Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = datetime.datetime.now(datetime.UTC)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, key_cert_sign=True, crl_sign=True,
                    content_commitment=False, key_encipherment=False, data_encipherment=False,
                    key_agreement=False, encipher_only=False, decipher_only=False),
                    critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        ca = cls(d, key, cert)
        _write(d / "ca-key.pem", _key_pem(key), 0o600)
        _write(d / "ca.pem", _cert_pem(cert), 0o644)
        return ca

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        d = pathlib.Path(directory)
        key = serialization.load_pem_private_key((d / "ca-key.pem").read_bytes(), None)
        cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
        return cls(d, key, cert)

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> CertificateAuthority:
        d = pathlib.Path(directory)
        if (d / "ca.pem").exists() and (d / "ca-key.pem").exists():
            return cls.load(d)
        return cls.create(d)

    def issue(self, name: str, ips: Sequence[str] = (), dns: Sequence[str] = (),
              directory: str | os.PathLike[str] | None = None) -> IssuedCertificate:
        """Write `<name>.pem` and `<name>-key.pem` (in `directory`, default the CA's) for a
        certificate with CN `name`, the given IP and DNS subject alternative names, usable as a
        TLS server and as a TLS client."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        out = pathlib.Path(directory) if directory is not None else self.dir
        out.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                   .issuer_name(self._cert.subject)  # type: ignore[attr-defined]
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self._key.public_key()), critical=False))  # type: ignore[attr-defined]
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())  # type: ignore[arg-type]
        cert_file, key_file = out / f"{name}.pem", out / f"{name}-key.pem"
        _write(key_file, _key_pem(key), 0o600)
        _write(cert_file, _cert_pem(cert), 0o644)
        if out != self.dir:
            _write(out / "ca.pem", _cert_pem(self._cert), 0o644)
        return IssuedCertificate(str(out / "ca.pem"), str(cert_file), str(key_file))


def _key_pem(key: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _cert_pem(cert: object) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)  # type: ignore[attr-defined, no-any-return]


def _write(path: pathlib.Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
