"""Graceful shutdown of a server carrying everything at once, on a UNIX
socket: a request in flight, an idle keep-alive connection, an open
WebSocket and an open CONNECT tunnel."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import trio
import trio.testing

from hijack import Limits, Request, Response, Server
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy
from hijack.upgrades.websocket import make_echo_handler

from ..helpers import read_until, read_until_closed
from ..wsclient import Client, CloseConnection, upgrade_request

GRACE = 30.0


async def test_shutdown_with_everything_open(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    async def sink(stream: trio.SocketStream) -> None:
        async with stream:  # echoes, and never closes first: a live tunnel
            while data := await stream.receive_some():
                await stream.send_all(data)

    sinks = await nursery.start(
        functools.partial(trio.serve_tcp, sink, 0, host="127.0.0.1")
    )
    sink_port = sinks[0].socket.getsockname()[1]
    proxy = ConnectProxy(ConnectPolicy(allowed_ports={sink_port}, allow_private=True))
    echo = make_echo_handler()
    release = trio.Event()

    async def handler(request: Request) -> Response | None:
        if request.method == "CONNECT":
            return await proxy(request)
        if request.path == "/slow":
            await release.wait()
            return Response(200, body=b"finished")
        return await echo(request)

    path = str(tmp_path / "app.sock")
    server = Server(handler, limits=Limits(shutdown_grace=GRACE))
    await nursery.start(server.serve_unix, path)

    idle = await trio.open_unix_socket(path)
    await idle.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_until(idle, b"</html>")

    busy = await trio.open_unix_socket(path)
    await busy.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")

    tunnel = await trio.open_unix_socket(path)
    await tunnel.send_all(
        b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: x\r\n\r\nping" % sink_port
    )
    assert (await read_until(tunnel, b"ping")).startswith(b"HTTP/1.1 200 ")

    websocket = await trio.open_unix_socket(path)
    client = Client()
    await websocket.send_all(upgrade_request(host="x"))
    head = await read_until(websocket, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 ") and head.endswith(b"\r\n\r\n")

    await trio.testing.wait_all_tasks_blocked()
    assert server.open_http_connections == 2
    assert server.open_hijacked_connections == 2

    start = trio.current_time()
    async with trio.open_nursery() as inner:
        inner.start_soon(server.shutdown)
        # Idle: closed at once. The socket file: gone at once.
        assert await read_until_closed(idle) == b""
        await trio.testing.wait_all_tasks_blocked()
        assert not os.path.exists(path)
        # The WebSocket: told "going away" (1001) in its own protocol.
        events: list[object] = []
        while not any(isinstance(e, CloseConnection) for e in events):
            client.receive_data(await websocket.receive_some())
            events.extend(client.events())
        close = next(e for e in events if isinstance(e, CloseConnection))
        assert close.code == 1001
        await websocket.send_all(client.send(close.response()))
        assert await read_until_closed(websocket) == b""
        # In flight: finishes, and says the connection closes.
        await trio.sleep(5)
        release.set()
        data = await read_until_closed(busy)
        assert data.startswith(b"HTTP/1.1 200 ") and data.endswith(b"finished")
        assert b"connection: close" in data
        # The tunnel still works during the grace period...
        await trio.sleep(10)
        await tunnel.send_all(b"still")
        assert await read_until(tunnel, b"still") == b"still"
        # ...and is closed when it ends.
        assert await read_until_closed(tunnel) == b""
    assert trio.current_time() - start == GRACE
    assert server.connections == []
    for stream in (idle, busy, tunnel, websocket):
        await stream.aclose()
