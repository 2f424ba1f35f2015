"""PROXY protocol on a listener, end to end on loopback sockets: the client
the balancer saw becomes ``remote_address`` everywhere; bad or missing
headers from trusted senders close the connection without a byte."""

from __future__ import annotations

import functools
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from hijack import (
    Connection,
    ConnState,
    Limits,
    ProxyHeader,
    ProxyProtocol,
    Request,
    Response,
    Server,
    encode_proxy_header,
    parse_proxy_header,
)
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy
from hijack.upgrades.tcp import TCPUpgrade

from ..helpers import (
    capture_log,
    connect_from,
    read_exactly,
    read_until,
    read_until_closed,
    start_upstream,
    tls_contexts,
)

# Every test here, fixtures or not, must leave no fd and no task behind.
pytestmark = pytest.mark.usefixtures("no_leaks")

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
GET_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
V1 = b"PROXY TCP4 192.0.2.10 198.51.100.1 40000 443\r\n"


async def who(request: Request) -> Response:
    """Answers with what the connection knows about its client."""
    connection = request.connection
    header = connection.proxy_header
    tls = connection.tls
    body = {
        "remote": list(connection.remote_address or []),
        "peer": list(connection.peer_address or []),
        "command": header.command if header else None,
        "tls": tls.version if tls else None,
    }
    return Response(
        200, {"content-type": "application/json"}, json.dumps(body).encode()
    )


def body_of(response: bytes) -> Any:
    return json.loads(response.partition(b"\r\n\r\n")[2])


Start = Callable[..., Awaitable[tuple[Server, int]]]


@pytest.fixture
async def proxied(nursery: trio.Nursery, no_leaks: None) -> AsyncIterator[Start]:
    """``server, port = await proxied(trusted, handler=who, **serve_tcp kw)``."""
    servers: list[Server] = []

    async def start(
        trusted: ProxyProtocol | list[str],
        handler: Any = who,
        host: str = "127.0.0.1",
        limits: Limits | None = None,
        **kwargs: Any,
    ) -> tuple[Server, int]:
        policy = (
            trusted if isinstance(trusted, ProxyProtocol) else ProxyProtocol(trusted)
        )
        server = Server(handler, limits=limits, **kwargs.pop("server_kw", {}))
        serve = functools.partial(
            server.serve_tcp, 0, host, proxy_protocol=policy, **kwargs
        )
        listeners = await nursery.start(serve)
        servers.append(server)
        return server, listeners[0].socket.getsockname()[1]

    yield start
    for server in servers:
        await server.shutdown(grace=0)


async def ask(port: int, data: bytes, host: str = "127.0.0.1") -> bytes:
    """Send ``data`` then EOF; return all the server sent until it closed
    (a reset, which Linux sends when a socket is closed with unread bytes,
    ends it too)."""
    async with await trio.open_tcp_stream(host, port) as stream:
        received = b""
        try:
            await stream.send_all(data)
            await stream.send_eof()
            while chunk := await stream.receive_some():
                received += chunk
        except trio.BrokenResourceError:
            pass
        return received


# -- the header sets remote_address ---------------------------------------------


async def test_v1_header_names_the_client(proxied: Start) -> None:
    _, port = await proxied(["127.0.0.1"])
    answer = body_of(await ask(port, V1 + GET_CLOSE))
    assert answer["remote"] == ["192.0.2.10", 40000]
    assert answer["peer"][0] == "127.0.0.1"
    assert answer["command"] == "proxy"


async def test_v2_header_arriving_in_pieces(proxied: Start) -> None:
    _, port = await proxied(["127.0.0.0/8"])
    header = encode_proxy_header(2, ("2001:db8::7", 5555), ("127.0.0.1", port))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        for piece in (header[:5], header[5:14], header[14:20], header[20:]):
            await stream.send_all(piece)
            await trio.testing.wait_all_tasks_blocked()
        await stream.send_all(GET_CLOSE)
        answer = body_of(await read_until_closed(stream))
    # An IPv6 client through an IPv4 balancer connection.
    assert answer["remote"] == ["2001:db8::7", 5555]


