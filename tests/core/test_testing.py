"""hijack.testing: the test kit drives the real server over memory streams."""

from __future__ import annotations

import ssl
import sys

import pytest
import trio
from websockets.exceptions import InvalidHandshake
from websockets.utils import accept_key

from hijack import (
    Connection,
    ConnState,
    Limits,
    PeerCredentials,
    PeerInfo,
    Request,
    Response,
    Server,
    TLSInfo,
)
from hijack.testing import Peer, UpgradeRefusedError, open_test_client
from hijack.upgrades.websocket import (
    ConnectionClosed,
    WebSocket,
    make_echo_handler,
    websocket_handler,
)

from ..helpers import tls_contexts

pytestmark = pytest.mark.usefixtures("no_leaks")


UPGRADE = {"connection": "upgrade", "upgrade": "echo"}


async def app(request: Request) -> Response | None:
    if request.path == "/echo" and "upgrade" in request.headers.tokens("connection"):
        stream = await request.hijack(
            Response(101, {"connection": "upgrade", "upgrade": "echo"})
        )
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data)
        return None
    if request.method == "CONNECT":
        if request.target != "allowed:443":
            return Response(403, body=b"no\n")
        stream = await request.hijack(Response(200))
        async with stream:
            await stream.send_all(b"tunnel to " + request.target.encode())
        return None
    if request.path == "/who":
        conn = request.connection
        tls = conn.tls
        return Response(
            200,
            body=repr(
                (conn.remote_address, conn.peer_credentials, tls and tls.version)
            ).encode(),
        )
    body = await request.read()
    return Response(200, {"x-method": request.method}, body or b"hi")


async def test_request_response() -> None:
    async with open_test_client(app) as client:
        response = await client.request("POST", "/x", body=b"data")
        assert (response.status, response.body) == (200, b"data")
        assert response.headers.get("x-method") == "POST"
        assert response.headers.get("content-length") == "4"


async def test_keep_alive_states_and_context() -> None:
    seen: list[ConnState] = []

    def on_connect(connection: Connection) -> None:
        connection.context["user"] = "alice"

    async def handler(request: Request) -> Response:
        return Response(200, body=request.connection.context["user"].encode())

    server = Server(
        handler, on_state=lambda c, s: seen.append(s), on_connect=on_connect
    )
    async with open_test_client(server) as client, client.connection() as conn:
        first = await conn.request("GET", "/")
        second = await conn.request("GET", "/", headers={"connection": "close"})
        assert first.body == second.body == b"alice"
        await conn.connection.wait_closed()
    N, A, I, C = ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE, ConnState.CLOSED  # noqa: E741
    assert seen == [N, A, I, A, C]


async def test_upgrade_replays_bytes_that_came_with_the_101() -> None:
    async with open_test_client(app) as client:
        head, stream = await client.upgrade("/echo", "echo")
        async with stream:
            assert head.status == 101
            assert head.headers.get("upgrade") == "echo"
            await stream.send_all(b"ping")
            assert await stream.receive_some() == b"ping"
            assert client.server.open_hijacked_connections == 1
            await stream.send_eof()
            assert await stream.receive_some() == b""


async def test_connect_and_refused_connect() -> None:
    async with open_test_client(app) as client:
        head, stream = await client.connect("allowed:443")
        async with stream:
            assert head.status == 200
            assert await stream.receive_some() == b"tunnel to allowed:443"
        with pytest.raises(UpgradeRefusedError) as refused:
            await client.connect("elsewhere:443")
        assert (refused.value.response.status, refused.value.response.body) == (
            403,
            b"no\n",
        )


async def test_fake_peer_identity() -> None:
    creds = PeerCredentials(pid=1, uid=1000, gid=1000)
    tls = TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", "http/1.1", "example.com", None)
    peer = Peer(remote_address=("203.0.113.9", 4242), peer_credentials=creds, tls=tls)
    async with open_test_client(app, peer=peer) as client:
        response = await client.request("GET", "/who")
        assert response.text() == repr((("203.0.113.9", 4242), creds, "TLSv1.3"))
        anonymous = await client.request("GET", "/who", peer=Peer())
        assert anonymous.text() == repr((None, None, None))


