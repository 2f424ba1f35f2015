"""dial_tcp: a plain non-blocking connect (hijack/tunnel/_dial.py), over
real loopback sockets: connected at once, refused, and cancelled while the
handshake waits (a listener whose accept queue is full drops the SYN)."""

from __future__ import annotations

import errno
import ipaddress
import socket

import pytest
import trio
import trio.testing

from hijack.tunnel._dial import dial_tcp

pytestmark = pytest.mark.usefixtures("no_leaks")

LOOPBACK = ipaddress.ip_address("127.0.0.1")


async def test_connects_and_moves_bytes() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        stream = await dial_tcp(LOOPBACK, listener.getsockname()[1])
        async with stream:
            accepted, _ = listener.accept()
            with accepted:
                await stream.send_all(b"ping")
                assert accepted.recv(4) == b"ping"
                accepted.sendall(b"pong")
                assert await stream.receive_some(4) == b"pong"
            assert isinstance(stream, trio.SocketStream)
            nodelay = stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            assert nodelay


async def test_refused_raises_oserror_with_its_reason() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(OSError) as caught:
        await dial_tcp(LOOPBACK, port)
    assert caught.value.errno == errno.ECONNREFUSED
    assert caught.value.strerror == "Connection refused"


async def test_a_handshake_that_waits_is_cancelled_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Fill the accept queue: later SYNs are dropped, the connect waits.
        queued = []
        try:
            for _ in range(4):
                client = socket.socket()
                client.setblocking(False)
                queued.append(client)
                client.connect_ex(("127.0.0.1", port))
            with trio.move_on_after(5) as scope:
                await dial_tcp(LOOPBACK, port)
            assert scope.cancelled_caught
        finally:
            for client in queued:
                client.close()
