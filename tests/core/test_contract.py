"""What a new user hit (issue 12, section 1), each through the public API:
a 101 to a request that did not ask to upgrade, the client's SNI, and how a
hijacked TLS connection ends (close_notify both ways)."""

from __future__ import annotations

import functools
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import trio

from hijack import Connection, HijackError, Request, Response, Server, relay

from ..conftest import StartServer
from ..helpers import read_until, read_until_closed, start_upstream, tls_contexts

UPGRADE = Response(101, {"connection": "upgrade", "upgrade": "echo"})
Handler = Callable[[Request], Awaitable[Response | None]]
SNICallback = Callable[[ssl.SSLObject, str | None, ssl.SSLContext], None]


# -- a 101 to a request without Upgrade ---------------------------------------


def upgrade_or_plain_answer(refusals: list[str]) -> Handler:
    """A handler that tries to answer 101; when hijack refuses (the test
    expects it to), it records why and answers 200 "plain answer"."""

    async def handler(request: Request) -> Response | None:
        try:
            await request.hijack(UPGRADE)
        except HijackError as exc:
            refusals.append(str(exc))
            return Response(200, body=b"plain answer")
        return None  # pragma: no cover - the bug: hijacked, 101 sent

    return handler


async def test_101_without_upgrade_is_refused_and_the_exchange_stays_usable(
    start_server: StartServer,
) -> None:
    refusals: list[str] = []
    _, port = await start_server(upgrade_or_plain_answer(refusals))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        # Two requests on one connection: the refusal leaves it keep-alive.
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        await stream.send_all(request)
        first = await read_until(stream, b"plain answer")
        await stream.send_all(request)
        second = await read_until(stream, b"plain answer")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert len(refusals) == 2
    assert "no Upgrade header" in refusals[0]


async def test_101_to_http10_is_refused(start_server: StartServer) -> None:
    """RFC 9110 7.8: a server ignores Upgrade in an HTTP/1.0 request."""
    refusals: list[str] = []
    _, port = await start_server(upgrade_or_plain_answer(refusals))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"plain answer")
    assert refusals == ["an HTTP/1.0 request cannot be upgraded (RFC 9110 7.8)"]


# -- TLS: SNI and close_notify -------------------------------------------------


class TLS:
    """A CA, a server context for ``localhost`` and ``sni.example``, and a
    standard (not https-compatible) client that trusts it."""

    def __init__(self) -> None:
        self.server_context, self.client_context = tls_contexts(
            "localhost", "sni.example", "127.0.0.1"
        )

    async def connect(
        self, port: int, server_hostname: str = "localhost"
    ) -> trio.SSLStream[trio.SocketStream]:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(
            tcp, self.client_context, server_hostname=server_hostname
        )
        await stream.do_handshake()
        return stream


@pytest.fixture
def tls() -> TLS:
    return TLS()


StartTLS = Callable[[Handler], Awaitable[int]]


@pytest.fixture
async def start_tls_server(
    nursery: trio.Nursery, no_leaks: None, tls: TLS
) -> AsyncIterator[StartTLS]:
    """``port = await start_tls_server(handler)``: HTTPS on 127.0.0.1."""
    servers: list[Server] = []

    async def start(handler: Handler) -> int:
        server = Server(handler)
        servers.append(server)
        serve = functools.partial(server.serve_tcp, 0, ssl_context=tls.server_context)
        listeners = await nursery.start(serve)
        port: int = listeners[0].socket.getsockname()[1]
        return port

    yield start
    for server in servers:
        await server.shutdown(grace=0)


async def server_name_of(tls: TLS, port: int, hostname: str) -> bytes:
    stream = await tls.connect(port, hostname)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await read_until(stream, b"<end>")
    return answer.rpartition(b"\r\n\r\n")[2].removesuffix(b"<end>")


async def echo_server_name(request: Request) -> Response:
    tls = request.connection.tls
    assert tls is not None
    return Response(200, body=repr(tls.server_name).encode() + b"<end>")