async def test_real_tls_handshake_over_memory() -> None:
    server_context, client_context = tls_contexts("testserver")
    async with open_test_client(
        app, ssl_context=server_context, client_ssl_context=client_context
    ) as client:
        response = await client.request("GET", "/who")
        assert response.status == 200
        assert "TLSv1.3" in response.text()


async def test_limits_and_timeouts_run_on_the_mock_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = Limits(head_timeout=3600)
    async with (
        open_test_client(app, limits=limits) as client,
        client.connection() as conn,
    ):
        start = trio.current_time()
        await conn.send_raw(b"GET / HTTP/1.1\r\n")
        response = await conn.read_response()
        assert response.status == 408
        assert trio.current_time() - start == pytest.approx(3600)


async def test_websocket_echo_and_close_code() -> None:
    async with (
        open_test_client(make_echo_handler()) as client,
        client.websocket("/") as ws,
    ):
        assert ws.response.status == 101
        await ws.send("hello")
        assert await ws.receive() == "hello"
        await ws.send(b"\x00\x01")
        assert await ws.receive() == b"\x00\x01"
        await ws.close(1000)
        assert ws.close_code == 1000
        with pytest.raises(ConnectionClosed):
            await ws.receive()


async def test_websocket_refused_handshake() -> None:
    async with open_test_client(app) as client:
        with pytest.raises(UpgradeRefusedError) as refused:
            async with client.websocket("/plain"):
                pass  # pragma: no cover - the handshake fails
        assert refused.value.response.status == 200


async def test_pytest_plugin_imports_nothing_until_used() -> None:
    # pytest loads entry-point plugins in every project where hijack is
    # installed: loading ours must not import hijack, trio or h11.
    code = (
        "import sys, pytest_hijack; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('hijack', 'trio', 'h11', 'websockets')))"
    )
    done = await trio.run_process([sys.executable, "-c", code], capture_stdout=True)
    assert done.stdout.strip() == b"[]"


async def test_100_continue_is_skipped_and_headers_as_pairs() -> None:
    async with open_test_client(app) as client:
        response = await client.request(
            "PUT",
            "/",
            headers=[("Host", "example.org"), ("Expect", "100-continue")],
            body=b"payload",
        )
    assert (response.status, response.body) == (200, b"payload")


async def test_server_closing_without_an_answer_is_an_error() -> None:
    async def handler(request: Request) -> None:
        stream = await request.hijack()
        await stream.aclose()  # no answer at all

    async with open_test_client(handler) as client:
        with pytest.raises(trio.BrokenResourceError, match="closed before answering"):
            await client.request("GET", "/")


async def test_client_after_shutdown_cannot_connect() -> None:
    async with open_test_client(app) as client:
        await client.server.shutdown()
        with pytest.raises(trio.BrokenResourceError, match="not accepting"):
            await client.request("GET", "/")


async def test_option_mistakes_are_type_errors() -> None:
    with pytest.raises(TypeError, match="Server"):
        async with open_test_client(Server(app), limits=Limits()):
            pass  # pragma: no cover - refused before
    with pytest.raises(TypeError, match="client_ssl_context"):
        async with open_test_client(app, ssl_context=ssl.create_default_context()):
            pass  # pragma: no cover - refused before


async def test_hijacked_memory_stream_is_a_full_stream() -> None:
    async def handler(request: Request) -> None:
        async with await request.hijack(Response(101, UPGRADE)) as stream:
            await stream.wait_send_all_might_not_block()
            await stream.send_all(b"ready")
            assert await stream.receive_some() == b""

    async with open_test_client(handler) as client:
        _, stream = await client.upgrade("/", "echo")
        async with stream:
            assert await stream.receive_some() == b"ready"
            await stream.send_eof()
            assert await stream.receive_some() == b""


async def test_websocket_subprotocol_headers_and_raw_frames() -> None:
    seen: list[tuple[str | None, str | None]] = []

    async def chat(ws: WebSocket) -> None:
        seen.append((ws.subprotocol, ws.headers.get("x-token")))
        async for message in ws:
            await ws.send(message)

    handler = websocket_handler(chat, subprotocols=["v2", "v1"])
    async with (
        open_test_client(handler) as client,
        client.websocket(
            "/chat", subprotocols=["v1"], headers={"X-Token": "t", "Host": "h"}
        ) as ws,
    ):
        assert ws.subprotocol == "v1"
        # An unmasked text frame: a client must mask, so the server fails
        # the connection with 1002.
        await ws.send_raw(b"\x81\x02hi")
        with pytest.raises(ConnectionClosed):
            await ws.receive()
        assert ws.close_code == 1002
    assert seen == [("v1", "t")]


