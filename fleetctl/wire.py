"""gRPC over HTTP/2, the client side, on the standard library alone: what fleetctl needs to
call fleetd's gRPC API (unary calls, several at once on one connection, server streams).

Why not grpcio: `import grpc` took 65-118 ms and creating its TLS channel 27-34 ms, on every
fleetctl run that calls the API; the issue's target for a whole `fleetctl list-units` is
60 ms. This speaks the same protocol to fleetd's grpcio server: HTTP/2 (RFC 9113) over a unix
socket, plain TCP or TLS with ALPN `h2`, headers in HPACK (`fleetctl.hpack`), messages as
gRPC's length-prefixed frames, status in the trailers (the gRPC over HTTP/2 specification,
`PROTOCOL-HTTP2.md` of grpc/grpc). It is synchronous: a call blocks its thread until its
answer, its deadline or its cancellation.

One `Connection` carries the unary calls, from one thread. Each server stream has a
connection of its own, so that `cancel()` from any thread ends it at once (shutting its
socket wakes a reader blocked on it) without touching the calls of the shared one.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import deque
from collections.abc import Iterable, Iterator

from fleetctl import hpack

#: typing's names are for the type checker only: importing typing cost each run ~5 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# gRPC status codes (grpc/grpc doc/statuscodes.md)
OK, CANCELLED, UNKNOWN, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND = 0, 1, 2, 3, 4, 5
ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION = 6, 7, 8, 9
ABORTED, OUT_OF_RANGE, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS = 10, 11, 12, 13, 14, 15
UNAUTHENTICATED = 16
CODE_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
              "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
              "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
              "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")

# HTTP/2 frame types, flags, settings and error codes (RFC 9113)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY = 0, 1, 2, 3, 4, 5, 6, 7
WINDOW_UPDATE, CONTINUATION = 8, 9
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
S_ENABLE_PUSH, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 2, 4, 5
E_PROTOCOL, E_REFUSED_STREAM, E_CANCEL = 0x1, 0x7, 0x8

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 65535
#: The largest frame we accept (we say so in our SETTINGS; fewer, larger DATA frames).
OUR_MAX_FRAME = 1 << 20
#: Received bytes after which we hand the window back (it starts at MAX_WINDOW).
WINDOW_REFILL = 1 << 30
DEFAULT_MAX_MESSAGE = 512 * 1024 * 1024
USER_AGENT = "fleetctl-py (HTTP/2; gRPC)"
#: The gRPC status of an HTTP status without one (PROTOCOL-HTTP2.md's mapping).
HTTP_TO_GRPC = {400: INTERNAL, 401: UNAUTHENTICATED, 403: PERMISSION_DENIED,
                404: UNIMPLEMENTED, 429: UNAVAILABLE, 502: UNAVAILABLE, 503: UNAVAILABLE,
                504: UNAVAILABLE}


class RpcError(Exception):
    """A call that ended without an answer: the gRPC status code and its details."""

    def __init__(self, code: int, details: str) -> None:
        super().__init__(f"{code_name(code)}: {details}")
        self._code, self._details = code, details

    def code(self) -> int:
        return self._code

    def details(self) -> str:
        return self._details


def code_name(code: int) -> str:
    return CODE_NAMES[code] if 0 <= code < len(CODE_NAMES) else f"CODE_{code}"


def percent_decode(value: str) -> str:
    """grpc-message is percent-encoded UTF-8."""
    if "%" not in value:
        return value
    raw = value.encode("latin-1")
    out = bytearray()
    i = 0
    while i < len(raw):
        if raw[i] == 0x25 and _is_hex(raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "replace")


def _is_hex(b: bytes) -> bool:
    return len(b) == 2 and all(c in b"0123456789abcdefABCDEF" for c in b)


def grpc_timeout(seconds: float) -> str:
    """The grpc-timeout header: at most 8 digits, in milliseconds or coarser."""
    ms = max(1, int(seconds * 1000 + 0.999))
    if ms < 10 ** 8:
        return f"{ms}m"
    return f"{min(10 ** 8 - 1, int(seconds) + 1)}S"


class Target:
    """Where fleetd listens: `unix:PATH` / `unix:///PATH`, or `HOST:PORT` (`[v6]:PORT`)."""

    def __init__(self, target: str) -> None:
        self.text = target
        if target.startswith("unix:"):
            path = target[len("unix:"):]
            if path.startswith("//"):
                path = path[2:]
            self.unix_path: str | None = path
            self.host, self.port = "localhost", 0
            return
        self.unix_path = None
        t = target[len("dns:///"):] if target.startswith("dns:///") else target
        if t.startswith("["):
            host, _, rest = t[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            host, sep, port = t.rpartition(":")
            if not sep:
                host, port = t, ""
        try:
            self.port = int(port) if port else 443
        except ValueError:
            raise RpcError(UNAVAILABLE, f"bad port in {target!r}") from None
        if not host:
            raise RpcError(UNAVAILABLE, f"no host in {target!r}")
        self.host = host

    @property
    def authority(self) -> str:
        if self.unix_path is not None:
            return "localhost"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class _Stream:
    __slots__ = ("buf", "ended", "headers", "id", "messages", "recv_taken", "reset",
                 "send_window", "trailers")

    def __init__(self, stream_id: int, send_window: int) -> None:
        self.id = stream_id
        self.headers: list[tuple[str, str]] | None = None
        self.trailers: list[tuple[str, str]] | None = None
        self.buf = bytearray()  # DATA not yet cut into messages
        self.messages: deque[bytes] = deque()
        self.ended = False
        self.reset: RpcError | None = None
        self.send_window = send_window
        self.recv_taken = 0


class Connection:
    """One HTTP/2 connection to fleetd; not thread-safe except `abort()`."""

    def __init__(self, target: Target, ssl_context: Any = None, server_name: str = "",
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.target = target
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.max_message = max_message
        self.sock: Any = None
        self.decoder = hpack.Decoder()
        self.streams: dict[int, _Stream] = {}
        self.next_id = 1
        self.send_window = DEFAULT_WINDOW
        self.peer_initial_window = DEFAULT_WINDOW
        self.peer_max_frame = 16384
        self.recv_taken = 0
        self.rbuf = bytearray()
        self.goaway: RpcError | None = None
        self.broken: RpcError | None = None
        self.aborted = False

    # --- connecting -------------------------------------------------------------------------
    def open(self, deadline: float | None) -> None:
        if self.sock is not None:
            return
        t = self.target
        try:
            if t.unix_path is not None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(_remaining(deadline))
                sock.connect(t.unix_path)
            else:
                # An ASCII host name as bytes: getaddrinfo then skips the idna codec's import.
                host: str | bytes = t.host.encode() if t.host.isascii() else t.host
                sock = socket.create_connection((host, t.port),  # type: ignore[arg-type]
                                                timeout=_remaining(deadline))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                sock.settimeout(_remaining(deadline))
                name = self.server_name or t.host
                # As bytes too: ssl encodes a str name with the idna codec (2 ms to import).
                sock = self.ssl_context.wrap_socket(sock, server_hostname=(
                    name.encode() if name.isascii() else name))
                if sock.selected_alpn_protocol() != "h2":
                    sock.close()
                    raise RpcError(UNAVAILABLE, f"{t.text} did not agree to HTTP/2 (ALPN h2)")
        except TimeoutError:
            raise RpcError(DEADLINE_EXCEEDED, f"connecting to {t.text} timed out") from None
        except OSError as e:
            raise RpcError(UNAVAILABLE, f"failed to connect to {t.text}: "
                                        f"{_os_error_text(e)}") from None
        self.sock = sock
        settings = struct.pack(">HIHIHI", S_ENABLE_PUSH, 0, S_INITIAL_WINDOW_SIZE, MAX_WINDOW,
                               S_MAX_FRAME_SIZE, OUR_MAX_FRAME)
        self._send(PREFACE + _frame(SETTINGS, 0, 0, settings)
                   + _frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", MAX_WINDOW - DEFAULT_WINDOW)),
                   deadline)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def abort(self) -> None:
        """From any thread: end the connection now (a blocked reader wakes with an error)."""
        self.aborted = True
        sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except (OSError, ValueError):
                pass

    # --- calls ------------------------------------------------------------------------------
    def start_call(self, method: str, request: bytes, deadline: float | None,
                   timeout_s: float | None) -> _Stream:
        """Send one request (headers, then the message, ending the stream)."""
        self.open(deadline)
        self._check_usable()
        sid = self.next_id
        self.next_id += 2
        s = _Stream(sid, self.peer_initial_window)
        self.streams[sid] = s
        headers = [(":method", "POST"), (":scheme", "https" if self.ssl_context else "http"),
                   (":path", method), (":authority", self.server_name or self.target.authority),
                   ("te", "trailers"), ("content-type", "application/grpc"),
                   ("user-agent", USER_AGENT)]
        if timeout_s is not None:
            headers.append(("grpc-timeout", grpc_timeout(timeout_s)))
        block = hpack.encode(headers)
        out = bytearray()
        first = True
        while block or first:
            chunk, block = block[:self.peer_max_frame], block[self.peer_max_frame:]
            out += _frame(HEADERS if first else CONTINUATION, 0 if block else END_HEADERS,
                          sid, chunk)
            first = False
        self._send(bytes(out), deadline)
        self._send_data(s, struct.pack(">BI", 0, len(request)) + request, deadline)
        return s

    def next_message(self, s: _Stream, deadline: float | None) -> bytes | None:
        """The stream's next message; None once it ended with OK; RpcError otherwise."""
        while True:
            if s.messages:
                return s.messages.popleft()
            if s.reset is not None:
                self.streams.pop(s.id, None)
                raise s.reset
            if s.ended:
                self.streams.pop(s.id, None)
                self._finish(s)
                return None
            self._read_one(deadline)

    def cancel(self, s: _Stream) -> None:
        """Tell fleetd we no longer want the stream's answer."""
        if self.streams.pop(s.id, None) is not None and not s.ended and self.sock is not None:
            try:
                self._send(_frame(RST_STREAM, 0, s.id, struct.pack(">I", E_CANCEL)), None)
            except RpcError:
                pass

    def _finish(self, s: _Stream) -> None:
        if s.buf:
            raise RpcError(INTERNAL, "the answer ended inside a message")
        meta = dict(s.trailers if s.trailers is not None else s.headers or [])
        head = dict(s.headers or [])
        status_text = meta.get("grpc-status")
        if status_text is None:
            http = int(head.get(":status", "0") or 0)
            if http != 200:
                raise RpcError(HTTP_TO_GRPC.get(http, UNKNOWN), f"HTTP status {http}")
            raise RpcError(INTERNAL, "the answer ended without a grpc-status")
        try:
            code = int(status_text)
        except ValueError:
            raise RpcError(INTERNAL, f"bad grpc-status {status_text!r}") from None
        if code != OK:
            raise RpcError(code, percent_decode(meta.get("grpc-message", "")))

    def _check_usable(self) -> None:
        if self.broken is not None:
            raise self.broken
        if self.goaway is not None:
            raise self.goaway

    # --- frames out -------------------------------------------------------------------------
    def _send(self, data: bytes, deadline: float | None) -> None:
        if self.sock is None:
            raise self.broken or RpcError(UNAVAILABLE, "connection closed")
        try:
            self.sock.settimeout(_remaining(deadline))
            self.sock.sendall(data)
        except TimeoutError:
            raise self._break(DEADLINE_EXCEEDED, "sending to fleetd timed out") from None
        except (OSError, ValueError) as e:
            raise self._break(UNAVAILABLE, f"connection to {self.target.text} lost: "
                                           f"{_os_error_text(e)}") from None

    def _send_data(self, s: _Stream, data: bytes, deadline: float | None) -> None:
        """DATA frames of the request within the peer's flow-control windows; the last one
        ends our side of the stream."""
        view = memoryview(data)
        while True:
            room = min(self.send_window, s.send_window, self.peer_max_frame)
            if room <= 0 and view:
                if s.reset is not None or s.ended:
                    return  # fleetd answered (refused) before reading it all
                self._read_one(deadline)
                continue
            chunk, view = view[:room], view[room:]
            self.send_window -= len(chunk)
            s.send_window -= len(chunk)
            self._send(_frame(DATA, 0 if view else END_STREAM, s.id, bytes(chunk)), deadline)
            if not view:
                return

    # --- frames in --------------------------------------------------------------------------
    def _break(self, code: int, details: str) -> RpcError:
        err = RpcError(CANCELLED, "cancelled") if self.aborted else RpcError(code, details)
        self.broken = err
        for s in self.streams.values():
            if s.reset is None and not s.ended:
                s.reset = err
        self.close()
        return err

    def _recv_exactly(self, n: int, deadline: float | None) -> bytes:
        buf = self.rbuf
        while len(buf) < n:
            if self.sock is None:
                raise self.broken or RpcError(UNAVAILABLE, "connection closed")
            try:
                self.sock.settimeout(_remaining(deadline))
                chunk = self.sock.recv(max(262144, n - len(buf)))
            except TimeoutError:  # a frame may be half read: the connection is done
                raise self._break(DEADLINE_EXCEEDED, "deadline exceeded") from None
            except (OSError, ValueError) as e:
                raise self._break(UNAVAILABLE, f"connection to {self.target.text} lost: "
                                               f"{_os_error_text(e)}") from None
            if not chunk:
                raise self._break(UNAVAILABLE, f"{self.target.text} closed the connection")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _read_one(self, deadline: float | None) -> None:
        head = self._recv_exactly(9, deadline)
        length = int.from_bytes(head[:3], "big")
        ftype, flags = head[3], head[4]
        sid = int.from_bytes(head[5:9], "big") & 0x7FFFFFFF
        if length > OUR_MAX_FRAME:
            self._protocol_error(f"a frame of {length} bytes")
        payload = self._recv_exactly(length, deadline)
        if ftype == DATA:
            self._on_data(sid, flags, payload, deadline)
        elif ftype == HEADERS:
            self._on_headers(sid, flags, payload, deadline)
        elif ftype == RST_STREAM:
            s = self.streams.get(sid)
            if s is not None and len(payload) == 4:
                code = int.from_bytes(payload, "big")
                s.reset = RpcError(UNAVAILABLE if code == E_REFUSED_STREAM else
                                   CANCELLED if code == E_CANCEL else INTERNAL,
                                   f"stream reset by fleetd (HTTP/2 error {code})")
        elif ftype == SETTINGS:
            if not flags & ACK:
                self._on_settings(payload, deadline)
        elif ftype == PING:
            if not flags & ACK:
                self._send(_frame(PING, ACK, 0, payload), deadline)
        elif ftype == GOAWAY:
            last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            code = int.from_bytes(payload[4:8], "big")
            debug = payload[8:].decode("utf-8", "replace")
            err = RpcError(UNAVAILABLE, f"fleetd is closing the connection (HTTP/2 error "
                                        f"{code}{': ' + debug if debug else ''})")
            self.goaway = err
            for s in self.streams.values():
                if s.id > last and s.reset is None and not s.ended:
                    s.reset = err
        elif ftype == WINDOW_UPDATE:
            inc = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
            if sid == 0:
                self.send_window += inc
            elif (s := self.streams.get(sid)) is not None:
                s.send_window += inc
        elif ftype == PUSH_PROMISE:
            self._protocol_error("a push promise (push is disabled)")
        # PRIORITY, CONTINUATION out of place and unknown types: ignored (RFC 9113 5.5)

    def _protocol_error(self, what: str) -> None:
        try:
            self._send(_frame(GOAWAY, 0, 0, struct.pack(">II", 0, E_PROTOCOL)), None)
        except RpcError:
            pass
        raise self._break(INTERNAL, f"HTTP/2 protocol error from fleetd: {what}")

    def _on_settings(self, payload: bytes, deadline: float | None) -> None:
        for i in range(0, len(payload) - 5, 6):
            key, value = struct.unpack(">HI", payload[i:i + 6])
            if key == S_INITIAL_WINDOW_SIZE:
                delta = value - self.peer_initial_window
                self.peer_initial_window = value
                for s in self.streams.values():
                    s.send_window += delta
            elif key == S_MAX_FRAME_SIZE:
                self.peer_max_frame = value
        self._send(_frame(SETTINGS, ACK, 0, b""), deadline)

    def _on_headers(self, sid: int, flags: int, payload: bytes, deadline: float | None) -> None:
        block = _unpad(payload, flags)
        if flags & PRIORITY_FLAG:
            block = block[5:]
        more_flags = flags
        while not more_flags & END_HEADERS:  # CONTINUATION frames follow, nothing between
            head = self._recv_exactly(9, deadline)
            length, ftype, more_flags = int.from_bytes(head[:3], "big"), head[3], head[4]
            if ftype != CONTINUATION or length > OUR_MAX_FRAME:
                self._protocol_error("a header block interrupted")
            block += self._recv_exactly(length, deadline)
        try:
            headers = self.decoder.decode(block)
        except hpack.HpackError as e:
            self._protocol_error(f"bad header block ({e})")
            return
        s = self.streams.get(sid)
        if s is None:
            return
        if s.headers is None:
            s.headers = headers
        else:
            s.trailers = headers
        if flags & END_STREAM:
            s.ended = True

    def _on_data(self, sid: int, flags: int, payload: bytes, deadline: float | None) -> None:
        self.recv_taken += len(payload)
        if self.recv_taken >= WINDOW_REFILL:
            self._send(_frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", self.recv_taken)),
                       deadline)
            self.recv_taken = 0
        s = self.streams.get(sid)
        if s is None:
            return
        s.recv_taken += len(payload)
        if s.recv_taken >= WINDOW_REFILL and not flags & END_STREAM:
            self._send(_frame(WINDOW_UPDATE, 0, sid, struct.pack(">I", s.recv_taken)),
                       deadline)
            s.recv_taken = 0
        s.buf += _unpad(payload, flags)
        buf = s.buf
        while len(buf) >= 5:
            compressed, n = buf[0], int.from_bytes(buf[1:5], "big")
            if n > self.max_message:
                s.reset = RpcError(RESOURCE_EXHAUSTED, f"an answer of {n} bytes is larger "
                                                       f"than the {self.max_message} allowed")
                self.cancel(s)
                return
            if len(buf) < 5 + n:
                break
            if compressed:
                s.reset = RpcError(INTERNAL, "fleetd sent a compressed message unasked")
                self.cancel(s)
                return
            s.messages.append(bytes(buf[5:5 + n]))
            del buf[:5 + n]
        if flags & END_STREAM:
            s.ended = True


