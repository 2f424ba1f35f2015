"""``Server.serve_tcp(reuse_port=True)``: several servers on one port."""

from __future__ import annotations

import functools
import socket

import pytest
import trio

from hijack import Request, Response, Server

from ..hijack_process import http_get


async def _named(name: bytes, request: Request) -> Response:
    return Response(200, body=name)


async def test_servers_with_reuse_port_share_a_fixed_port(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    # Reserve a port without listening: a bound SO_REUSEPORT socket keeps
    # it ours (no race with other tests) and receives no connection.
    with socket.socket() as reserve:
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind(("127.0.0.1", 0))
        port = reserve.getsockname()[1]
        servers = [Server(functools.partial(_named, n)) for n in (b"one", b"two")]
        for server in servers:
            await nursery.start(
                functools.partial(server.serve_tcp, port, reuse_port=True)
            )
        seen = set()
        for _ in range(200):  # the kernel hashes each new connection
            status, body = await http_get(port)
            assert status == 200
            seen.add(body)
            if len(seen) == 2:
                break
        assert seen == {b"one", b"two"}
        for server in servers:
            await server.shutdown(grace=0)


async def test_reuse_port_needs_a_fixed_port() -> None:
    with pytest.raises(ValueError, match="fixed port"):
        await Server(functools.partial(_named, b"x")).serve_tcp(0, reuse_port=True)


async def test_a_port_taken_without_reuse_port_is_an_error_and_leaks_nothing(
    no_leaks: None,
) -> None:
    # A plain listener on [::1]:port: the IPv4 socket binds, the IPv6 one
    # cannot, and the IPv4 one must be closed again.
    with socket.socket(socket.AF_INET6) as blocker:
        blocker.bind(("::1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = Server(functools.partial(_named, b"x"))
        with pytest.raises(OSError):
            await server.serve_tcp(port, None, reuse_port=True)
