"""TLS material of fleetd's API: mutual TLS for the TCP listeners and for forwarding.

One set of files (fleet-style option names `api_tls_cafile`, `api_tls_certfile`,
`api_tls_keyfile`) serves both directions: the certificate identifies this fleetd to clients
and to the fleetds it forwards calls to, and the CA is the only one whose client certificates
it accepts. Unix sockets carry no TLS: file permissions (mode 0660, `api_socket_group`) guard
them.
"""

from __future__ import annotations

import grp
import logging
import os
import ssl
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("fleetd.api")


class TlsError(ValueError):
    """The TLS files cannot be read or do not form a usable key pair; names the file."""


@dataclass(frozen=True)
class ApiTls:
    """PEM bytes of the CA, this fleetd's certificate and its key (plus their paths)."""

    ca_file: str
    cert_file: str
    key_file: str
    ca: bytes
    cert: bytes
    key: bytes

    @classmethod
    def load(cls, ca_file: str, cert_file: str, key_file: str) -> ApiTls:
        data = []
        for what, path in (("api_tls_cafile", ca_file), ("api_tls_certfile", cert_file),
                           ("api_tls_keyfile", key_file)):
            try:
                with open(path, "rb") as f:
                    data.append(f.read())
            except OSError as e:
                raise TlsError(f"cannot read {what} {path}: {e.strerror}") from None
        tls = cls(ca_file, cert_file, key_file, *data)
        tls.server_context()  # fail now, naming the files, rather than at the first client
        return tls

    def grpc_server_credentials(self) -> Any:
        import grpc

        return grpc.ssl_server_credentials([(self.key, self.cert)],
                                           root_certificates=self.ca,
                                           require_client_auth=True)

    def grpc_channel_credentials(self) -> Any:
        import grpc

        return grpc.ssl_channel_credentials(root_certificates=self.ca, private_key=self.key,
                                            certificate_chain=self.cert)

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for aiohttp that requires a client certificate signed by the CA."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_verify_locations(cadata=self.ca.decode("ascii", "replace"))
            ctx.load_cert_chain(self.cert_file, self.key_file)
        except (ssl.SSLError, ValueError, OSError) as e:
            raise TlsError(f"TLS files {self.cert_file} / {self.key_file} (CA "
                           f"{self.ca_file}) are not usable: {e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx


def secure_unix_socket(path: str, group: str = "") -> None:
    """Give the socket at `path` mode 0660 and, when `group` is set, that group: only root,
    the owner and the group's members may talk to fleetd through it."""
    os.chmod(path, 0o660)
    if group:
        os.chown(path, -1, resolve_group(group))


def resolve_group(group: str) -> int:
    """A gid from a group name or number; ValueError naming the group when unknown."""
    if group.isdigit():
        return int(group)
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"api_socket_group {group!r} is not a group on this host") from None