def _frame(ftype: int, flags: int, sid: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + \
        struct.pack(">I", sid) + payload


def _unpad(payload: bytes, flags: int) -> bytes:
    if not flags & PADDED:
        return payload
    pad = payload[0] if payload else 0
    return payload[1:len(payload) - pad]


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise RpcError(DEADLINE_EXCEEDED, "deadline exceeded")
    return left


def _os_error_text(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror if not e.filename else f"{e.strerror}: {e.filename}"
    return str(e) or type(e).__name__


class Channel:
    """gRPC calls to one fleetd: unary ones on a shared connection (one thread), each server
    stream on a connection of its own."""

    def __init__(self, target: str, ssl_context: Any = None, server_name: str = "",
                 max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        self.target = Target(target)
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.max_message = max_message
        self._conn: Connection | None = None

    def _connection(self) -> Connection:
        c = self._conn
        if c is None or c.broken is not None or c.goaway is not None:
            if c is not None:
                c.close()
            c = self._conn = Connection(self.target, self.ssl_context, self.server_name,
                                        self.max_message)
        return c

    def unary(self, method: str, request: bytes, timeout_s: float | None) -> bytes:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        c = self._connection()
        return _one_answer(c, c.start_call(method, request, deadline, timeout_s), deadline)

    def unary_many(self, method: str, requests: Iterable[bytes], timeout_s: float | None,
                   in_flight: int) -> Iterator[bytes | RpcError]:
        """Each request as a unary call, up to `in_flight` at once on the shared connection;
        results (an answer or its RpcError) in request order."""
        return self.unary_calls(((method, r) for r in requests), timeout_s, in_flight)

    def unary_calls(self, calls: Iterable[tuple[str, bytes]], timeout_s: float | None,
                    in_flight: int) -> Iterator[bytes | RpcError]:
        """`unary_many` of (method, request) pairs: calls of different methods at once."""
        pending: deque[tuple[Connection, _Stream, float | None] | RpcError] = deque()

        def result(item: tuple[Connection, _Stream, float | None] | RpcError
                   ) -> bytes | RpcError:
            if isinstance(item, RpcError):
                return item
            try:
                return _one_answer(*item)
            except RpcError as e:
                return e

        for method, request in calls:
            deadline = None if timeout_s is None else time.monotonic() + timeout_s
            c = self._connection()
            try:
                pending.append((c, c.start_call(method, request, deadline, timeout_s),
                                deadline))
            except RpcError as e:
                pending.append(e)
            if len(pending) >= in_flight:
                yield result(pending.popleft())
        while pending:
            yield result(pending.popleft())

    def stream(self, method: str, request: bytes, timeout_s: float | None) -> StreamCall:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        c = Connection(self.target, self.ssl_context, self.server_name, self.max_message)
        return StreamCall(c, c.start_call(method, request, deadline, timeout_s), deadline)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _one_answer(c: Connection, s: _Stream, deadline: float | None) -> bytes:
    """A unary call's single answer (the stream cancelled if anything is wrong)."""
    try:
        answer = c.next_message(s, deadline)
        if answer is None:
            raise RpcError(INTERNAL, "the call ended without an answer")
        if c.next_message(s, deadline) is not None:
            raise RpcError(INTERNAL, "more than one answer to a unary call")
        return answer
    except RpcError:
        c.cancel(s)
        raise


class StreamCall:
    """The messages of one server stream; `cancel()` may come from any thread."""

    def __init__(self, conn: Connection, s: _Stream, deadline: float | None) -> None:
        self._conn, self._s, self._deadline = conn, s, deadline
        self.cancelled = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.cancelled:
            raise RpcError(CANCELLED, "cancelled")
        try:
            msg = self._conn.next_message(self._s, self._deadline)
        except RpcError as e:
            if self.cancelled:
                raise RpcError(CANCELLED, "cancelled") from None
            self._conn.close()
            raise e from None
        if msg is None:
            self._conn.close()
            raise StopIteration
        return msg

    def cancel(self) -> None:
        """End the stream: shutting the socket wakes a reader blocked on it (any thread),
        whose next read then fails on the closed socket; it reports CANCELLED."""
        self.cancelled = True
        self._conn.abort()
        self._conn.close()