async def test_bytes_after_the_header_are_kept(proxied: Start) -> None:
    """Header and two pipelined requests in one segment: the header is
    consumed exactly, both requests are answered."""
    _, port = await proxied(["127.0.0.1"])
    data = await ask(port, V1 + GET + GET_CLOSE)
    assert data.count(b"HTTP/1.1 200 ") == 2
    assert data.count(b'"remote": ["192.0.2.10", 40000]') == 2


async def test_ipv4_client_through_ipv6_balancer(proxied: Start) -> None:
    _, port = await proxied(["::1"], host="::1")
    answer = body_of(await ask(port, V1 + GET_CLOSE, host="::1"))
    assert answer["remote"] == ["192.0.2.10", 40000]
    assert answer["peer"][0] == "::1"


async def test_local_command_keeps_the_socket_address(proxied: Start) -> None:
    _, port = await proxied(["127.0.0.1"])
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    answer = body_of(await ask(port, local + GET_CLOSE))
    assert answer["command"] == "local"
    assert answer["remote"] == answer["peer"]
    unknown = body_of(await ask(port, b"PROXY UNKNOWN\r\n" + GET_CLOSE))
    assert unknown["remote"] == unknown["peer"]


async def test_hooks_see_the_client(proxied: Start) -> None:
    seen: list[tuple[str, object]] = []

    def on_connect(connection: Connection) -> None:
        seen.append(("connect", connection.remote_address))

    def on_state(connection: Connection, state: ConnState) -> None:
        seen.append((state.value, connection.remote_address))

    _, port = await proxied(
        ["127.0.0.1"], server_kw={"on_connect": on_connect, "on_state": on_state}
    )
    await ask(port, V1 + GET_CLOSE)
    assert seen[:2] == [
        ("new", ("192.0.2.10", 40000)),
        ("connect", ("192.0.2.10", 40000)),
    ]
    assert {address for _, address in seen} == {("192.0.2.10", 40000)}


async def test_tls_handshake_comes_after_the_header(proxied: Start) -> None:
    server_ctx, client_ctx = tls_contexts("localhost")
    _, port = await proxied(["127.0.0.1"], ssl_context=server_ctx)
    raw = await trio.open_tcp_stream("127.0.0.1", port)
    await raw.send_all(V1)
    tls = trio.SSLStream(
        raw, client_ctx, server_hostname="localhost", https_compatible=True
    )
    async with tls:
        await tls.send_all(GET_CLOSE)
        answer = body_of(await read_until_closed(tls))
    assert answer["remote"] == ["192.0.2.10", 40000]
    assert answer["tls"] in ("TLSv1.2", "TLSv1.3")


async def test_unix_socket_sender(nursery: trio.Nursery, tmp_path: Path) -> None:
    server = Server(who)
    path = str(tmp_path / "s")
    await nursery.start(
        functools.partial(
            server.serve_unix, path, proxy_protocol=ProxyProtocol(["unix"])
        )
    )
    sock = trio.socket.socket(socket.AF_UNIX)
    await sock.connect(path)
    async with trio.SocketStream(sock) as stream:
        await stream.send_all(V1 + GET_CLOSE)
        answer = body_of(await read_until_closed(stream))
    assert answer["remote"] == ["192.0.2.10", 40000]
    await server.shutdown(grace=0)


# -- refusals --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (GET_CLOSE, "invalid"),  # a trusted sender must send a header
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n" + GET_CLOSE, "invalid"),
        (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\xff\xff" + b"\0" * 64, "too-large"),
        (b"PROXY UNKNOWN" + b" " * 120, "too-large"),
        (b"", "closed"),
        (b"PROXY TCP4 1.2.3.4", "closed"),  # closed inside the header
    ],
)
async def test_trusted_sender_with_a_bad_header_is_closed_without_a_byte(
    proxied: Start, data: bytes, reason: str
) -> None:
    reported: list[str] = []
    policy = ProxyProtocol(["127.0.0.1"], on_reject=reported.append)
    _, port = await proxied(policy, limits=Limits(max_connections=1))
    assert await ask(port, data) == b""
    assert policy.rejections == {reason: 1}
    assert reported == [reason]
    # The refused connection gave its place back (max_connections=1).
    assert body_of(await ask(port, V1 + GET_CLOSE))["remote"][0] == "192.0.2.10"


