"""Shared fixtures: servers on real loopback ports (port 0), raw-socket helpers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from hijack import Request, Response, Server

from .leakcheck import leak_fixture

Handler = Callable[[Request], Awaitable[Response | None]]
StartServer = Callable[..., Awaitable[tuple[Server, int]]]


# Every test that starts a server must leave no task and no fd behind: the
# check runs after the server fixtures' teardown, since they depend on it.
no_leaks = leak_fixture()


@pytest.fixture
async def start_server(
    nursery: trio.Nursery, no_leaks: None
) -> AsyncIterator[StartServer]:
    """``server, port = await start_server(handler, **Server kwargs)``: a
    server on 127.0.0.1, port 0, shut down (grace 0) at the end of the test."""
    servers: list[Server] = []

    async def start(handler: Handler, **kwargs: Any) -> tuple[Server, int]:
        server = Server(handler, **kwargs)
        listeners = await nursery.start(server.serve_tcp, 0)
        servers.append(server)
        return server, listeners[0].socket.getsockname()[1]

    yield start
    for server in servers:
        await server.shutdown(grace=0)


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the peer sends until it closes."""
    chunks = []
    while chunk := await stream.receive_some():
        chunks.append(chunk)
    return b"".join(chunks)


async def read_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    """Exactly ``size`` bytes; EOF before that fails the test."""
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return data


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    """Read until ``marker`` has arrived (or EOF); return all of it."""
    data = b""
    while marker not in data:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """An in-memory trio Listener: ``await listener.connect()`` returns the
    client end of a fresh ``memory_stream_pair`` whose server end the server
    accepts. Lets timeout tests run on ``autojump_clock`` with no sockets."""

    def __init__(
        self,
        pair: Callable[
            [], tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]
        ] = trio.testing.memory_stream_pair,
    ) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](0)
        self._pair = pair
        self.closed = False

    async def connect(self) -> trio.abc.HalfCloseableStream:
        client, server = self._pair()
        await self._send.send(server)
        return client

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        self.closed = True
        await self._receive.aclose()
        await trio.lowlevel.checkpoint()


@pytest.fixture
async def memory_server(
    nursery: trio.Nursery, no_leaks: None
) -> AsyncIterator[Callable[..., Awaitable[tuple[Server, MemoryListener]]]]:
    """``server, listener = await memory_server(handler, **kwargs)``."""

    async def start(
        handler: Handler, *, listener: MemoryListener | None = None, **kwargs: Any
    ) -> tuple[Server, MemoryListener]:
        server = Server(handler, **kwargs)
        listener = listener or MemoryListener()
        await nursery.start(server.serve_listeners, [listener])
        return server, listener

    yield start


async def trickle_until_answered(
    client: trio.abc.Stream, data: bytes, interval: float = 1.0
) -> tuple[float, bytes]:
    """Send ``data`` one byte per ``interval`` while reading; return how long
    after the start the server's answer began, and everything it sent."""
    start = trio.current_time()

    async def trickle() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for byte in data:
                await client.send_all(bytes([byte]))
                await trio.sleep(interval)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        first = await client.receive_some()
        answered_after = trio.current_time() - start
        rest = await read_until_closed(client)
        nursery.cancel_scope.cancel()
    return answered_after, first + rest


async def connect_from(source_host: str, host: str, port: int) -> trio.SocketStream:
    """A TCP stream to ``host:port`` from ``source_host`` (any 127.0.0.0/8
    address works on Linux loopback): tells a client apart from a proxy."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family)
    try:
        await sock.bind((source_host, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)
