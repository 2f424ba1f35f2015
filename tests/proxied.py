"""What the tests against real PROXY-protocol peers (HAProxy, nginx)
share: a handler that says who it thinks the client is, and clients that
connect from their own loopback address, so the address hijack reports
cannot be the proxy's."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from hijack import Request, Response

from .helpers import connect_from, read_until_closed

__all__ = ["GET_CLOSE", "get_from", "tcp_upgrade_from", "who_handler"]

GET_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
TCP_UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: tcp\r\n\r\n"
)


def who_handler(
    seen: list[dict[str, Any]] | None = None, checked: trio.Event | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """Answers (and records in ``seen``) what the connection knows of its
    client, as JSON; sets ``checked`` on the first request for /health."""

    async def who(request: Request) -> Response:
        connection = request.connection
        header = connection.proxy_header
        record = {
            "path": request.path,
            "remote": list(connection.remote_address),
            "peer": list(connection.peer_address),
            "command": header.command if header else None,
            "version": header.version if header else None,
        }
        if seen is not None:
            seen.append(record)
        if checked is not None and request.path == "/health":
            checked.set()
        return Response(200, body=json.dumps(record).encode())

    return who


async def get_from(source: str, host: str, port: int) -> tuple[int, bytes]:
    """GET / from ``source``; the client's port and the answer's body."""
    async with await connect_from(source, host, port) as stream:
        client_port: int = stream.socket.getsockname()[1]
        await stream.send_all(GET_CLOSE)
        data = await read_until_closed(stream)
    return client_port, data.partition(b"\r\n\r\n")[2]


async def tcp_upgrade_from(source: str, port: int) -> tuple[int, bytes]:
    """From ``source``, ``Upgrade: tcp`` at hijack on ``port`` then GET /
    through the tunnel; the client's port and all that came back."""
    async with await connect_from(source, "127.0.0.1", port) as stream:
        client_port: int = stream.socket.getsockname()[1]
        await stream.send_all(TCP_UPGRADE + GET_CLOSE)
        return client_port, await read_until_closed(stream)