async def test_tls_info_has_the_clients_sni(
    tls: TLS, start_tls_server: StartTLS
) -> None:
    port = await start_tls_server(echo_server_name)
    assert await server_name_of(tls, port, "sni.example") == b"'sni.example'"
    assert await server_name_of(tls, port, "localhost") == b"'localhost'"
    # A client that connects by IP address sends no SNI (RFC 6066 3).
    assert await server_name_of(tls, port, "127.0.0.1") == b"None"


def recording_sni_callback(seen: list[str | None]) -> SNICallback:
    """A user's own SNI callback: it records the names it is called with."""

    def users_callback(
        ssl_object: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        seen.append(server_name)

    return users_callback


async def test_sni_callback_of_the_user_still_runs(
    tls: TLS, start_tls_server: StartTLS
) -> None:
    seen: list[str | None] = []
    users_callback = recording_sni_callback(seen)
    tls.server_context.sni_callback = users_callback
    port = await start_tls_server(echo_server_name)
    assert await server_name_of(tls, port, "sni.example") == b"'sni.example'"
    assert seen == ["sni.example"]


async def test_http_close_over_tls_sends_close_notify(
    tls: TLS, start_tls_server: StartTLS
) -> None:
    """RFC 9112 9.8: a server that closes says so with close_notify; a
    close-delimited body (HTTP/1.0) would be indistinguishable from a cut
    one without it."""

    async def handler(request: Request) -> Response:
        async def body() -> AsyncIterator[bytes]:
            yield b"all of it"

        return Response(200, body=body())

    port = await start_tls_server(handler)
    stream = await tls.connect(port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.0\r\n\r\n")
        # A truncation raises BrokenResourceError here instead.
        answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nall of it")


async def test_closing_a_hijacked_tls_stream_sends_close_notify(
    tls: TLS, start_tls_server: StartTLS
) -> None:
    """The client reads a clean EOF (close_notify), not a truncation, both
    when the handler closes the stream and when the server does for it."""

    async def handler(request: Request) -> Response | None:
        hijacked = await request.hijack(UPGRADE)
        await hijacked.send_all(b"bye")
        if request.path == "/close":
            await hijacked.aclose()
        return None  # else the server closes it as the handler returns

    port = await start_tls_server(handler)
    for path in (b"/close", b"/return"):
        stream = await tls.connect(port)
        async with stream:
            await stream.send_all(
                b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
                b"Connection: upgrade\r\nUpgrade: echo\r\n\r\n"
            )
            # A truncation raises BrokenResourceError here instead.
            received = await read_until_closed(stream)
        assert received.endswith(b"\r\n\r\nbye"), path


async def test_the_relay_ends_a_tls_side_with_close_notify(
    tls: TLS, start_tls_server: StartTLS, nursery: trio.Nursery
) -> None:
    """The upstream says goodbye and closes: the relay closes the TLS side
    (it cannot half-close), and the client must see a clean end."""

    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"bye")

    upstream_port = await start_upstream(nursery, upstream)

    async def handler(request: Request) -> Response | None:
        hijacked = await request.hijack(UPGRADE)
        await relay(hijacked, await trio.open_tcp_stream("127.0.0.1", upstream_port))
        return None

    port = await start_tls_server(handler)
    stream = await tls.connect(port)
    async with stream:
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n"
        )
        # A truncation raises BrokenResourceError here instead.
        received = await read_until_closed(stream)
    assert received.endswith(b"\r\n\r\nbye")


async def test_a_user_sni_callback_set_after_start_is_chained_too(
    tls: TLS, start_tls_server: StartTLS
) -> None:
    seen: list[str | None] = []
    users_callback = recording_sni_callback(seen)
    port = await start_tls_server(echo_server_name)
    assert await server_name_of(tls, port, "localhost") == b"'localhost'"
    tls.server_context.sni_callback = users_callback  # replaces the server's
    assert await server_name_of(tls, port, "sni.example") == b"'sni.example'"
    assert seen == ["sni.example"]


