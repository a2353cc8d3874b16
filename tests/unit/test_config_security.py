"""The API's access options: TCP needs mutual TLS or an explicit insecure flag; TLS and
credential options come as complete sets."""

from __future__ import annotations

import pytest

from fleetd.config import ConfigError, load_config

TLS = ["--api_tls_cafile=/ca.pem", "--api_tls_certfile=/c.pem", "--api_tls_keyfile=/k.pem"]
ENV = {"FLEET_CONFIG": "/dev/null"}


@pytest.mark.parametrize("argv", [
    [],
    ["--api_tcp=10.0.0.1:9810", *TLS],
    ["--http_tcp=10.0.0.1:49153", *TLS],
    ["--api_tcp=10.0.0.1:9810", "--api_tcp_insecure=true"],
    ["--api_socket_group=fleet"],
    ["--etcd_certfile=/c.pem", "--etcd_keyfile=/k.pem"],
    ["--etcd_username=root", "--etcd_password=pw"],
])
def test_accepted_access_configurations(argv: list[str]) -> None:
    load_config(argv, ENV)


@pytest.mark.parametrize(("argv", "message"), [
    (["--api_tcp=10.0.0.1:9810"], "api_tcp needs mutual TLS"),
    (["--http_tcp=:49153"], "http_tcp needs mutual TLS"),
    (["--api_tcp=10.0.0.1:9810", "--api_tcp_insecure=false"], "api_tcp needs mutual TLS"),
    (["--api_tcp=10.0.0.1:9810", *TLS[:2]], "api_tls_keyfile is missing"),
    ([TLS[1]], "api_tls_cafile is missing"),
    (["--etcd_certfile=/c.pem"], "etcd_keyfile is missing"),
    (["--etcd_password=pw"], "etcd_username is missing"),
    (["--api_tcp_insecure=maybe"], "invalid value for api_tcp_insecure"),
])
def test_refused_access_configurations_name_the_option(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(argv, ENV)


def test_insecure_flag_from_the_environment() -> None:
    cfg, _ = load_config([], {**ENV, "FLEET_API_TCP": "127.0.0.1:1",
                              "FLEET_API_TCP_INSECURE": "yes"})
    assert cfg.api_tcp_insecure
