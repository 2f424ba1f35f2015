"""Promises of the README that had no test, checked through hijack.testing."""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from hijack import HijackError, Request, Response
from hijack.testing import MemoryListener, open_test_client
from hijack.upgrades.websocket import ConnectionClosed, WebSocket, websocket_handler

from ..helpers import parse_responses, read_until_closed

pytestmark = pytest.mark.usefixtures("no_leaks")

UPGRADE = {"connection": "upgrade", "upgrade": "echo"}  # request and 101 alike


async def test_hijack_with_a_response_after_start_response_is_refused() -> None:
    errors: list[Exception] = []

    async def handler(request: Request) -> None:
        await request.start_response(Response(200))
        await request.send_data(b"partial")
        try:
            await request.hijack(Response(101, UPGRADE))
        except HijackError as exc:
            errors.append(exc)
        await request.send_data(b" and the rest")  # still a normal response

    async with open_test_client(handler) as client:
        response = await client.request("GET", "/", headers=UPGRADE)
    assert (response.status, response.body) == (200, b"partial and the rest")
    assert [str(e) for e in errors] == ["a response was already started; hijack() bare"]


async def test_bare_hijack_after_start_response_flushes_the_head_first() -> None:
    async def handler(request: Request) -> None:
        await request.start_response(Response(200, {"x-kind": "stream"}))
        async with await request.hijack() as stream:
            await stream.send_all(b"raw bytes")

    async with open_test_client(handler) as client, client.connection() as conn:
        await conn.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_until_closed(conn.stream)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert b"x-kind: stream" in head
    assert rest == b"raw bytes"  # after the hand-over the handler owns framing


async def hijack_refused(head: Response) -> str:
    """``hijack(head)`` in a handler that then answers 400 itself: check that
    the 400 is the only answer (nothing of ``head`` went out) and return the
    HijackError's message."""
    errors: list[HijackError] = []

    async def handler(request: Request) -> Response:
        try:
            await request.hijack(head)
        except HijackError as exc:
            errors.append(exc)
        return Response(400, body=b"fallback")

    async with open_test_client(handler) as client:
        response = await client.request("GET", "/", headers=UPGRADE)
    assert (response.status, response.body) == (400, b"fallback")
    (error,) = errors
    return str(error)


async def test_hijack_response_with_a_body_is_refused_before_writing() -> None:
    refused = Response(101, UPGRADE, b"body")
    assert await hijack_refused(refused) == "a hijack response carries no body"


@pytest.mark.parametrize("bad", ["a\rb", "a\nb", "a\x00b"], ids=["CR", "LF", "NUL"])
@pytest.mark.parametrize("where", ["value", "name", "reason"])
async def test_cr_lf_nul_in_a_hijack_head_are_refused(bad: str, where: str) -> None:
    if where == "value":
        refused = Response(101, {**UPGRADE, "x-bad": bad})
    elif where == "name":
        refused = Response(101, {**UPGRADE, bad: "v"})
    else:
        refused = Response(101, UPGRADE, reason=bad)
    assert repr(bad.encode())[1:-1] in await hijack_refused(refused)


async def test_handler_returning_none_without_responding_gets_500(
    caplog: pytest.LogCaptureFixture, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(request: Request) -> None:
        return None

    async with open_test_client(handler) as client, client.connection() as conn:
        response = await conn.request("GET", "/")
        await conn.connection.wait_closed()  # after a lingering close
    assert response.status == 500
    assert response.headers.get("connection") == "close"
    assert "handler returned None without responding" in caplog.text


async def test_error_after_start_response_truncates_and_closes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> None:
        await request.start_response(Response(200))
        await request.send_data(b"half")
        raise RuntimeError("app bug mid-body")

    async with open_test_client(handler) as client, client.connection() as conn:
        await conn.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_until_closed(conn.stream)
        await conn.connection.wait_closed()
    # The head and the chunk sent went out; the body never ends (no last
    # chunk): the client sees a truncated response, not a complete one.
    responses, rest = parse_responses(data)
    assert responses == []
    assert rest.startswith(b"HTTP/1.1 200 ") and rest.endswith(b"4\r\nhalf\r\n")
    assert "app bug mid-body" in caplog.text


async def test_cancelled_websocket_send_aborts_with_1006(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    seen: dict[str, object] = {}

    async def app(ws: WebSocket) -> None:
        with trio.move_on_after(1) as scope:
            await ws.send(b"x" * 1_000_000)  # the client does not read
        seen["cancelled"] = scope.cancelled_caught
        seen["code"] = ws.close_code

    # Lockstep streams: a send blocks until the peer reads, as a full socket.
    listener = MemoryListener(trio.testing.lockstep_stream_pair)
    async with (
        open_test_client(websocket_handler(app), listener=listener) as client,
        client.websocket("/") as ws,
    ):
        await trio.sleep(2)  # past the server's cancel, without reading
        # Part of a frame, then the end: no close frame, so 1006.
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await ws.receive()
        assert closed.value.code == ws.close_code == 1006
    assert seen == {"cancelled": True, "code": 1006}
