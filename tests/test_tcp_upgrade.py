"""``Upgrade: tcp`` end to end: raw client -> hijack server -> loopback upstream."""

from __future__ import annotations

import functools
import logging
import re
import socket
from collections.abc import Awaitable, Callable

import h11
import pytest
import trio
import trio.testing

from hijack import Request, Response
from hijack.upgrades.tcp import TCPUpgrade

from .conftest import StartServer
from .helpers import read_until, read_until_closed

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


async def start_upstream(nursery: trio.Nursery, handler: UpstreamHandler) -> int:
    """A trio TCP server on 127.0.0.1, port 0; stopped with the test's nursery."""
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


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


async def split_head(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes]:
    """Read a response head; return it and whatever came behind it."""
    data = await read_until(stream, b"\r\n\r\n")
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no response head in {data!r}"
    return head + sep, rest


async def read_exactly(stream: trio.abc.ReceiveStream, n: int, have: bytes) -> bytes:
    data = have
    while len(data) < n:
        chunk = await stream.receive_some()
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


async def http_answer(port: int, request: bytes) -> tuple[h11.Response, bytes]:
    """Send raw ``request``; parse one answer with h11, body included."""
    conn = h11.Connection(h11.CLIENT)
    # The raw bytes bypass h11: tell it a request went out so it reads the
    # answer as one (our tests only parse error or plain answers with it).
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "t")]))
    conn.send(h11.EndOfMessage())
    response = None
    body = b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(request)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await stream.receive_some())
            elif isinstance(event, h11.Response):
                response = event
            elif isinstance(event, h11.Data):
                body += event.data
            else:
                break
    assert isinstance(response, h11.Response), event
    return response, body


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
        head, rest = await split_head(client)
        assert HEAD_101.fullmatch(head), head
        assert rest == b""
        for message in (b"first", b"\x00\xff binary \r\n\r\n", b"x" * 100_000):
            await client.send_all(message)
            assert await read_exactly(client, len(message), b"") == message
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
        head, rest = await split_head(client)
        assert HEAD_101.fullmatch(head)
        assert await read_exactly(client, len(early), rest) == early
        await client.send_eof()
        assert await read_until_closed(client) == b""
    await recorder.eof.wait()
    assert recorder.received == early


async def test_half_close_both_ways(
    nursery: trio.Nursery, start_server: StartServer
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
    _, port = await start_server(TCPUpgrade(("127.0.0.1", upstream_port)))

    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(UPGRADE)
        head, rest = await split_head(client)
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

    response, body = await http_answer(port, UPGRADE)
    assert response.status_code == 502
    assert f"127.0.0.1:{closed_port}".encode() in body


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
        response, body = await http_answer(port, UPGRADE)
    assert response.status_code == 504
    assert b"did not answer in time" in body
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
        response, _ = await http_answer(port, request)
        assert response.status_code == 426
        headers = {k: v for k, v in response.headers}
        assert headers[b"upgrade"] == b"tcp"
        assert b"upgrade" in headers[b"connection"].lower()


async def test_fallback_gets_requests_without_upgrade(
    start_server: StartServer,
) -> None:
    async def fallback(request: Request) -> Response:
        return Response(200, body=f"plain {request.path}".encode())

    _, port = await start_server(TCPUpgrade(("127.0.0.1", 9), fallback=fallback))
    response, body = await http_answer(
        port, b"GET /page HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )
    assert (response.status_code, body) == (200, b"plain /page")


async def test_upgrade_request_with_a_body_is_refused(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    recorder = Recorder()
    upstream_port = await start_upstream(nursery, recorder)
    _, port = await start_server(TCPUpgrade(("127.0.0.1", upstream_port)))
    response, _ = await http_answer(
        port,
        b"POST / HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
        b"Content-Length: 4\r\n\r\nbody",
    )
    assert response.status_code == 400


class EventHandler(logging.Handler):
    """Keeps records and sets a trio Event at the first one (emit runs in
    the trio thread: the log call is made by the handler task)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.logged = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.logged.set()


async def test_one_log_line_per_stream(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    log = EventHandler()
    logger = logging.getLogger("hijack.tcp")
    logger.addHandler(log)
    logger.setLevel(logging.INFO)
    try:
        recorder = Recorder()
        upstream_port = await start_upstream(nursery, recorder)
        server, port = await start_server(TCPUpgrade(("127.0.0.1", upstream_port)))

        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            await client.send_all(UPGRADE + b"12345")
            _, rest = await split_head(client)
            await read_exactly(client, 5, rest)
            await client.send_eof()
            assert await read_until_closed(client) == b""
        await log.logged.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert server.open_hijacked_connections == 0
    finally:
        logger.removeHandler(log)
        logger.setLevel(logging.NOTSET)
    assert len(log.records) == 1
    message = log.records[0].getMessage()
    assert f"127.0.0.1:{upstream_port} closed" in message
    assert "5 bytes up, 5 down" in message
