"""fleetctl.wire against a real grpcio server on real sockets (unix, TCP, mutual TLS): unary
calls, many at once, answers larger than the flow-control windows, server streams, status
codes and their messages, deadlines, cancellation from another thread, refused TLS."""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from fleetctl import wire
from fleetctl.client import TlsFiles
from fleetd.certificates import CertificateAuthority


class Service:
    """Methods of `/t.T/`, on raw bytes (no protobuf: the transport is what is tested)."""

    def __init__(self) -> None:
        self.cancelled = threading.Event()
        self.seen_timeout: list[float | None] = []

    def echo(self, request: bytes, ctx: Any) -> bytes:
        self.seen_timeout.append(ctx.time_remaining())
        return request[::-1]

    def big(self, request: bytes, ctx: Any) -> bytes:
        n = int(request)
        return bytes(i % 251 for i in range(n))

    def fail(self, request: bytes, ctx: Any) -> bytes:
        code, _, message = request.decode().partition(" ")
        ctx.abort(grpc.StatusCode[code], message)
        return b""

    def slow(self, request: bytes, ctx: Any) -> bytes:
        time.sleep(float(request))
        return b"late"

    def count(self, request: bytes, ctx: Any) -> Iterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode()

    def forever(self, request: bytes, ctx: Any) -> Iterator[bytes]:
        ctx.add_callback(self.cancelled.set)
        yield b"first"
        while ctx.is_active():
            time.sleep(0.01)


def _server(svc: Service) -> grpc.Server:
    ident = {"request_deserializer": None, "response_serializer": None}
    handlers = {
        "Echo": grpc.unary_unary_rpc_method_handler(svc.echo, **ident),
        "Big": grpc.unary_unary_rpc_method_handler(svc.big, **ident),
        "Fail": grpc.unary_unary_rpc_method_handler(svc.fail, **ident),
        "Slow": grpc.unary_unary_rpc_method_handler(svc.slow, **ident),
        "Count": grpc.unary_stream_rpc_method_handler(svc.count, **ident),
        "Forever": grpc.unary_stream_rpc_method_handler(svc.forever, **ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=40),
                         options=[("grpc.max_send_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", handlers)])
    return server


@pytest.fixture(scope="module")
def svc() -> Service:
    return Service()


