"""WebSocket upgrade: end to end with the real `websockets` client (sync, in
a thread) and raw sockets, plus unit tests of WebSocket over memory streams."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import logging
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.exceptions import InvalidStatus
from websockets.protocol import OPEN
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from hijack import Connection, ConnState, Request, Response
from hijack.upgrades.websocket import (
    ClientProtocol,
    ConnectionClosed,
    WebSocket,
    make_echo_handler,
    websocket_handler,
)
from hijack.upgrades.websocket._websocket import MAX_OWED

from ..conftest import StartServer
from ..helpers import (
    ask,
    parse_responses,
    read_response,
    read_until_closed,
)
from ..wsclient import (
    BytesMessage,
    Client,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3 sample
KEY_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
MiB = 1024 * 1024
WS_URI = parse_uri("ws://127.0.0.1/")


# -- helpers -----------------------------------------------------------------


async def in_client(
    port: int, body: Callable[[ClientConnection], Any], **kw: Any
) -> Any:
    """Run ``body(ws)`` with a `websockets` sync client in a thread."""

    def run() -> Any:
        with connect(
            f"ws://127.0.0.1:{port}/", proxy=None, open_timeout=10, **kw
        ) as ws:
            return body(ws)

    return await trio.to_thread.run_sync(run)


def close_code_after(ws: ClientConnection, *messages: Any) -> tuple[int, str]:
    """Send ``messages``, then read until the server closes; the close frame
    the client received."""
    try:
        for message in messages:
            ws.send(message)
        for _ in range(10):
            ws.recv(timeout=10)
    except ClientClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code, exc.rcvd.reason
    raise AssertionError("the server did not close")


def upgrade_request(
    *,
    method: str = "GET",
    key: str | None = KEY,
    version: str | None = "13",
    upgrade: str | None = "websocket",
    connection: str | None = "Upgrade",
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [f"{method} / HTTP/1.1", "Host: 127.0.0.1"]
    for name, value in (
        ("Upgrade", upgrade),
        ("Connection", connection),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", version),
    ):
        if value is not None:
            lines.append(f"{name}: {value}")
    lines.extend(extra)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def masked_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A client frame built by hand (for frames a client refuses to make)."""
    mask = b"\x01\x02\x03\x04"
    first = (0x80 if fin else 0) | opcode
    if len(payload) < 126:
        header = bytes([first, 0x80 | len(payload)])
    else:
        header = bytes([first, 0x80 | 126]) + struct.pack("!H", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


async def read_events(
    stream: trio.abc.ReceiveStream, client: Client, until: type[Event]
) -> list[Event]:
    """Feed what arrives to the test client until an ``until`` event."""
    events: list[Event] = []
    for _ in range(1000):
        if any(isinstance(e, until) for e in events):
            return events
        data = await stream.receive_some()
        if not data:
            break
        client.receive_data(bytes(data))
        events.extend(client.events())
    if any(isinstance(e, until) for e in events):
        return events
    raise AssertionError(f"no {until.__name__} in {events}")


async def echo(ws: WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


# -- end to end: echo and handshake -----------------------------------------


@pytest.mark.parametrize(
    "message", ["hello", b"\x00\xffbytes", "é" * (MiB // 2), b"\x01" * MiB]
)
async def test_echo_text_and_bytes(start_server: StartServer, message: Any) -> None:
    server, port = await start_server(make_echo_handler())

    def body(ws: ClientConnection) -> Any:
        ws.send(message)
        return ws.recv(timeout=10)

    assert await in_client(port, body) == message
    # The client closed with 1000: the server finished the handshake and
    # closed the hijacked stream.
    for _ in range(100):
        if server.open_hijacked_connections == 0:
            break
        await trio.testing.wait_all_tasks_blocked()
    assert server.open_hijacked_connections == 0


async def test_many_messages_both_ways(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler())

    def body(ws: ClientConnection) -> list[str]:
        for i in range(50):
            ws.send(f"m{i}")
        return [str(ws.recv(timeout=10)) for _ in range(50)]

    assert await in_client(port, body) == [f"m{i}" for i in range(50)]


async def test_handshake_response(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler())
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(upgrade_request())
        response, rest = await read_response(stream)
    headers = response.headers
    assert response.status == 101
    assert headers.get("upgrade", "").lower() == "websocket"
    assert headers.get("connection", "").lower() == "upgrade"
    assert headers.get("sec-websocket-accept") == KEY_ACCEPT
    # No compression is negotiated, and no subprotocol was asked for.
    assert "sec-websocket-extensions" not in headers
    assert "sec-websocket-protocol" not in headers
    assert rest == b""


async def test_handshake_accept_token_for_random_key(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler())
    key = base64.b64encode(bytes(range(16))).decode()
    headers = (await ask(port, upgrade_request(key=key))).headers
    expected = hashlib.sha1(
        (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()
    ).digest()
    assert headers.get("sec-websocket-accept") == base64.b64encode(expected).decode()


async def test_subprotocol_is_the_clients_first_supported(
    start_server: StartServer,
) -> None:
    chosen: list[str | None] = []

    async def app(ws: WebSocket) -> None:
        assert ws.connection is not None
        assert ws.connection.state is ConnState.HIJACKED
        chosen.append(ws.subprotocol)
        await ws.send(ws.path + "?" + ws.query)

    _, port = await start_server(websocket_handler(app, subprotocols=["a", "b"]))

    def body(ws: ClientConnection) -> tuple[str | None, Any]:
        return ws.subprotocol, ws.recv(timeout=10)

    def run() -> Any:
        with connect(
            f"ws://127.0.0.1:{port}/room?x=1",
            proxy=None,
            subprotocols=[Subprotocol("c"), Subprotocol("b"), Subprotocol("a")],
        ) as ws:
            return body(ws)

    assert await trio.to_thread.run_sync(run) == ("b", "/room?x=1")
    assert chosen == ["b"]


async def test_early_frames_in_the_handshake_packet(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler())
    client = Client()
    frames = client.send(TextMessage(data="early")) + client.send(
        BytesMessage(data=b"bird")
    )
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(upgrade_request() + frames)  # one packet
        response, rest = await read_response(stream)
        assert response.status == 101
        client.receive_data(rest)
        events = list(client.events())
        for _ in range(100):
            if len([e for e in events if isinstance(e, Message)]) >= 2:
                break
            client.receive_data(bytes(await stream.receive_some()))
            events.extend(client.events())
        messages = [e.data for e in events if isinstance(e, Message)]
        assert messages == ["early", b"bird"]
        await stream.send_all(client.send(CloseConnection(code=1000)))
        closes = await read_events(stream, client, CloseConnection)
        assert [e.code for e in closes if isinstance(e, CloseConnection)] == [1000]
        assert await read_until_closed(stream) == b""


# -- end to end: bad handshakes --------------------------------------------


async def test_wrong_version_is_426_with_supported_version(
    start_server: StartServer,
) -> None:
    _, port = await start_server(make_echo_handler())
    response = await ask(port, upgrade_request(version="8"))
    assert response.status == 426
    assert response.headers.get("sec-websocket-version") == "13"


@pytest.mark.parametrize(
    "request_bytes",
    [
        upgrade_request(key=None),
        upgrade_request(key="not base64!"),
        upgrade_request(key=base64.b64encode(b"short").decode()),
        upgrade_request(key=base64.b64encode(bytes(17)).decode()),
        upgrade_request(extra=(f"Sec-WebSocket-Key: {KEY}",)),  # two keys
        upgrade_request(method="POST", extra=("Content-Length: 0",)),
        upgrade_request(method="PUT"),
        upgrade_request(connection=None),
        upgrade_request(connection="keep-alive"),
        upgrade_request(upgrade="websocket", version=None),
        upgrade_request(extra=("Content-Length: 3",)) + b"abc",
    ],
    ids=[
        "no-key",
        "key-not-base64",
        "key-too-short",
        "key-too-long",
        "two-keys",
        "post",
        "put",
        "no-connection",
        "connection-without-upgrade",
        "no-version",
        "with-body",
    ],
)
async def test_bad_handshake_is_400(
    start_server: StartServer, request_bytes: bytes
) -> None:
    _, port = await start_server(make_echo_handler())
    assert (await ask(port, request_bytes)).status == 400


async def test_missing_upgrade_header_is_not_a_websocket(
    start_server: StartServer,
) -> None:
    """Without ``Upgrade: websocket`` the echo handler serves its page, and
    a handler that insists on a WebSocket answers 400."""
    _, port = await start_server(make_echo_handler())
    assert (await ask(port, upgrade_request(upgrade=None))).status == 200
    _, port = await start_server(websocket_handler(echo))
    assert (await ask(port, upgrade_request(upgrade=None))).status == 400


async def test_origin_allow_list(start_server: StartServer) -> None:
    _, port = await start_server(
        make_echo_handler(allowed_origins=["https://good.example"])
    )
    bad = upgrade_request(extra=("Origin: https://evil.example",))
    assert (await ask(port, bad)).status == 403
    assert (await ask(port, upgrade_request())).status == 403  # no Origin
    good = upgrade_request(extra=("Origin: https://GOOD.example",))
    assert (await ask(port, good)).status == 101

    def refused() -> int:
        try:
            ws = connect(
                f"ws://127.0.0.1:{port}/", proxy=None, origin=Origin("http://x")
            )
        except InvalidStatus as exc:
            return exc.response.status_code
        ws.close()
        raise AssertionError("connected")

    assert await trio.to_thread.run_sync(refused) == 403


async def test_origin_none_admits_clients_without_origin(
    start_server: StartServer,
) -> None:
    _, port = await start_server(
        make_echo_handler(allowed_origins=["https://good.example", None])
    )
    assert (await ask(port, upgrade_request())).status == 101


# -- end to end: limits, protocol errors, app errors, shutdown ---------------


async def test_oversized_message_closes_1009(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler(max_message_size=1000))

    def body(ws: ClientConnection) -> tuple[Any, tuple[int, str]]:
        ws.send("x" * 1000)  # at the limit: fine
        ok = ws.recv(timeout=10)
        return ok, close_code_after(ws, b"y" * 1001)

    ok, (code, _) = await in_client(port, body)
    assert ok == "x" * 1000
    assert code == 1009


async def test_oversized_fragmented_message_closes_1009(
    start_server: StartServer,
) -> None:
    _, port = await start_server(make_echo_handler(max_message_size=1000))

    def body(ws: ClientConnection) -> tuple[int, str]:
        return close_code_after(ws, ["a" * 400, "b" * 400, "c" * 400])

    assert (await in_client(port, body))[0] == 1009


async def test_oversized_multi_mib_message_closes_1009(
    start_server: StartServer,
) -> None:
    """The server stops at the limit and drains the rest: the client still
    gets the close frame (no reset)."""
    _, port = await start_server(make_echo_handler())

    def body(ws: ClientConnection) -> tuple[int, str]:
        return close_code_after(ws, b"z" * (4 * MiB))

    assert (await in_client(port, body, max_size=None))[0] == 1009


async def test_invalid_utf8_text_closes_1007(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler())

    def run() -> tuple[int, str]:
        with connect(f"ws://127.0.0.1:{port}/", proxy=None) as ws:
            ws.send("fine")
            assert ws.recv(timeout=10) == "fine"
            ws.send(b"bad \xff\xfe utf-8", text=True)
            return close_code_after(ws)

    assert (await trio.to_thread.run_sync(run))[0] == 1007


@pytest.mark.parametrize(
    "frame",
    [
        b"\x81\x05hello",  # unmasked client frame
        masked_frame(0x3, b"reserved opcode"),
        masked_frame(0x9, b"p", fin=False),  # fragmented control frame
        masked_frame(0x0, b"continuation of nothing"),
        bytes([0x80 | 0x40 | 0x1, 0x80 | 1]) + b"\0\0\0\0a",  # RSV1 unnegotiated
    ],
    ids=["unmasked", "reserved-opcode", "fragmented-ping", "bad-continuation", "rsv1"],
)
async def test_protocol_violation_closes_1002(
    start_server: StartServer, frame: bytes
) -> None:
    _, port = await start_server(make_echo_handler())
    client = Client()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(upgrade_request())
        response, rest = await read_response(stream)
        assert response.status == 101
        await stream.send_all(frame)
        client.receive_data(rest)
        events = await read_events(stream, client, CloseConnection)
        closes = [e for e in events if isinstance(e, CloseConnection)]
        assert closes[0].code == 1002
        # The server half-closed after its close frame: EOF, then it closes
        # when we do.
        assert await read_until_closed(stream) == b""


async def test_invalid_utf8_raw_frame_closes_1007(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler())
    client = Client()
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(upgrade_request() + masked_frame(0x1, b"\xc3\x28"))
        _, rest = await read_response(stream)
        client.receive_data(rest)
        events = await read_events(stream, client, CloseConnection)
        assert [e.code for e in events if isinstance(e, CloseConnection)] == [1007]


async def test_app_error_closes_1011_and_is_logged(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def app(ws: WebSocket) -> None:
        await ws.receive()
        raise ValueError("boom")

    handler = websocket_handler(app)
    handled = trio.Event()

    async def observed(request: Request) -> Response | None:
        response = await handler(request)
        handled.set()
        return response

    _, port = await start_server(observed)
    with caplog.at_level(logging.ERROR, logger="hijack"):
        code, _ = await in_client(port, lambda ws: close_code_after(ws, "hi"))
        await handled.wait()
    assert code == 1011
    assert any(
        r.exc_info and isinstance(r.exc_info[1], ValueError) for r in caplog.records
    )


async def test_graceful_shutdown_closes_1001(start_server: StartServer) -> None:
    server, port = await start_server(make_echo_handler())
    echoed = trio.Event()

    def body(ws: ClientConnection) -> tuple[int, str]:
        ws.send("hi")
        assert ws.recv(timeout=10) == "hi"
        trio.from_thread.run_sync(echoed.set)
        return close_code_after(ws)

    async with trio.open_nursery() as nursery:
        result: list[tuple[int, str]] = []

        async def client() -> None:
            result.append(await in_client(port, body))

        nursery.start_soon(client)
        await echoed.wait()
        await server.shutdown(grace=10)
    assert result[0][0] == 1001
    assert server.open_hijacked_connections == 0


# -- the echo page -----------------------------------------------------------


async def test_page_at_root_opens_a_websocket(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler())
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await read_until_closed(stream)
    [response], _ = parse_responses(data)
    body = response.body
    assert response.status == 200
    assert response.headers.get("content-type", "").startswith("text/html")
    assert b"<script>" in body
    assert b"new WebSocket(" in body
    assert b'location.host + "/"' in body


async def test_other_paths_are_404(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler())
    assert (await ask(port, b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")).status == 404
    ws_elsewhere = upgrade_request().replace(b"GET / ", b"GET /chat ")
    assert (await ask(port, ws_elsewhere)).status == 404


async def test_example_serves_page_and_echo(start_server: StartServer) -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "ws_echo.py"
    spec = importlib.util.spec_from_file_location("ws_echo", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    _, port = await start_server(example.handler)
    assert (await ask(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).status == 200

    def body(ws: ClientConnection) -> Any:
        ws.send("via example")
        return ws.recv(timeout=10)

    assert await in_client(port, body) == "via example"
    assert (await ask(port, upgrade_request(version="7"))).status == 426


# -- unit: WebSocket over memory streams ------------------------------------


class Peer:
    """The client side of a memory-stream WebSocket, driven frame by frame."""

    def __init__(self, stream: trio.StapledStream[Any, Any]) -> None:
        self.stream = stream
        self.proto = Client()

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.proto.send(event))

    async def until(self, kind: type[Event]) -> list[Event]:
        return await read_events(self.stream, self.proto, kind)


async def shut(ws: WebSocket, peer: Peer) -> None:
    """Close ``ws`` with the peer answering the closing handshake."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.close)
        events = await peer.until(CloseConnection)
        close = next(e for e in events if isinstance(e, CloseConnection))
        await peer.send(close.response())
    assert await read_until_closed(peer.stream) == b""


def pair(**options: Any) -> tuple[WebSocket, Peer, Connection]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    connection = Connection(1, server_stream)
    return (
        WebSocket(server_stream, connection, **options),
        Peer(client_stream),
        connection,
    )


async def test_unit_fragmented_message_is_reassembled() -> None:
    ws, peer, _ = pair()
    await peer.send(TextMessage(data="hel", message_finished=False))
    await peer.send(TextMessage(data="lo", message_finished=True))
    await peer.send(BytesMessage(data=b"\x00", message_finished=True))
    assert await ws.receive() == "hello"
    assert await ws.receive() == b"\x00"
    await shut(ws, peer)


async def test_unit_limit_counted_before_the_message_is_complete() -> None:
    """A frame announcing 10 MiB: the server closes 1009 after limit + 1
    bytes, without waiting for (or buffering) the rest."""
    ws, peer, _ = pair(max_message_size=100)
    header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 10 * MiB) + b"\0\0\0\0"
    await peer.stream.send_all(header + b"a" * 101)
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert info.value.code == 1009
    events = await peer.until(CloseConnection)
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1009]
    await peer.stream.aclose()  # EOF lets close() finish draining
    await ws.close()
    assert ws.close_code == 1009


async def test_unit_pings_are_answered_while_receiving() -> None:
    ws, peer, _ = pair()
    await peer.send(Ping(payload=b"are you there"))
    await peer.send(TextMessage(data="after ping"))
    assert await ws.receive() == "after ping"
    events = await peer.until(Pong)
    assert [e.payload for e in events if isinstance(e, Pong)] == [b"are you there"]
    await shut(ws, peer)


async def test_unit_ping_waits_for_its_pong() -> None:
    ws, peer, _ = pair()
    done = trio.Event()

    async def pinger() -> None:
        await ws.ping(b"p1")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger)
        events = await peer.until(Ping)
        ping = next(e for e in events if isinstance(e, Ping))
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        # A message arriving first is kept for receive().
        await peer.send(TextMessage(data="queued"))
        await peer.send(ping.response())
    assert done.is_set()
    assert await ws.receive() == "queued"
    await shut(ws, peer)


async def test_unit_send_while_another_task_receives() -> None:
    ws, peer, _ = pair()
    got: list[str | bytes] = []

    async def receiver() -> None:
        got.append(await ws.receive())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        await trio.testing.wait_all_tasks_blocked()
        await ws.send("from the server")
        events = await peer.until(TextMessage)
        assert [e.data for e in events if isinstance(e, TextMessage)] == [
            "from the server"
        ]
        await peer.send(TextMessage(data="from the client"))
    assert got == ["from the client"]
    await shut(ws, peer)


async def test_unit_peer_close_is_answered_and_reported() -> None:
    ws, peer, _ = pair()
    await peer.send(TextMessage(data="last"))
    await peer.send(CloseConnection(code=4000, reason="bye"))
    assert await ws.receive() == "last"  # messages before the close survive
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert (info.value.code, info.value.reason) == (4000, "bye")
    events = await peer.until(CloseConnection)
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [4000]
    assert await read_until_closed(peer.stream) == b""  # server closed TCP
    with pytest.raises(ConnectionClosed):
        await ws.send("too late")
    assert ws.closed


async def test_unit_async_for_ends_on_normal_close() -> None:
    ws, peer, _ = pair()
    await peer.send(TextMessage(data="a"))
    await peer.send(TextMessage(data="b"))
    await peer.send(CloseConnection(code=1000))
    assert [m async for m in ws] == ["a", "b"]


async def test_unit_connection_lost_is_1006() -> None:
    ws, peer, _ = pair()
    await peer.stream.aclose()
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert info.value.code == 1006
    with pytest.raises(ConnectionClosed):
        [m async for m in ws]


async def test_unit_close_gives_up_after_close_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ws, peer, _ = pair(close_timeout=3)
    start = trio.current_time()
    await ws.close(4001, "done")  # the peer never answers
    assert trio.current_time() - start == pytest.approx(3)
    events = await peer.until(CloseConnection)
    assert [(e.code, e.reason) for e in events if isinstance(e, CloseConnection)] == [
        (4001, "done")
    ]
    assert await read_until_closed(peer.stream) == b""


async def test_unit_close_rejects_bad_codes() -> None:
    ws, peer, _ = pair()
    with pytest.raises(ValueError):
        await ws.close(1006)
    with pytest.raises(ValueError):
        await ws.close(1000, "x" * 124)
    assert not ws.closed
    await shut(ws, peer)


async def test_unit_shutdown_inside_async_with_closes_1001() -> None:
    ws, peer, connection = pair()
    received: list[BaseException] = []

    async def app() -> None:
        async with ws:
            try:
                await ws.receive()
            except ConnectionClosed as exc:
                received.append(exc)
                raise

    async with trio.open_nursery() as nursery:
        nursery.start_soon(app)
        await trio.testing.wait_all_tasks_blocked()
        connection.shutdown_requested.set()
        events = await peer.until(CloseConnection)
        close = next(e for e in events if isinstance(e, CloseConnection))
        assert close.code == 1001
        await peer.send(close.response())
    assert isinstance(received[0], ConnectionClosed)
    assert received[0].code == 1001
    assert await read_until_closed(peer.stream) == b""


async def test_unit_send_after_shutdown_closes_1001() -> None:
    """Without ``async with`` a send or receive still sees the shutdown."""
    ws, peer, connection = pair(close_timeout=5)
    connection.shutdown_requested.set()

    async def answer() -> None:
        events = await peer.until(CloseConnection)
        close = next(e for e in events if isinstance(e, CloseConnection))
        await peer.send(close.response())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        with pytest.raises(ConnectionClosed) as info:
            await ws.send("hi")
    assert info.value.code == 1001


async def test_unit_async_with_exception_closes_1011() -> None:
    ws, peer, _ = pair(close_timeout=5)

    async def answer() -> None:
        events = await peer.until(CloseConnection)
        close = next(e for e in events if isinstance(e, CloseConnection))
        await peer.send(close.response())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        with pytest.raises(KeyError):
            async with ws:
                raise KeyError("app bug")
    assert ws.close_code == 1011


async def test_unit_cancelled_receive_loses_nothing() -> None:
    ws, peer, _ = pair()
    with trio.move_on_after(0) as scope:
        await ws.receive()
    assert scope.cancelled_caught
    await peer.send(TextMessage(data="still here"))
    assert await ws.receive() == "still here"
    await shut(ws, peer)


async def test_unit_reader_is_not_stuck_behind_a_blocked_sender() -> None:
    """A send blocked on a peer that does not read must not stop receive():
    the pong owed to a ping is sent by the sender once its write is done."""
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    ws = WebSocket(server_stream, Connection(1, server_stream))
    peer = Peer(client_stream)
    got: list[str | bytes] = []

    async def sender() -> None:
        await ws.send(b"big" * 1000)

    async def peer_sends() -> None:
        await peer.send(Ping(payload=b"p"))
        await peer.send(TextMessage(data="while you send"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(peer_sends)
        got.append(await ws.receive())  # the sender still holds the lock
        events = await peer.until(Pong)
    assert got == ["while you send"]
    assert [type(e) for e in events] == [BytesMessage, Pong]
    await shut(ws, peer)


async def test_unit_every_ping_gets_its_own_pong() -> None:
    """Pings are not coalesced (Autobahn 2.10, 2.11): three back to back
    get three pongs, in order, with their payloads."""
    ws, peer, _ = pair()
    for payload in (b"1", b"2", b"3"):
        await peer.send(Ping(payload=payload))
    await peer.send(TextMessage(data="after"))
    assert await ws.receive() == "after"
    events = await peer.until(Pong)
    while len([e for e in events if isinstance(e, Pong)]) < 3:
        events += await peer.until(Pong)
    assert [e.payload for e in events if isinstance(e, Pong)] == [b"1", b"2", b"3"]
    await shut(ws, peer)


async def test_unit_client_side_websocket_shares_the_api() -> None:
    """Over a ``ClientProtocol`` the same class is the client: it masks its
    frames (the server side would fail 1002 otherwise), and the closing
    handshake ends with both streams closed."""
    client_stream, server_stream = trio.testing.memory_stream_pair()
    protocol = ClientProtocol(WS_URI, state=OPEN)
    client = WebSocket(client_stream, protocol=protocol, close_timeout=5)
    server = WebSocket(server_stream, Connection(1, server_stream), close_timeout=5)
    with pytest.raises(RuntimeError):
        client.connection  # noqa: B018
    async with trio.open_nursery() as nursery:
        nursery.start_soon(echo, server)
        await client.send("text")
        await client.send(b"\x00bytes")
        assert await client.receive() == "text"
        assert await client.receive() == b"\x00bytes"
        await client.ping(b"client ping")
        await client.close(1000, "client done")
    assert client.close_code == 1000
    assert server.close_code == 1000
    with pytest.raises(ConnectionClosed):
        await client.send("late")


async def test_unit_close_between_fragments_is_honoured() -> None:
    """RFC 6455 5.4 lets control frames, close included, come between the
    fragments of a message (Autobahn 7.1.5): the close is answered with its
    own code, not failed with 1002; the unfinished message is dropped."""
    ws, peer, _ = pair()
    await peer.send(TextMessage(data="fragment1", message_finished=False))
    await peer.stream.send_all(masked_frame(0x8, (1000).to_bytes(2, "big")))
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert info.value.code == 1000
    events = await peer.until(CloseConnection)
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1000]
    assert await read_until_closed(peer.stream) == b""


async def test_unit_pongs_owed_to_a_peer_that_does_not_read_stay_bounded() -> None:
    """A peer floods pings and never reads: while a send is blocked on it,
    the pongs wait unsent; past ``MAX_OWED`` bytes of them the server stops
    reading (the peer's sends block: backpressure) instead of queueing
    without bound. Once the peer reads, every ping gets its pong."""
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    ws = WebSocket(server_stream, Connection(1, server_stream))
    peer = Peer(client_stream)
    pings = 2 * MAX_OWED // 127  # a pong with a 125-byte payload: 127 bytes
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for _ in range(pings):
            await peer.send(Ping(payload=b"p" * 125))
            sent += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.send, b"big" * 1000)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(ws.receive)
        nursery.start_soon(flood)
        await trio.testing.wait_all_tasks_blocked()
        assert sent * 127 <= MAX_OWED + 2 * 127, sent  # stopped at the bound
        pongs = 0
        while pongs < pings:
            events = await peer.until(Pong)
            pongs += sum(isinstance(e, Pong) for e in events)
        assert pongs == pings
        await trio.testing.wait_all_tasks_blocked()  # receive() idle, reading
        nursery.cancel_scope.cancel()  # it got no message: cancel it
    await shut(ws, peer)


async def test_unit_ping_raises_when_the_peer_closes_first() -> None:
    """A ping waiting for its pong learns of the peer's close (its code),
    and a ping on a closed WebSocket raises at once."""
    ws, peer, _ = pair()
    raised: list[ConnectionClosed] = []

    async def pinger() -> None:
        with pytest.raises(ConnectionClosed) as info:
            await ws.ping(b"unanswered")
        raised.append(info.value)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(pinger)
        await peer.until(Ping)
        await peer.send(CloseConnection(code=4001, reason="no pong for you"))
    assert (raised[0].code, raised[0].reason) == (4001, "no pong for you")
    events = await peer.until(CloseConnection)
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [4001]
    with pytest.raises(ConnectionClosed):
        await ws.ping()
