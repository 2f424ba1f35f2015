"""HTTP/1.1 behaviour through real loopback sockets, checked byte by byte."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
import trio

from hijack import HTTPError, Limits, Request, Response

from ..conftest import StartServer
from ..helpers import exchange, parse_responses, read_until, read_until_closed


async def hello(request: Request) -> Response:
    body = await request.read()
    return Response(200, {"content-type": "text/plain"}, b"echo:" + body)


def bodies(data: bytes) -> list[bytes]:
    """The bodies of the complete responses in ``data``."""
    return [r.body for r in parse_responses(data)[0]]


async def test_keep_alive_and_pipelining_in_order(start_server: StartServer) -> None:
    _, port = await start_server(hello)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n1"
            b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n22"
        )
        data = await read_until(stream, b"echo:22")
        await stream.send_all(
            b"POST /c HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\n3"
        )
        data += await read_until_closed(stream)
    responses, _ = parse_responses(data)
    assert [r.body for r in responses] == [b"echo:1", b"echo:22", b"echo:3"]
    assert responses[0].headers.get("server") == "hijack"
    assert "GMT" in responses[0].headers.get("date", "")


async def test_chunked_request_body_is_streamed(start_server: StartServer) -> None:
    seen: list[bytes] = []

    async def handler(request: Request) -> Response:
        async for chunk in request.body():
            seen.append(chunk)
        return Response(200, body=str(sum(map(len, seen))).encode())

    _, port = await start_server(handler)
    data = await exchange(
        port,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    assert b"".join(seen) == b"hello world"
    assert bodies(data)[0] == b"11"


async def test_async_iterator_body_is_chunked(start_server: StartServer) -> None:
    async def parts() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part

    async def handler(request: Request) -> Response:
        return Response(200, body=parts())

    _, port = await start_server(handler)
    data = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert b"transfer-encoding: chunked\r\n" in data.lower()
    assert bodies(data)[0] == b"one two three"


async def test_http10_gets_close_delimited_stream(start_server: StartServer) -> None:
    async def parts() -> AsyncIterator[bytes]:
        yield b"old "
        yield b"client"

    async def handler(request: Request) -> Response:
        assert request.http_version == "1.0"
        return Response(200, body=parts())

    _, port = await start_server(handler)
    data = await exchange(port, b"GET / HTTP/1.0\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding" not in data.lower()
    assert data.endswith(b"\r\n\r\nold client")


async def test_head_has_length_but_no_body(start_server: StartServer) -> None:
    _, port = await start_server(hello)
    data = await exchange(
        port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert b"content-length: 5\r\n" in data
    assert data.endswith(b"\r\n\r\n")


async def test_expect_100_continue(start_server: StartServer) -> None:
    _, port = await start_server(hello)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
        )
        interim = await read_until(stream, b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 \r\n\r\n"
        await stream.send_all(b"data")
        data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"echo:data")


async def test_body_over_limit_is_413_without_100(start_server: StartServer) -> None:
    called = False

    async def handler(request: Request) -> Response:
        nonlocal called
        called = True
        return Response(200)

    _, port = await start_server(handler, limits=Limits(max_body_size=10))
    data = await exchange(
        port,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b" 100 " not in data
    assert not called


async def test_chunked_body_over_limit_is_413(start_server: StartServer) -> None:
    _, port = await start_server(hello, limits=Limits(max_body_size=10))
    data = await exchange(
        port,
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"8\r\n12345678\r\n8\r\n12345678\r\n0\r\n\r\n",
    )
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"connection: close" in data


async def test_handler_exception_is_500_and_logged(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request) -> Response:
        raise ZeroDivisionError("boom")

    _, port = await start_server(handler)
    with caplog.at_level(logging.ERROR, logger="hijack"):
        data = await exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 500 ")
    records = [r for r in caplog.records if r.exc_info]
    assert records and records[0].exc_info is not None
    assert records[0].exc_info[0] is ZeroDivisionError
    # The server still serves.
    data = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 500 ")


async def test_http_error_from_handler(start_server: StartServer) -> None:
    async def handler(request: Request) -> Response:
        raise HTTPError(404, "no such thing")

    _, port = await start_server(handler)
    data = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert data.endswith(b"no such thing\n")


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", b"400"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400"),  # no Host
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", b"505"),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"414"),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40000 + b"\r\n\r\n", b"431"),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999\r\n\r\n",
            b"413",
        ),
    ],
)
async def test_bad_requests_get_status_and_close(
    start_server: StartServer, raw: bytes, status: bytes
) -> None:
    _, port = await start_server(hello)
    data = await exchange(port, raw)
    assert data.startswith(b"HTTP/1.1 " + status + b" ")
    assert b"connection: close" in data
    data = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 200 ")


async def test_content_length_with_transfer_encoding_answers_then_closes(
    start_server: StartServer,
) -> None:
    _, port = await start_server(hello)
    data = await exchange(
        port,
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\nab\r\n0\r\n\r\n"
        b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert bodies(data) == [b"echo:ab"]
    assert b"connection: close" in data


async def test_streaming_with_start_response(start_server: StartServer) -> None:
    async def handler(request: Request) -> None:
        await request.start_response(Response(200, {"content-type": "text/plain"}))
        for i in range(3):
            await request.send_data(b"%d," % i)

    _, port = await start_server(handler)
    data = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert bodies(data)[0] == b"0,1,2,"


async def test_http_error_carries_headers(start_server: StartServer) -> None:
    async def handler(request: Request) -> Response:
        raise HTTPError(401, headers={"www-authenticate": 'Basic realm="x"'})

    _, port = await start_server(handler)
    data = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 401 Unauthorized\r\n")
    assert b'\r\nwww-authenticate: Basic realm="x"\r\n' in data


async def test_error_answer_survives_a_client_still_sending(
    start_server: StartServer,
) -> None:
    """Lingering close: the 431 reaches a client that is still pushing a huge
    head, instead of being destroyed by a reset from unread input."""
    _, port = await start_server(hello)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:

        async def push() -> None:
            head = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 512 * 1024
            with contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(head)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(push)
            data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert data.endswith(b"431 Request Header Fields Too Large\n")