@pytest.fixture(scope="module")
def endpoints(svc: Service, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("wire")
    ca = CertificateAuthority.create(tmp / "pki")
    server_cert = ca.issue("fleetd", ips=["127.0.0.1"], dns=["localhost"])
    client = ca.issue("admin")
    rogue = CertificateAuthority.create(tmp / "rogue").issue("intruder")
    server = _server(svc)
    sock = tmp / "api.sock"
    server.add_insecure_port(f"unix://{sock}")
    tcp = server.add_insecure_port("127.0.0.1:0")
    creds = grpc.ssl_server_credentials(
        [(pathlib.Path(server_cert.key_file).read_bytes(),
          pathlib.Path(server_cert.cert_file).read_bytes())],
        root_certificates=pathlib.Path(ca.ca_file).read_bytes(), require_client_auth=True)
    tls = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    yield {"unix": f"unix://{sock}", "tcp": f"127.0.0.1:{tcp}", "tls": f"127.0.0.1:{tls}",
           "client": TlsFiles(client.ca_file, client.cert_file, client.key_file),
           "rogue": TlsFiles(client.ca_file, rogue.cert_file, rogue.key_file)}
    server.stop(None)


@pytest.fixture(params=["unix", "tcp", "tls"])
def channel(request: pytest.FixtureRequest, endpoints: dict[str, Any]) -> Iterator[wire.Channel]:
    kind = request.param
    ctx = endpoints["client"].ssl_context() if kind == "tls" else None
    ch = wire.Channel(endpoints[kind], ctx)
    yield ch
    ch.close()


def test_unary_call_and_its_deadline_reach_the_server(channel: wire.Channel,
                                                     svc: Service) -> None:
    assert channel.unary("/t.T/Echo", b"hello", 5) == b"olleh"
    assert channel.unary("/t.T/Echo", b"", 5) == b""
    remaining = svc.seen_timeout[-1]
    assert remaining is not None and 3 < remaining <= 5


def test_an_answer_larger_than_every_window_and_frame_arrives_whole(
        channel: wire.Channel) -> None:
    n = 5 * 1024 * 1024 + 17  # > 65,535-byte windows, > 16 KiB and 1 MiB frames
    assert channel.unary("/t.T/Big", str(n).encode(), 20) == bytes(i % 251 for i in range(n))


def test_a_request_larger_than_the_servers_window_is_sent_whole(channel: wire.Channel) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB: the server's window must be waited for
    assert channel.unary("/t.T/Echo", big, 20) == big[::-1]


def test_many_calls_in_flight_answer_in_request_order(channel: wire.Channel) -> None:
    reqs = [f"r{i}".encode() for i in range(100)]
    got = list(channel.unary_many("/t.T/Echo", reqs, 10, 32))
    assert got == [r[::-1] for r in reqs]
    mixed = list(channel.unary_many("/t.T/Fail", [b"NOT_FOUND a", b"ALREADY_EXISTS b"], 5, 32))
    assert [(e.code(), e.details()) for e in mixed if isinstance(e, wire.RpcError)] == [
        (wire.NOT_FOUND, "a"), (wire.ALREADY_EXISTS, "b")]
    assert channel.unary("/t.T/Echo", b"after", 5) == b"retfa"  # the connection still works


@pytest.mark.parametrize("code", ["NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT",
                                  "UNAVAILABLE", "RESOURCE_EXHAUSTED"])
def test_status_codes_and_messages_come_through(channel: wire.Channel, code: str) -> None:
    message = "unit «hello@1.service» not found: 100% gone\nsecond line"
    with pytest.raises(wire.RpcError) as e:
        channel.unary("/t.T/Fail", f"{code} {message}".encode(), 5)
    assert e.value.code() == grpc.StatusCode[code].value[0]
    assert e.value.details() == message


def test_an_unknown_method_is_unimplemented(channel: wire.Channel) -> None:
    with pytest.raises(wire.RpcError) as e:
        channel.unary("/t.T/Nope", b"", 5)
    assert e.value.code() == wire.UNIMPLEMENTED


def test_a_slow_answer_ends_at_the_deadline_and_the_next_call_works(
        channel: wire.Channel) -> None:
    t0 = time.monotonic()
    with pytest.raises(wire.RpcError) as e:
        channel.unary("/t.T/Slow", b"3", 0.3)
    assert e.value.code() == wire.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 2
    assert channel.unary("/t.T/Echo", b"ok", 5) == b"ko"


def test_a_stream_delivers_every_message_then_ends(channel: wire.Channel) -> None:
    assert list(channel.stream("/t.T/Count", b"1000", 20)) == [
        str(i).encode() for i in range(1000)]
    assert list(channel.stream("/t.T/Count", b"0", 5)) == []


def test_cancel_from_another_thread_wakes_the_reader_and_the_server_sees_it(
        channel: wire.Channel, svc: Service) -> None:
    svc.cancelled.clear()
    call = channel.stream("/t.T/Forever", b"", None)
    assert next(call) == b"first"
    ended: list[BaseException] = []

    def read() -> None:
        try:
            next(call)
        except BaseException as e:  # what ended the read is the result
            ended.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    reader.join(0.3)
    assert reader.is_alive(), "the stream ended by itself"
    call.cancel()
    reader.join(5)
    assert not reader.is_alive()
    assert isinstance(ended[0], wire.RpcError) and ended[0].code() == wire.CANCELLED
    assert svc.cancelled.wait(5), "the server never saw the stream end"
    assert channel.unary("/t.T/Echo", b"x", 5) == b"x"  # unary calls unaffected


def test_a_stream_deadline_ends_it(channel: wire.Channel) -> None:
    call = channel.stream("/t.T/Forever", b"", 0.5)
    assert next(call) == b"first"
    with pytest.raises(wire.RpcError) as e:
        next(call)
    assert e.value.code() == wire.DEADLINE_EXCEEDED


def test_unreachable_endpoints_are_unavailable(tmp_path: pathlib.Path) -> None:
    for target in (f"unix://{tmp_path}/none.sock", "127.0.0.1:1"):
        with pytest.raises(wire.RpcError) as e:
            wire.Channel(target).unary("/t.T/Echo", b"", 5)
        assert e.value.code() == wire.UNAVAILABLE, e.value
        assert "failed to connect" in e.value.details()


def test_tls_refuses_a_client_of_another_ca_and_plaintext(endpoints: dict[str, Any]) -> None:
    with pytest.raises(wire.RpcError) as e:
        wire.Channel(endpoints["tls"], endpoints["rogue"].ssl_context()).unary(
            "/t.T/Echo", b"", 5)
    assert e.value.code() == wire.UNAVAILABLE
    with pytest.raises(wire.RpcError) as e:
        wire.Channel(endpoints["tls"]).unary("/t.T/Echo", b"", 5)  # no TLS at all
    assert e.value.code() == wire.UNAVAILABLE


def test_tls_checks_the_server_name(endpoints: dict[str, Any]) -> None:
    ctx = endpoints["client"].ssl_context()
    ok = wire.Channel(endpoints["tls"].replace("127.0.0.1", "localhost"), ctx)
    assert ok.unary("/t.T/Echo", b"n", 5) == b"n"  # dns SAN
    with pytest.raises(wire.RpcError) as e:
        wire.Channel(endpoints["tls"], ctx, server_name="elsewhere").unary("/t.T/Echo", b"", 5)
    assert e.value.code() == wire.UNAVAILABLE and "certificate" in e.value.details()
    named = wire.Channel(endpoints["tls"], ctx, server_name="localhost")
    assert named.unary("/t.T/Echo", b"m", 5) == b"m"


def test_grpc_timeout_header_and_percent_decoding() -> None:
    assert wire.grpc_timeout(10) == "10000m"
    assert wire.grpc_timeout(0.0001) == "1m"
    assert wire.grpc_timeout(10 ** 9) == "99999999S"
    assert wire.percent_decode("a%20b%C3%A9%zz%") == "a bé%zz%"
