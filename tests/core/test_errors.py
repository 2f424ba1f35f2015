"""One error vocabulary (issue 12, section 2): what a handler can meet is an
HTTPError, a ClientDisconnected or a UsageError (HijackError among them),
and every error answer is built by HTTPError.response()."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from hijack import (
    ClientDisconnected,
    Connection,
    Hijacked,
    HijackError,
    HTTPError,
    Request,
    Response,
    UsageError,
    format_address,
    join_host_port,
    split_host_port,
)
from hijack.upgrades.connect import ConnectProxy
from hijack.upgrades.tcp import TCPUpgrade
from hijack.upgrades.wsbridge import WebSocketBridge

from ..conftest import StartServer
from ..helpers import read_until, read_until_closed, reset, tls_contexts

Attempt = Callable[[Request], Awaitable[object]]


# -- ClientDisconnected -----------------------------------------------------------


async def test_read_raises_client_disconnected_when_the_client_resets(
    start_server: StartServer,
) -> None:
    caught: list[BaseException] = []
    reading = trio.Event()
    done = trio.Event()

    async def handler(request: Request) -> Response | None:
        reading.set()
        try:
            await request.read()
        except Exception as exc:  # what a careless handler would write
            caught.append(exc)
            raise
        finally:
            done.set()
        return None  # pragma: no cover - the body never ends

    _, port = await start_server(handler)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nab"
    )
    await reading.wait()
    reset(stream)
    await done.wait()
    assert len(caught) == 1
    assert type(caught[0]) is ClientDisconnected
    assert isinstance(caught[0], trio.BrokenResourceError)


async def test_send_data_raises_client_disconnected_when_the_client_resets(
    start_server: StartServer,
) -> None:
    caught: list[BaseException] = []
    client_gone = trio.Event()
    done = trio.Event()

    async def handler(request: Request) -> Response | None:
        await request.start_response(Response(200))
        await client_gone.wait()
        try:
            for _ in range(1000):  # bounded: a reset socket fails at once
                await request.send_data(b"x" * 65536)
        except Exception as exc:
            caught.append(exc)
            raise
        finally:
            done.set()
        return None

    _, port = await start_server(handler)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_until(stream, b"\r\n\r\n")
    reset(stream)
    client_gone.set()
    await done.wait()
    assert [type(exc) for exc in caught] == [ClientDisconnected]


# -- UsageError: each misuse, and the exchange stays usable --------------------


async def bad_hijack_head(request: Request) -> object:
    return await request.hijack(Response(101, {"upgrade": "echo\r\nx-evil: 1"}))


async def hijack_with_body(request: Request) -> object:
    return await request.hijack(Response(101, {"upgrade": "echo"}, b"body"))


async def send_data_first(request: Request) -> None:
    await request.send_data(b"x")


async def start_a_1xx(request: Request) -> None:
    await request.start_response(Response(101, {"upgrade": "echo"}))


async def bad_header_value(request: Request) -> None:
    await request.start_response(Response(200, {"x-bad": "a\r\nb"}))


@pytest.mark.parametrize(
    ("attempt", "error"),
    [
        (bad_hijack_head, HijackError),
        (hijack_with_body, HijackError),
        (send_data_first, UsageError),
        (start_a_1xx, UsageError),
        (bad_header_value, UsageError),
    ],
)
async def test_misuse_raises_a_usage_error_and_nothing_is_sent(
    start_server: StartServer, attempt: Attempt, error: type[UsageError]
) -> None:
    caught: list[BaseException] = []

    async def handler(request: Request) -> Response:
        try:
            await attempt(request)
        except Exception as exc:
            caught.append(exc)
        return Response(200, body=b"still fine")

    _, port = await start_server(handler)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade, close\r\n"
            b"Upgrade: echo\r\n\r\n"
        )
        answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nstill fine")
    assert len(caught) == 1
    assert type(caught[0]) is error
    assert isinstance(caught[0], UsageError)


async def test_a_2xx_to_connect_without_hijack_is_a_usage_error(
    start_server: StartServer,
) -> None:
    caught: list[BaseException] = []

    async def handler(request: Request) -> Response:
        try:
            await request.start_response(Response(200))
        except Exception as exc:
            caught.append(exc)
        return Response(403, body=b"no")

    _, port = await start_server(handler)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = await read_until(stream, b"no")
    assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert [type(exc) for exc in caught] == [UsageError]


async def test_calls_after_the_handler_returned_are_usage_errors(
    start_server: StartServer,
) -> None:
    kept: list[Request] = []

    async def handler(request: Request) -> Response:
        kept.append(request)
        return Response(200, body=b"ok")

    _, port = await start_server(handler)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await read_until_closed(stream)
    with pytest.raises(UsageError, match="handler already returned"):
        await kept[0].read()
    with pytest.raises(UsageError, match="handler already returned"):
        await kept[0].start_response(Response(200))
    with pytest.raises(HijackError, match="handler already returned"):
        await kept[0].hijack()


async def test_send_eof_on_tls_is_a_usage_error() -> None:
    server_ctx, _ = tls_contexts("localhost")
    left, _right = trio.testing.memory_stream_pair()
    transport = trio.SSLStream(left, server_ctx, server_side=True)
    hijacked = Hijacked(transport, b"", Connection(1, transport))
    assert not hijacked.can_send_eof
    with pytest.raises(UsageError, match="cannot half-close"):
        await hijacked.send_eof()
    await trio.aclose_forcefully(hijacked)


# -- one builder of error answers ------------------------------------------------


def test_http_error_response() -> None:
    response = HTTPError(404, "no such page", {"x-why": "gone"}).response()
    assert response.status == 404
    assert response.headers == [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"x-why", b"gone"),
    ]
    assert response.body == b"404 Not Found\nno such page\n"
    assert HTTPError(500).response().body == b"500 Internal Server Error\n"


@pytest.mark.parametrize(
    ("handler", "status", "detail", "header"),
    [
        (ConnectProxy(), 405, b"this is a CONNECT proxy", b"allow: CONNECT"),
        (
            TCPUpgrade(("127.0.0.1", 9)),
            426,
            b"this endpoint needs Connection: Upgrade, Upgrade: tcp",
            b"Upgrade: tcp",
        ),
        (
            WebSocketBridge(("127.0.0.1", 9)),
            426,
            b"this is a WebSocket bridge: connect with a WebSocket client",
            b"Upgrade: websocket",
        ),
    ],
)
async def test_upgrades_answer_through_the_one_builder(
    start_server: StartServer,
    handler: Callable[[Request], Awaitable[Response | None]],
    status: int,
    detail: bytes,
    header: bytes,
) -> None:
    _, port = await start_server(handler)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await read_until_closed(stream)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status)
    assert header in head.split(b"\r\n")
    assert b"content-type: text/plain; charset=utf-8" in head.split(b"\r\n")
    expected = HTTPError(status, detail.decode()).response().body
    assert body == expected


# -- host:port, once --------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "text"),
    [("127.0.0.1", 80, "127.0.0.1:80"), ("::1", 443, "[::1]:443"), ("a.b", 1, "a.b:1")],
)
def test_join_and_split_host_port(host: str, port: int, text: str) -> None:
    assert join_host_port(host, port) == text
    assert split_host_port(text) == (host, port)


@pytest.mark.parametrize(
    "text", ["8080", ":80", "host:", "host:x", "host:0", "h:70000", "::1:80", "[::1"]
)
def test_split_host_port_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(text)


def test_split_host_port_port_zero_when_allowed() -> None:
    assert split_host_port("[::1]:0", allow_zero_port=True) == ("::1", 0)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (("::1", 8080, 0, 0), "[::1]:8080"),
        (("10.0.0.1", 5), "10.0.0.1:5"),
        ("/run/app.sock", "/run/app.sock"),
        ("", "unix"),
        (None, "-"),
    ],
)
def test_format_address(address: object, text: str) -> None:
    assert format_address(address) == text
