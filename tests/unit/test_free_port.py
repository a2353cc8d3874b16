"""`free_port` hands out ports a server can bind a moment later: outside the range the kernel
takes for outgoing connections, free on every address, never the same twice."""

from __future__ import annotations

import socket

from fleetd.localcluster.cluster import _ephemeral_low, free_port


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable_on_any_address() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < _ephemeral_low() for p in ports)
    for p in ports[:20]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.4", p))  # a machine's own loopback address, as fleetd binds it


def test_a_port_something_listens_on_is_never_handed_out() -> None:
    """A sixteenth of the range taken by listeners this test binds itself (not through
    free_port): none of 300 ports handed out is one of them."""
    low, high = 20000, _ephemeral_low() - 1
    held: list[socket.socket] = []
    try:
        for port in range(low, high, 16):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.3", port))
            except OSError:
                s.close()
                continue
            s.listen()
            held.append(s)
        busy = {s.getsockname()[1] for s in held}
        assert len(busy) > (high - low) // 20
        assert not busy & {free_port() for _ in range(300)}
    finally:
        for s in held:
            s.close()
