"""TCP keepalive on accepted and dialled sockets, read back from the kernel."""

from __future__ import annotations

import socket
from typing import Any

import trio

from hijack import (
    Connection,
    Limits,
    ReplayStream,
    Request,
    Response,
    copy_tcp_keepalive,
    set_tcp_keepalive,
)
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy, dial_tcp

from ..conftest import StartServer
from ..helpers import read_until, read_until_closed

GET_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
Settings = tuple[int, int, int, int]


def keepalive_of(sock: Any) -> Settings:
    """(SO_KEEPALIVE, idle, interval, count) as the kernel has them."""
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
    )


async def accepted_settings(start_server: StartServer, limits: Limits) -> Settings:
    seen: list[Settings] = []

    async def handler(request: Request) -> Response:
        seen.append(keepalive_of(request.connection.socket))
        return Response(200)

    _, port = await start_server(handler, limits=limits)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(GET_CLOSE)
        await read_until_closed(stream)
    return seen[0]


async def test_on_by_default_with_idle_well_under_a_minute(
    start_server: StartServer,
) -> None:
    assert await accepted_settings(start_server, Limits()) == (1, 30, 10, 3)


async def test_limits_set_accepted_sockets(start_server: StartServer) -> None:
    limits = Limits(
        tcp_keepalive_idle=7, tcp_keepalive_interval=2, tcp_keepalive_count=4
    )
    assert await accepted_settings(start_server, limits) == (1, 7, 2, 4)


async def test_idle_none_turns_it_off(start_server: StartServer) -> None:
    settings = await accepted_settings(start_server, Limits(tcp_keepalive_idle=None))
    assert settings[0] == 0


async def test_dialled_tunnel_socket_gets_the_servers_settings(
    start_server: StartServer,
) -> None:
    dialled: list[trio.abc.Stream] = []
    settings: list[Settings] = []

    async def upstream(request: Request) -> Response:
        return Response(200, body=b"upstream")

    _, upstream_port = await start_server(upstream)

    async def dial(address: Any, port: int) -> trio.abc.Stream:
        stream = await dial_tcp(address, port)
        dialled.append(stream)
        return stream

    proxy = ConnectProxy(
        ConnectPolicy(allowed_ports={upstream_port}, allow=["127.0.0.1"]), dial=dial
    )
    limits = Limits(
        tcp_keepalive_idle=17, tcp_keepalive_interval=4, tcp_keepalive_count=5
    )
    _, port = await start_server(proxy, limits=limits)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            f"CONNECT 127.0.0.1:{upstream_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            + GET_CLOSE
        )
        assert b"upstream" in await read_until(stream, b"upstream")
        assert isinstance(dialled[0], trio.SocketStream)
        settings.append(keepalive_of(dialled[0].socket))
    assert settings == [(1, 17, 4, 5)]


async def test_helpers_on_sockets_directly() -> None:
    a, b = trio.socket.socketpair()  # UNIX: left alone, no error
    with a, b:
        set_tcp_keepalive(a, Limits())
        assert a.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
    listener = trio.socket.socket()
    dialled = trio.socket.socket()
    with listener, dialled:
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        await dialled.connect(listener.getsockname())
        # A connection with no TCP socket of its own lends the defaults.
        memory = Connection(1, trio.testing.memory_stream_pair()[0])
        copy_tcp_keepalive(memory, dialled)
        assert keepalive_of(dialled) == (1, 30, 10, 3)
        set_tcp_keepalive(dialled, Limits(tcp_keepalive_idle=0.2))
        assert keepalive_of(dialled)[:2] == (1, 1)  # whole seconds, at least 1


async def test_forward_client_dials_with_keepalive(nursery: trio.Nursery) -> None:
    """The client side of a tunnel (``hijack forward``) is the one behind a
    NAT: its connection to the server keeps the flow warm too."""
    from hijack.client.forward import open_tunnel

    from ..client.test_forward import fake_server

    port, _ = await fake_server(nursery, b"HTTP/1.1 200 OK\r\n\r\n")
    async with await open_tunnel(
        ("127.0.0.1", port), ("example.com", 22), "connect"
    ) as tunnel:
        assert isinstance(tunnel, ReplayStream)
        assert isinstance(tunnel.stream, trio.SocketStream)
        assert keepalive_of(tunnel.stream.socket) == (1, 30, 10, 3)


async def test_copy_reads_a_connection_the_server_did_not_set_up() -> None:
    """A Connection over a socket set up elsewhere: its settings are read
    back from the kernel (the server's own connections skip the reads:
    it knows what it gave them)."""
    listener, client = trio.socket.socket(), trio.socket.socket()
    dialled_listener, dialled = trio.socket.socket(), trio.socket.socket()
    with listener, client, dialled_listener, dialled:
        for sock in (listener, dialled_listener):
            await sock.bind(("127.0.0.1", 0))
            sock.listen()
        await client.connect(listener.getsockname())
        await dialled.connect(dialled_listener.getsockname())
        accepted, _ = await listener.accept()
        with accepted:
            set_tcp_keepalive(accepted, Limits(tcp_keepalive_idle=9,
                tcp_keepalive_interval=3, tcp_keepalive_count=2))  # fmt: skip
            connection = Connection(1, trio.SocketStream(accepted))
            copy_tcp_keepalive(connection, dialled)
            assert keepalive_of(dialled) == (1, 9, 3, 2)


async def test_a_server_with_keepalive_off_dials_without_it(
    start_server: StartServer,
) -> None:
    dialled: list[trio.abc.Stream] = []

    async def upstream(request: Request) -> Response:
        return Response(200, body=b"upstream")

    _, upstream_port = await start_server(upstream)

    async def dial(address: Any, port: int) -> trio.abc.Stream:
        dialled.append(await dial_tcp(address, port))
        return dialled[-1]

    proxy = ConnectProxy(
        ConnectPolicy(allowed_ports={upstream_port}, allow=["127.0.0.1"]), dial=dial
    )
    _, port = await start_server(proxy, limits=Limits(tcp_keepalive_idle=None))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            f"CONNECT 127.0.0.1:{upstream_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            + GET_CLOSE
        )
        await read_until(stream, b"upstream")
        assert isinstance(dialled[0], trio.SocketStream)
        assert keepalive_of(dialled[0].socket)[0] == 0
