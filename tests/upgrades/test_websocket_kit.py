"""WebSocket server behaviour driven through hijack.testing's client: the
keepalive, pings both ways, shutdown, misuse, fragmented messages."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from hijack import Request, Response
from hijack.testing import TestClient, open_test_client
from hijack.upgrades.websocket import (
    ConnectionClosed,
    WebSocket,
    accept_websocket,
    websocket_handler,
)

pytestmark = pytest.mark.usefixtures("no_leaks")


async def echo(ws: WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


async def test_keepalive_pings_a_reading_client_and_fails_a_silent_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = websocket_handler(echo, ping_interval=20, ping_timeout=20)
    async with open_test_client(handler) as client:
        # A client that reads answers every ping: a minute later it is open.
        async with client.websocket("/") as ws:
            with trio.move_on_after(60):
                await ws.receive()
            await ws.send("still here")
            assert await ws.receive() == "still here"
        # A client that does not read never answers: 1011 after 20 + 20 s.
        async with client.websocket("/") as ws:
            start = trio.current_time()
            await trio.sleep(45)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.receive()
            assert closed.value.code == ws.close_code == 1011
            assert ws.close_reason == "keepalive ping timeout"
            assert trio.current_time() - start == pytest.approx(45)


async def test_pings_both_ways() -> None:
    pinged = trio.Event()

    async def app(ws: WebSocket) -> None:
        await ws.ping(b"server")  # returns when the client's pong came back
        pinged.set()
        await echo(ws)

    async with (
        open_test_client(websocket_handler(app)) as client,
        client.websocket("/") as ws,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ws.receive)  # the client reads: it answers
            await pinged.wait()
            nursery.cancel_scope.cancel()
        await ws.ping(b"client")  # reads the server's pong
        with pytest.raises(ValueError, match="at most 125"):
            await ws.ping(b"x" * 126)
        await ws.ping(b"no wait", wait=False)
        await ws.send("after pings")
        assert await ws.receive() == "after pings"


async def test_second_ping_with_the_same_payload_is_refused() -> None:
    release = trio.Event()

    async def app(ws: WebSocket) -> None:
        await release.wait()  # reads nothing, so answers no ping, until then
        await echo(ws)

    async with (
        open_test_client(websocket_handler(app)) as client,
        client.websocket("/") as ws,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(ws.ping, b"p")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ValueError, match="already waiting"):
            await ws.ping(b"p")
        release.set()  # the first ping gets its pong and returns


async def test_server_shutdown_says_going_away() -> None:
    async with (
        open_test_client(websocket_handler(echo)) as client,
        client.websocket("/") as ws,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.server.shutdown, 5)
            with pytest.raises(ConnectionClosed) as closed:
                await ws.receive()
        assert closed.value.code == 1001
        assert "1001" in repr(ws)


async def test_fragmented_messages_are_reassembled() -> None:
    async with (
        open_test_client(websocket_handler(echo)) as client,
        client.websocket("/") as ws,
    ):
        # Masked frames by hand (key 0: the payload is unchanged).
        def frame(first: int, payload: bytes) -> bytes:
            return bytes([first, 0x80 | len(payload)]) + b"\0\0\0\0" + payload

        await ws.send_raw(frame(0x02, b"bin") + frame(0x80, b"ary"))  # BINARY
        assert await ws.receive() == b"binary"
        await ws.send_raw(frame(0x01, b"te") + frame(0x80, b"xt"))  # TEXT
        assert await ws.receive() == "text"


async def test_misuse_is_refused_with_a_clear_error() -> None:
    errors: list[str] = []

    async def app(ws: WebSocket) -> None:
        try:
            await ws.fail(1005)  # reserved: never sent on the wire
        except ValueError as exc:
            errors.append(str(exc))
        try:
            async with ws:  # websocket_handler already entered it
                pass  # pragma: no cover - refused
        except RuntimeError as exc:
            errors.append(str(exc))

    async with open_test_client(websocket_handler(app)) as client:
        await closed_by_server(client)
    assert errors == [
        "close code 1005 cannot be sent",
        "this WebSocket is already entered",
    ]


async def test_bad_options_are_refused() -> None:
    errors: list[str] = []

    async def handler(request: Request) -> Response | None:
        try:
            await accept_websocket(request, max_message_size=0)
        except ValueError as exc:
            errors.append(str(exc))
        return Response(400)

    async with open_test_client(handler) as client:
        response = await client.request(
            "GET",
            "/",
            headers={
                "connection": "upgrade",
                "upgrade": "websocket",
                "sec-websocket-version": "13",
                "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
            },
        )
    assert response.status == 400
    assert errors == ["max_message_size must be >= 1"]


async def closed_by_server(client: TestClient) -> int | None:
    async with client.websocket("/") as ws:
        with pytest.raises(ConnectionClosed):
            await ws.receive()
        return ws.close_code