async def test_header_timeout(
    proxied: Start, autojump_clock: trio.testing.MockClock
) -> None:
    policy = ProxyProtocol(["127.0.0.1"], timeout=3)
    _, port = await proxied(policy)
    for first_bytes in (b"", b"PROXY TCP4 "):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(first_bytes)
            start = trio.current_time()
            assert await read_until_closed(stream) == b""
            assert trio.current_time() - start == pytest.approx(3)
    assert policy.rejections == {"timeout": 2}


async def test_untrusted_peer_is_plain_http_and_its_header_is_not_believed(
    proxied: Start,
) -> None:
    policy = ProxyProtocol(["10.0.0.0/8"])
    _, port = await proxied(policy)
    answer = body_of(await ask(port, GET_CLOSE))
    assert answer["remote"] == answer["peer"]
    assert answer["command"] is None
    assert (await ask(port, V1 + GET_CLOSE)).startswith(b"HTTP/1.1 400 ")
    v2 = encode_proxy_header(2, ("192.0.2.1", 1), ("192.0.2.2", 2))
    assert (await ask(port, v2 + GET_CLOSE)).startswith(b"HTTP/1.1 400 ")
    assert not policy.rejections


async def test_rejections_are_logged(
    proxied: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hijack.proxy")
    _, port = await proxied(["127.0.0.1"])
    await ask(port, b"garbage\r\n")
    record = next(r for r in caplog.records if r.name == "hijack.proxy")
    assert record.levelno == logging.WARNING
    assert "not a PROXY protocol header" in record.getMessage()


async def test_shutdown_while_a_header_is_awaited(nursery: trio.Nursery) -> None:
    server = Server(who)
    serve = functools.partial(
        server.serve_tcp, 0, proxy_protocol=ProxyProtocol(["127.0.0.1"])
    )
    listeners = await nursery.start(serve)
    port = listeners[0].socket.getsockname()[1]
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"PROXY ")
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(5):
            await server.shutdown(grace=1)
        assert await read_until_closed(stream) == b""


# -- the header sent upstream -------------------------------------------------------


async def first_bytes_server(
    nursery: trio.Nursery, size: int
) -> tuple[int, trio.MemoryReceiveChannel[bytes]]:
    """A TCP server that reports the first ``size`` bytes of each connection
    and then echoes."""
    send, receive = trio.open_memory_channel[bytes](10)

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            await send.send(await read_exactly(stream, size))
            while data := await stream.receive_some():
                await stream.send_all(data)

    return await start_upstream(nursery, serve), receive


@pytest.mark.parametrize("version", [1, 2])
async def test_connect_tunnel_sends_the_client_upstream(
    proxied: Start,
    nursery: trio.Nursery,
    version: int,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hijack.connect")
    expected = encode_proxy_header(
        version,  # type: ignore[arg-type]
        ("192.0.2.10", 40000),
        ("198.51.100.1", 443),
    )
    upstream_port, first = await first_bytes_server(nursery, len(expected))
    proxy = ConnectProxy(
        ConnectPolicy(allowed_ports={upstream_port}, allow=["127.0.0.1"]),
        send_proxy_protocol=version,  # type: ignore[arg-type]
    )
    _, port = await proxied(["127.0.0.1"], handler=proxy)
    with capture_log("hijack.connect") as log:
        await tunnel_through(port, upstream_port, expected, first)
        await log.logged.wait()
    assert log.records[0].client == "192.0.2.10:40000"  # type: ignore[attr-defined]


async def tunnel_through(
    port: int,
    upstream_port: int,
    expected: bytes,
    first: trio.MemoryReceiveChannel[bytes],
) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            V1
            + f"CONNECT 127.0.0.1:{upstream_port} HTTP/1.1\r\nHost: x\r\n\r\nping".encode()
        )
        answer = await read_until(stream, b"ping")
        assert answer.endswith(b"\r\n\r\nping"), answer
        assert await first.receive() == expected


