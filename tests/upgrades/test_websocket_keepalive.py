"""Keepalive on the wire: a server behind `websocket_handler` with
``ping_interval`` / ``ping_timeout``, over an in-memory listener, time on
``autojump_clock``. The client side reads frames with `websockets`'
Sans-I/O protocol and answers pings only when told to."""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from websockets.frames import CLOSE, PING, Close, Frame
from websockets.protocol import Protocol, Side

from hijack import Server
from hijack.testing import MemoryListener
from hijack.upgrades.websocket import WebSocket, websocket_handler

from ..helpers import read_response
from ..hijack_process import run_hijack
from .test_websocket import upgrade_request
from .test_websocket_compression import ECHO

MemoryServer = Callable[..., Awaitable[tuple[Server, MemoryListener]]]


async def open_client(listener: MemoryListener) -> tuple[trio.abc.Stream, Protocol]:
    stream = await listener.connect()
    return stream, await handshake(stream)


async def handshake(stream: trio.abc.Stream) -> Protocol:
    """Upgrade ``stream``; the client's Sans-I/O protocol, fed any frame
    bytes that came behind the 101."""
    await stream.send_all(upgrade_request())
    response, rest = await read_response(stream)
    assert response.status == 101
    protocol = Protocol(Side.CLIENT)
    if rest:
        protocol.receive_data(rest)
    return protocol


async def next_frame(stream: trio.abc.Stream, protocol: Protocol) -> Frame | None:
    """The next frame from the server; None at EOF. Fails after an hour of
    (virtual) time: without it, a server that never sends would hang."""
    with trio.fail_after(3600):
        return await _next_frame(stream, protocol)


async def _next_frame(stream: trio.abc.Stream, protocol: Protocol) -> Frame | None:
    while True:
        for event in protocol.events_received():
            assert isinstance(event, Frame)
            return event
        data = await stream.receive_some()
        if not data:
            return None
        protocol.receive_data(data)


async def receive_forever(ws: WebSocket) -> None:
    async for _ in ws:
        pass


async def never_read(ws: WebSocket) -> None:
    await trio.sleep_forever()


@pytest.mark.parametrize("app", [receive_forever, never_read])
async def test_silent_peer_is_closed_1011_and_released(
    autojump_clock: trio.testing.MockClock,
    memory_server: MemoryServer,
    app: Callable[[WebSocket], Awaitable[None]],
) -> None:
    """A ping after ``ping_interval``; no pong within ``ping_timeout``: a
    close frame 1011, then the server closes the stream, and the server
    counts no hijacked connection any more. Whether the app reads or not."""
    handler = websocket_handler(app, ping_interval=30, ping_timeout=10)
    server, listener = await memory_server(handler)
    stream, protocol = await open_client(listener)
    start = trio.current_time()

    ping = await next_frame(stream, protocol)
    assert ping is not None and ping.opcode is PING
    assert trio.current_time() - start == pytest.approx(30)
    # We do not answer.
    close = await next_frame(stream, protocol)
    assert close is not None and close.opcode is CLOSE
    assert trio.current_time() - start == pytest.approx(40)
    assert Close.parse(close.data).code == 1011
    assert await next_frame(stream, protocol) is None  # the stream is closed
    await trio.testing.wait_all_tasks_blocked()
    assert server.open_hijacked_connections == 0
    await stream.aclose()


@pytest.mark.parametrize("app", [receive_forever, never_read])
async def test_answering_peer_stays_connected(
    autojump_clock: trio.testing.MockClock,
    memory_server: MemoryServer,
    app: Callable[[WebSocket], Awaitable[None]],
) -> None:
    """A peer that answers every ping is pinged every ``ping_interval`` and
    never closed, even when the app never reads (the ping reads itself)."""
    handler = websocket_handler(app, ping_interval=30, ping_timeout=10)
    server, listener = await memory_server(handler)
    stream, protocol = await open_client(listener)
    start = trio.current_time()
    ping_times: list[float] = []
    while len(ping_times) < 10:
        frame = await next_frame(stream, protocol)
        assert frame is not None and frame.opcode is PING, frame
        ping_times.append(trio.current_time() - start)
        for data in protocol.data_to_send():  # the pong the protocol owes
            await stream.send_all(data)
    # One every 30 s, for 300 s; still connected.
    assert ping_times == pytest.approx([30.0 * (i + 1) for i in range(10)])
    assert server.open_hijacked_connections == 1
    await stream.aclose()


async def test_ping_interval_none_sends_no_ping(
    autojump_clock: trio.testing.MockClock, memory_server: MemoryServer
) -> None:
    handler = websocket_handler(receive_forever, ping_interval=None)
    _, listener = await memory_server(handler)
    stream, protocol = await open_client(listener)
    with pytest.raises(trio.TooSlowError):
        frame = await next_frame(stream, protocol)
        raise AssertionError(f"got {frame}")
    await stream.aclose()


async def test_hijack_echo_ping_flags() -> None:
    """``hijack echo --ping-interval 0.2 --ping-timeout 0.2``, real process,
    real clock: a client that never answers gets a ping, then close 1011,
    then EOF (with the 20 s default it would run into the test time limit)."""
    flags = ["--ping-interval", "0.2", "--ping-timeout", "0.2"]
    async with (
        run_hijack([*ECHO, *flags], stop_signal=signal.SIGINT) as echo,
        await trio.open_tcp_stream("127.0.0.1", await echo.port()) as stream,
    ):
        protocol = await handshake(stream)
        ping = await _next_frame(stream, protocol)
        assert ping is not None and ping.opcode is PING
        close = await _next_frame(stream, protocol)
        assert close is not None and close.opcode is CLOSE
        assert Close.parse(close.data).code == 1011
        assert await _next_frame(stream, protocol) is None
