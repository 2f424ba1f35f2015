"""UNIX sockets (safe creation, peer credentials) and TLS, end to end."""

from __future__ import annotations

import functools
import os
import socket
import stat
from pathlib import Path

import pytest
import trio

from hijack import Request, Response, Server, open_unix_listener

from ..helpers import read_until, read_until_closed, tls_contexts


async def who(request: Request) -> Response:
    creds = request.connection.peer_credentials
    assert creds is not None
    return Response(
        200,
        body=f"{creds.pid} {creds.uid} {creds.gid} {request.connection.local_address}".encode(),
    )


async def unix_get(path: str, raw: bytes) -> bytes:
    async with await trio.open_unix_socket(path) as stream:
        await stream.send_all(raw)
        return await read_until_closed(stream)


GET_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def test_unix_socket_mode_peer_credentials_and_cleanup(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    path = str(tmp_path / "s.sock")
    server = Server(who)
    await nursery.start(server.serve_unix, path)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    assert [p.name for p in tmp_path.iterdir()] == ["s.sock"]  # no temp dir left
    data = await unix_get(path, GET_CLOSE)
    assert data.endswith(f"{os.getpid()} {os.getuid()} {os.getgid()} {path}".encode())
    await server.shutdown()
    assert not os.path.exists(path)


async def test_unix_socket_custom_mode(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    listener = await open_unix_listener(path, mode=0o600)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    await listener.aclose()
    assert not os.path.exists(path)


async def test_stale_socket_is_replaced_live_one_is_not(tmp_path: Path) -> None:
    path = str(tmp_path / "s.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()  # the file stays, nothing listens
    listener = await open_unix_listener(path)
    with pytest.raises(OSError, match="already listening"):
        await open_unix_listener(path)
    await listener.aclose()


async def test_non_socket_file_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="not a socket"):
        await open_unix_listener(str(path))
    assert path.read_text() == "precious"


async def test_path_over_os_limit_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="OS limit is 107"):
        await open_unix_listener(str(tmp_path / ("x" * 120)))


async def test_tcp_connection_has_no_peer_credentials(
    nursery: trio.Nursery,
) -> None:
    seen: list[object] = []

    async def handler(request: Request) -> Response:
        seen.append(request.connection.peer_credentials)
        seen.append(request.connection.remote_address)
        return Response(200)

    server = Server(handler)
    listeners = await nursery.start(server.serve_tcp, 0)
    port = listeners[0].socket.getsockname()[1]
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(GET_CLOSE)
        await read_until_closed(stream)
    assert seen[0] is None
    assert seen[1][0] == "127.0.0.1"  # type: ignore[index]
    await server.shutdown()


async def test_tls_request_and_hijack(nursery: trio.Nursery) -> None:
    server_ctx, client_ctx = tls_contexts("localhost", "127.0.0.1")
    tls_seen: list[str | None] = []

    async def handler(request: Request) -> Response | None:
        tls = request.connection.tls
        assert tls is not None
        tls_seen.append(tls.version)
        assert tls.cipher  # negotiated suite name
        assert tls.peer_certificate is None  # the client sent none
        if request.path == "/hijack":
            hijacked = await request.hijack(
                Response(101, {"connection": "upgrade", "upgrade": "echo"})
            )
            async with hijacked:
                data = await hijacked.receive_some()
                await hijacked.send_all(data.upper())
            return None
        return Response(200, body=b"secure")

    server = Server(handler)
    listeners = await nursery.start(
        functools.partial(server.serve_tcp, 0, ssl_context=server_ctx)
    )
    port = listeners[0].socket.getsockname()[1]
    async with await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port, ssl_context=client_ctx, https_compatible=True
    ) as stream:
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /hijack HTTP/1.1\r\nHost: localhost\r\nConnection: upgrade\r\n"
            b"Upgrade: echo\r\n\r\nearly"
        )
        data = await read_until(stream, b"EARLY")
    assert b"secure" in data
    assert data.endswith(b"\r\n\r\nEARLY")
    assert tls_seen[0] in ("TLSv1.2", "TLSv1.3")
    await server.shutdown()


async def test_tls_handshake_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    from hijack import Limits
    from hijack.testing import MemoryListener

    server_ctx, _ = tls_contexts("localhost")
    server = Server(who, limits=Limits(tls_handshake_timeout=3))
    listener = MemoryListener()
    await nursery.start(
        functools.partial(server.serve_listeners, [listener], ssl_context=server_ctx)
    )
    client = await listener.connect()  # never says hello
    start = trio.current_time()
    assert await read_until_closed(client) == b""
    assert trio.current_time() - start == 3
    await client.aclose()


async def test_ipv6_loopback(nursery: trio.Nursery) -> None:
    seen: list[object] = []

    async def handler(request: Request) -> Response:
        seen.append(request.connection.remote_address[0])
        return Response(200, body=b"v6")

    server = Server(handler)
    listeners = await nursery.start(server.serve_tcp, 0, "::1")
    port = listeners[0].socket.getsockname()[1]
    async with await trio.open_tcp_stream("::1", port) as stream:
        await stream.send_all(GET_CLOSE)
        assert (await read_until_closed(stream)).endswith(b"v6")
    assert seen == ["::1"]
    await server.shutdown()