async def test_tcp_upgrade_sends_the_socket_client_when_no_header_came(
    nursery: trio.Nursery, start_server: Any
) -> None:
    """No PROXY protocol in: the header out names the socket's client, and
    the address it reached (this server)."""
    probe = encode_proxy_header(1, ("127.0.0.5", 65535), ("127.0.0.1", 65535))
    upstream_port, first = await first_bytes_server(nursery, len(probe) + 64)
    _, port = await start_server(
        TCPUpgrade(("127.0.0.1", upstream_port), send_proxy_protocol=1)
    )
    async with await connect_from("127.0.0.5", "127.0.0.1", port) as stream:
        client_port = stream.socket.getsockname()[1]
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n"
            b"Upgrade: tcp\r\n\r\n" + b"x" * 64
        )
        with trio.fail_after(5):
            received = await first.receive()
    expected = f"PROXY TCP4 127.0.0.5 127.0.0.1 {client_port} {port}\r\n".encode()
    assert received == expected + b"x" * (len(probe) + 64 - len(expected))


async def test_a_broken_on_reject_hook_is_logged_not_fatal(
    proxied: Start, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(reason: str) -> None:
        raise RuntimeError("metrics down")

    policy = ProxyProtocol(["127.0.0.1"], on_reject=broken)
    _, port = await proxied(policy)
    assert await ask(port, b"garbage\r\n") == b""
    assert body_of(await ask(port, V1 + GET_CLOSE))["remote"][0] == "192.0.2.10"
    assert any("on_reject hook" in r.getMessage() for r in caplog.records)


async def header_server(
    nursery: trio.Nursery,
) -> tuple[int, trio.MemoryReceiveChannel[ProxyHeader]]:
    """A TCP server that parses the PROXY header each connection begins
    with, reports it, and echoes what follows."""
    send, receive = trio.open_memory_channel[ProxyHeader](10)

    async def serve(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            while (parsed := parse_proxy_header(data)) is None:
                data += await stream.receive_some()
            header, size = parsed
            await send.send(header)
            if data[size:]:
                await stream.send_all(data[size:])
            while data := await stream.receive_some():
                await stream.send_all(data)

    return await start_upstream(nursery, serve), receive


@pytest.mark.parametrize("version", [1, 2])
async def test_websocket_bridge_sends_the_client_upstream(
    nursery: trio.Nursery, start_server: Any, version: int
) -> None:
    from hijack.client.forward import open_tunnel
    from hijack.upgrades.wsbridge import WebSocketBridge

    upstream_port, first = await header_server(nursery)
    bridge = WebSocketBridge(("127.0.0.1", upstream_port), send_proxy_protocol=version)  # type: ignore[arg-type]
    _, port = await start_server(bridge)
    async with await open_tunnel(
        f"ws://127.0.0.1:{port}/", None, "websocket"
    ) as tunnel:
        await tunnel.send_all(b"ping")
        assert await read_exactly(tunnel, 4) == b"ping"
        header = await first.receive()
    assert header.version == version
    assert isinstance(header.source, tuple) and header.source[0] == "127.0.0.1"
    assert header.destination == ("127.0.0.1", port)


async def test_a_health_check_reset_after_its_local_header_is_not_a_request(
    proxied: Start,
) -> None:
    """HAProxy's plain TCP check with send-proxy-v2: connect, a LOCAL
    header, a reset, often before the server looked at the socket. That is
    a closed connection (rejections["closed"], DEBUG), not an HTTP request
    answered 400 in the access log at every check."""
    happened: list[str] = []
    done = trio.Event()

    def on_reject(reason: str) -> None:
        happened.append(f"rejected: {reason}")
        done.set()

    def on_request(record: object) -> None:
        happened.append(f"request: {record}")
        done.set()

    policy = ProxyProtocol(["127.0.0.1"], on_reject=on_reject)
    _, port = await proxied(policy, server_kw={"on_request": on_request})
    local = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    # Blocking calls, no checkpoint: the reset is in before the accept.
    with socket.create_connection(("127.0.0.1", port)) as check:
        check.sendall(local)
        check.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with trio.fail_after(5):
        await done.wait()
    assert happened == ["rejected: closed"]
    assert policy.rejections["closed"] == 1
