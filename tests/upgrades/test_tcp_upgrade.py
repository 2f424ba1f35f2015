"""``Upgrade: tcp`` end to end: raw client -> hijack server -> loopback upstream."""

from __future__ import annotations

import re
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from hijack import Request, Response
from hijack.upgrades.tcp import TCPUpgrade

from ..conftest import StartServer
from ..helpers import (
    ask,
    capture_log,
    read_exactly,
    read_head,
    read_until_closed,
    start_upstream,
)

UpstreamHandler = Callable[[trio.SocketStream], Awaitable[None]]

UPGRADE = (
    b"GET /stream HTTP/1.1\r\nHost: test\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)
HEAD_101 = re.compile(
    rb"HTTP/1\.1 101 Switching Protocols\r\n"
    rb"Connection: Upgrade\r\n"
    rb"Upgrade: tcp\r\n"
    rb"date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n"
    rb"server: hijack\r\n"
    rb"\r\n"
)


class Recorder:
    """An upstream that echoes and records what it received, and when EOF came."""

    def __init__(self) -> None:
        self.received = b""
        self.eof = trio.Event()

    async def __call__(self, stream: trio.SocketStream) -> None:
        async with stream:
            while data := await stream.receive_some():
                self.received += data
                await stream.send_all(data)
            self.eof.set()


@pytest.mark.parametrize(
    "headers",
    [
        b"Connection: Upgrade\r\nUpgrade: tcp\r\n",
        b"connection: keep-alive, UPGRADE\r\nupgrade: websocket, TCP\r\n",
    ],
)
async def test_upgrade_answers_101_then_relays_both_ways(
    nursery: trio.Nursery, start_server: StartServer, headers: bytes
) -> None:
    recorder = Recorder()
    upstream_port = await start_upstream(nursery, recorder)
    _, port = await start_server(TCPUpgrade(("127.0.0.1", upstream_port)))

    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(b"GET / HTTP/1.1\r\nHost: t\r\n" + headers + b"\r\n")
        head, rest = await read_head(client)
        assert HEAD_101.fullmatch(head), head
        assert rest == b""
        for message in (b"first", b"\x00\xff binary \r\n\r\n", b"x" * 100_000):
            await client.send_all(message)
            assert await read_exactly(client, len(message)) == message
    await recorder.eof.wait()
    assert recorder.received == b"first\x00\xff binary \r\n\r\n" + b"x" * 100_000


async def test_early_data_in_the_same_send_reaches_upstream_exactly(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    recorder = Recorder()
    upstream_port = await start_upstream(nursery, recorder)
    _, port = await start_server(TCPUpgrade(("127.0.0.1", upstream_port)))
    early = b"SSH-2.0-early\r\n\x00\x01GET / HTTP/1.1\r\n\r\n"

    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(UPGRADE + early)
        head, rest = await read_head(client)
        assert HEAD_101.fullmatch(head)
        assert await read_exactly(client, len(early), rest) == early
        await client.send_eof()
        assert await read_until_closed(client) == b""
    await recorder.eof.wait()
    assert recorder.received == early


@pytest.mark.parametrize("hand_over", [True, False], ids=["hub", "task-relay"])
async def test_half_close_both_ways(
    nursery: trio.Nursery, start_server: StartServer, hand_over: bool
) -> None:
    upstream_saw_eof = trio.Event()
    client_got_first = trio.Event()
    received = b""

    async def upstream(stream: trio.SocketStream) -> None:
        nonlocal received
        async with stream:
            while data := await stream.receive_some():
                received += data
            upstream_saw_eof.set()
            # The client has half-closed; its receiving side must still work.
            await stream.send_all(b"after your EOF")
            await client_got_first.wait()
            await stream.send_all(b", and more")
        # Leaving the block closes: the client must see EOF.

    upstream_port = await start_upstream(nursery, upstream)
    upgrade = TCPUpgrade(("127.0.0.1", upstream_port), hand_over=hand_over)
    _, port = await start_server(upgrade)

    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(UPGRADE)
        head, rest = await read_head(client)
        assert HEAD_101.fullmatch(head)
        await client.send_all(b"request")
        await client.send_eof()
        await upstream_saw_eof.wait()
        assert received == b"request"
        first = await read_exactly(client, len(b"after your EOF"), rest)
        assert first == b"after your EOF"
        client_got_first.set()
        assert await read_until_closed(client) == b", and more"


async def test_refused_upstream_answers_502(start_server: StartServer) -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    closed_port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there any more: refused
    _, port = await start_server(TCPUpgrade(("127.0.0.1", closed_port)))

    response = await ask(port, UPGRADE)
    assert response.status == 502
    assert f"127.0.0.1:{closed_port}".encode() in response.body


async def test_slow_upstream_answers_504(
    start_server: StartServer, autojump_clock: trio.testing.MockClock
) -> None:
    # A listener with a full accept queue drops SYNs: connect() hangs until
    # the (virtual) connect timeout.
    with socket.socket() as full, socket.socket() as filler:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        filler.connect(full.getsockname())
        upgrade = TCPUpgrade(full.getsockname(), connect_timeout=5)
        _, port = await start_server(upgrade)
        start = trio.current_time()
        response = await ask(port, UPGRADE)
    assert response.status == 504
    assert b"did not answer in time" in response.body
    assert trio.current_time() - start == pytest.approx(5, abs=0.5)


async def test_no_upgrade_answers_426_with_upgrade_headers(
    start_server: StartServer,
) -> None:
    _, port = await start_server(TCPUpgrade(("127.0.0.1", 9)))
    for request in (
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        # Upgrade to something else, or Upgrade without Connection: Upgrade.
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nUpgrade: tcp\r\n\r\n",
    ):
        response = await ask(port, request)
        assert response.status == 426
        assert response.headers.get("upgrade") == "tcp"
        assert "upgrade" in response.headers.tokens("connection")


async def test_fallback_gets_requests_without_upgrade(
    start_server: StartServer,
) -> None:
    async def fallback(request: Request) -> Response:
        return Response(200, body=f"plain {request.path}".encode())

    _, port = await start_server(TCPUpgrade(("127.0.0.1", 9), fallback=fallback))
    response = await ask(
        port, b"GET /page HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert (response.status, response.body) == (200, b"plain /page")


async def test_upgrade_request_with_a_body_is_refused(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    recorder = Recorder()
    upstream_port = await start_upstream(nursery, recorder)
    _, port = await start_server(TCPUpgrade(("127.0.0.1", upstream_port)))
    response = await ask(
        port,
        b"POST / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        b"Content-Length: 4\r\n\r\nbody",
    )
    assert response.status == 400


@pytest.mark.parametrize("hand_over", [True, False], ids=["hub", "task-relay"])
async def test_one_log_line_per_stream(
    nursery: trio.Nursery, start_server: StartServer, hand_over: bool
) -> None:
    with capture_log("hijack.tcp") as log:
        recorder = Recorder()
        upstream_port = await start_upstream(nursery, recorder)
        upgrade = TCPUpgrade(("127.0.0.1", upstream_port), hand_over=hand_over)
        server, port = await start_server(upgrade)

        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(UPGRADE + b"12345")
            _, rest = await read_head(client)
            await read_exactly(client, 5, rest)
            await client.send_eof()
            assert await read_until_closed(client) == b""
        await log.logged.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert server.open_hijacked_connections == 0
    assert len(log.records) == 1
    message = log.records[0].getMessage()
    assert f"127.0.0.1:{upstream_port} ok" in message
    assert "up=5 down=5" in message
