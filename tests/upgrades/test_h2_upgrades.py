"""The shipped upgrades on HTTP/2: the WebSocket over RFC 8441 (the echo
handler), the CONNECT proxy on an HTTP/2 stream, wsbridge over RFC 8441.
The clients are the test kit's (memory streams to the server); upstreams
are real loopback sockets."""

from __future__ import annotations

import functools

import pytest
import trio

from hijack import AccessRecord, Server
from hijack.testing import open_test_client
from hijack.tunnel.policy import ConnectPolicy
from hijack.upgrades.connect import ConnectProxy
from hijack.upgrades.websocket import make_echo_handler
from hijack.upgrades.wsbridge import WebSocketBridge

from ..leakcheck import leak_fixture

no_leaks = leak_fixture()
pytestmark = pytest.mark.usefixtures("no_leaks")


async def upper_echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some(65536):
            await stream.send_all(data.upper())


async def start_upstream(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, upper_echo, 0, host="127.0.0.1")
    )
    return int(listeners[0].socket.getsockname()[1])


async def test_websocket_over_http2_is_an_extended_connect() -> None:
    records: list[AccessRecord] = []
    server = Server(make_echo_handler(), http2=True, on_request=records.append)
    async with open_test_client(server) as client:
        async with client.websocket("/", http2=True) as ws:
            await ws.send("hello over a stream")
            assert await ws.receive() == "hello over a stream"
            await ws.send(b"\x00" * 200_000)  # past the stream windows
            assert await ws.receive() == b"\x00" * 200_000
        # Plain requests on HTTP/2 still get the page.
        async with client.http2() as h2c:
            page = await h2c.request("GET", "/")
            assert page.status == 200 and b"WebSocket" in page.body
    # What the server saw: an Extended CONNECT on an HTTP/2 stream, answered 200.
    assert (records[0].method, records[0].http_version, records[0].status) == (
        "CONNECT",
        "2",
        200,
    )


async def test_connect_proxy_on_an_http2_stream(nursery: trio.Nursery) -> None:
    port = await start_upstream(nursery)
    proxy = ConnectProxy(ConnectPolicy(allowed_ports={port}, allow=["127.0.0.1"]))
    async with open_test_client(proxy, http2=True) as client, client.http2() as h2c:
        tunnels = []
        for _ in range(3):  # three tunnels on one connection
            response, tunnel = await h2c.tunnel(f"127.0.0.1:{port}")
            assert response.status == 200 and tunnel is not None
            tunnels.append(tunnel)
        for n, tunnel in enumerate(tunnels):
            await tunnel.send_all(b"tunnel %d" % n)
            assert await tunnel.receive_some() == b"TUNNEL %d" % n
        for tunnel in tunnels:
            await tunnel.send_eof()
            assert await tunnel.receive_some() == b""
            await tunnel.aclose()
        # The policy still holds on HTTP/2.
        refused, stream = await h2c.tunnel("127.0.0.1:1")
        assert refused.status == 403 and stream is None
    nursery.cancel_scope.cancel()


async def test_wsbridge_over_rfc8441(nursery: trio.Nursery) -> None:
    port = await start_upstream(nursery)
    bridge = WebSocketBridge(("127.0.0.1", port))
    async with open_test_client(bridge, http2=True) as client:
        async with client.http2() as h2c:
            assert h2c.h2.remote_settings.enable_connect_protocol == 1
        async with client.websocket("/", subprotocols=["binary"], http2=True) as ws:
            assert ws.subprotocol == "binary"
            await ws.send(b"bytes through the bridge")
            assert await ws.receive() == b"BYTES THROUGH THE BRIDGE"
    nursery.cancel_scope.cancel()


async def test_demo_routes_rfc8441_to_the_echo_not_the_proxy() -> None:
    from hijack.cli._demo import demo_handler

    async with open_test_client(demo_handler(1), http2=True) as client:
        async with client.websocket("/", http2=True) as ws:
            await ws.send("demo over HTTP/2")
            assert await ws.receive() == "demo over HTTP/2"
        async with client.http2() as h2c:
            refused, stream = await h2c.tunnel("127.0.0.1:2")  # plain CONNECT
            assert refused.status == 403 and stream is None