async def test_websocket_101_with_a_wrong_accept_is_refused() -> None:
    async def handler(request: Request) -> None:
        headers = {**UPGRADE, "upgrade": "websocket", "sec-websocket-accept": "no"}
        async with await request.hijack(Response(101, headers)):
            pass

    async with open_test_client(handler) as client:
        with pytest.raises(InvalidHandshake):
            async with client.websocket("/"):
                pass  # pragma: no cover - the handshake fails


async def test_websocket_frame_in_the_same_read_as_the_101() -> None:
    """A server that speaks first may send its first frame in the same packet
    as the 101: the handshake must leave that frame for the WebSocket."""

    async def raw_server(request: Request) -> None:
        accept = accept_key(request.headers.get("sec-websocket-key", ""))
        stream = await request.hijack()
        async with stream:
            await stream.send_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n"
                b"\x81\x07welcome" % accept.encode()  # one write, one read
            )
            await stream.receive_some()

    async with (
        open_test_client(raw_server) as client,
        client.websocket("/") as ws,
    ):
        assert await ws.receive() == "welcome"


async def test_send_raw_then_read_response_again_and_again() -> None:
    """On a kept connection, each raw request gets its own answer read (the
    second pair used to raise "the server closed mid-response"), pipelined
    ones too, and a request() after them still works."""

    async def echo_path(request: Request) -> Response:
        return Response(200, {}, request.path.encode())

    async with open_test_client(echo_path) as client, client.connection() as conn:
        for path in ("/a", "/b"):
            await conn.send_raw(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await conn.read_response()).body == path.encode()
        await conn.send_raw(
            b"GET /c HTTP/1.1\r\nHost: x\r\n\r\nGET /d HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert (await conn.read_response()).body == b"/c"
        assert (await conn.read_response()).body == b"/d"
        assert (await conn.request("GET", "/e")).body == b"/e"
        await conn.send_raw(b"GET /f HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await conn.read_response()).body == b"/f"


class _DescribedStream(trio.abc.HalfCloseableStream):
    """A stream of the test's own (not the kit's) that says who is at its
    other end, through the core's public describe_peer()."""

    def __init__(self, inner: trio.abc.HalfCloseableStream, peer: PeerInfo) -> None:
        self.inner = inner
        self.peer = peer
        self.asked: list[Connection] = []

    def describe_peer(self, connection: Connection) -> PeerInfo:
        self.asked.append(connection)
        return self.peer

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _OneStream(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream: trio.abc.Stream | None = stream

    async def accept(self) -> trio.abc.Stream:
        stream, self.stream = self.stream, None
        if stream is None:
            await trio.sleep_forever()
        assert stream is not None
        return stream

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_any_stream_may_describe_its_peer(nursery: trio.Nursery) -> None:
    """The core learns a socketless stream's peer through the public
    describe_peer() (what the test kit's own streams use too), once, before
    the NEW hook sees the connection."""
    seen_by_hook: list[object] = []

    async def handler(request: Request) -> Response:
        connection = request.connection
        text = f"{connection.remote_address} {connection.peer_address}"
        return Response(200, {}, text.encode())

    client, server_end = trio.testing.memory_stream_pair()
    peer = PeerInfo(remote_address=("192.0.2.7", 4242), local_address=("x", 1))
    stream = _DescribedStream(server_end, peer)
    server = Server(
        handler,
        on_state=lambda c, state: seen_by_hook.append(c.remote_address),
    )
    await nursery.start(server.serve_listeners, [_OneStream(stream)])
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answer = b""
    while chunk := await client.receive_some():
        answer += chunk
    assert answer.endswith(b"('192.0.2.7', 4242) ('192.0.2.7', 4242)")
    assert len(stream.asked) == 1 and stream.asked[0].local_address == ("x", 1)
    assert seen_by_hook[0] == ("192.0.2.7", 4242)  # NEW, already described
    await server.shutdown()