async def test_a_peers_close_notify_is_told_apart_from_a_cut(
    tls: TLS, start_tls_server: StartTLS
) -> None:
    endings: dict[str, str] = {}
    done = trio.Event()

    async def handler(request: Request) -> Response | None:
        hijacked = await request.hijack(UPGRADE)
        async with hijacked:
            try:
                while await hijacked.receive_some():
                    pass
                endings[request.path] = "eof"
            except trio.BrokenResourceError:
                endings[request.path] = "cut"
        if len(endings) == 2:
            done.set()
        return None

    port = await start_tls_server(handler)
    for path in (b"/clean", b"/cut"):
        stream = await tls.connect(port)
        await stream.send_all(
            b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n"
            b"Connection: upgrade\r\nUpgrade: echo\r\n\r\nsome data"
        )
        await read_until(stream, b"\r\n\r\n")
        if path == b"/clean":
            await stream.aclose()  # close_notify, then FIN
        else:
            await stream.transport_stream.aclose()  # FIN without close_notify
            await trio.aclose_forcefully(stream)
    await done.wait()
    assert endings == {"/clean": "eof", "/cut": "cut"}


async def test_websocket_over_tls_closes_cleanly(
    tls: TLS, start_tls_server: StartTLS, caplog: pytest.LogCaptureFixture
) -> None:
    """A WebSocket closing over TLS, where the hijacked stream cannot
    half-close: the close frame, then close_notify, and nothing logged."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from hijack.upgrades.websocket import WebSocket, websocket_handler

    async def one_echo(ws: WebSocket) -> None:
        await ws.send(await ws.receive())  # then `async with ws` closes: 1000

    port = await start_tls_server(websocket_handler(one_echo))

    def client() -> tuple[str | bytes, int | None]:
        url = f"wss://localhost:{port}/"
        with connect(url, ssl=tls.client_context, proxy=None, open_timeout=10) as ws:
            ws.send("hi")
            echoed = ws.recv(timeout=10)
            try:
                ws.recv(timeout=10)
            except ConnectionClosed as exc:
                return echoed, exc.rcvd.code if exc.rcvd else None
        raise AssertionError("the server did not close")  # pragma: no cover

    with caplog.at_level("WARNING"):
        assert await trio.to_thread.run_sync(client) == ("hi", 1000)
    assert not [r for r in caplog.records if r.name.startswith("hijack")]


# -- the registry and the one shutdown signal -----------------------------------


async def test_counters_add_up_and_every_connection_shares_one_shutdown_event(
    start_server: StartServer,
) -> None:
    hijacked_connections: list[Connection] = []
    taken = trio.Event()
    release = trio.Event()

    async def handler(request: Request) -> Response | None:
        if request.path == "/hijack":
            hijacked = await request.hijack()
            hijacked_connections.append(request.connection)
            taken.set()
            async with hijacked:
                await release.wait()
            return None
        return Response(200, body=b"ok")

    server, port = await start_server(handler)
    idle = await trio.open_tcp_stream("127.0.0.1", port)
    await idle.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_until(idle, b"ok")
    tunnel = await trio.open_tcp_stream("127.0.0.1", port)
    await tunnel.send_all(b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
    await taken.wait()
    assert server.open_http_connections == 1
    assert server.open_hijacked_connections == 1
    assert len(server.connections) == 2
    first, second = server.connections
    assert first.shutdown_requested is second.shutdown_requested
    assert not first.shutdown_requested.is_set()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.shutdown, 10)
        await hijacked_connections[0].shutdown_requested.wait()
        # The idle connection is closed at once; the hijacked one is its
        # owner's until it closes.
        assert await read_until_closed(idle) == b""
        await trio.testing.wait_all_tasks_blocked()
        assert server.open_http_connections == 0
        assert server.open_hijacked_connections == 1
        release.set()
    assert server.connections == []
    await idle.aclose()
    await tunnel.aclose()
