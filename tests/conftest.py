"""Shared fixtures: servers on real loopback ports (port 0), raw-socket helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio

from hijack import Request, Response, Server

Handler = Callable[[Request], Awaitable[Response | None]]
StartServer = Callable[..., Awaitable[tuple[Server, int]]]


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> AsyncIterator[StartServer]:
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


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    """Read until ``marker`` has arrived (or EOF); return all of it."""
    data = b""
    while marker not in data:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data
