"""The hijack contract: every byte handed over, clear errors, ownership."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hijack import (
    Connection,
    Hijacked,
    HijackError,
    Limits,
    ReplayStream,
    Request,
    Response,
)
from hijack.testing import MemoryListener

from ..conftest import StartServer
from ..helpers import read_until, read_until_closed, splits

UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n"
)
CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
PLAIN = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def post_head(length: int) -> bytes:
    return b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % length


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["upgrade", "connect", "plain", "post"]),
    early=st.binary(max_size=300),
    body_reads=st.integers(min_value=0, max_value=3),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=12),
)
async def test_buffered_plus_stream_is_exactly_what_followed(
    kind: str, early: bytes, body_reads: int, cuts: list[int]
) -> None:
    """For any split of the client's bytes into reads and any early data,
    consumed head + body read by the handler + ``buffered`` + what the
    hijacked stream yields afterwards == every byte the client sent."""
    if kind == "post":
        head = post_head(len(early))
    else:
        head = {"upgrade": UPGRADE, "connect": CONNECT, "plain": PLAIN}[kind]
    sent = head + early
    result: dict[str, bytes] = {}

    async def handler(request: Request) -> None:
        body = b""
        for _ in range(body_reads if kind == "post" else 0):
            async for chunk in request.body():
                body += chunk
                break
        response = None
        if kind == "upgrade":
            response = Response(101, {"connection": "upgrade", "upgrade": "echo"})
        elif kind == "connect":
            response = Response(200)
        hijacked = await request.hijack(response)
        rest = b""
        while data := await hijacked.stream.receive_some():
            rest += data
        result["body"] = body
        result["buffered"] = hijacked.buffered
        result["rest"] = rest
        await hijacked.aclose()

    from hijack import Server

    server = Server(handler)
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        client = await listener.connect()
        for piece in splits(sent, cuts):
            await client.send_all(piece)
            await trio.testing.wait_all_tasks_blocked()
        await client.send_eof()
        await read_until_closed(client)
        await client.aclose()
        await server.shutdown(grace=0)
    assert head + result["body"] + result["buffered"] + result["rest"] == sent


StreamPair = tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]


async def tcp_pair() -> StreamPair:
    """Two ends of a real loopback TCP connection."""
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listener:
        left = await trio.testing.open_stream_to_socket_listener(listener)
        right = await listener.accept()
    return left, right


async def unix_pair() -> StreamPair:
    left, right = trio.socket.socketpair()
    return trio.SocketStream(left), trio.SocketStream(right)


async def memory_pair() -> StreamPair:
    return trio.testing.memory_stream_pair()


async def fill(stream: trio.abc.SendStream) -> None:
    """Send until the kernel's buffers are full and a send blocks (trio's
    own recipe for a clogged socket stream)."""
    async with trio.open_nursery() as nursery:

        async def sender() -> None:
            while True:
                await stream.send_all(b"x" * 10000)

        nursery.start_soon(sender)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()


def wrap(kind: str, stream: trio.abc.HalfCloseableStream) -> ReplayStream:
    if kind == "hijacked":
        return Hijacked(stream, b"", Connection(1, stream))
    return ReplayStream(stream)


@pytest.mark.parametrize("kind", ["hijacked", "replay"])
@pytest.mark.parametrize("pair", [memory_pair, tcp_pair, unix_pair])
async def test_replaying_stream_is_a_half_closeable_stream(
    kind: str, pair: Callable[[], Awaitable[StreamPair]]
) -> None:
    """trio's conformance check, over memory streams and over real sockets,
    where ReplayStream drives the socket directly (its fast path)."""

    async def stream_pair() -> tuple[ReplayStream, trio.abc.HalfCloseableStream]:
        left, right = await pair()
        return wrap(kind, left), right

    async def clogged_pair() -> tuple[ReplayStream, trio.abc.HalfCloseableStream]:
        if pair is memory_pair:
            lockstep = trio.testing.lockstep_stream_pair()
            return wrap(kind, lockstep[0]), lockstep[1]
        wrapped, right = await stream_pair()
        await fill(wrapped)
        await fill(right)
        return wrapped, right

    await trio.testing.check_half_closeable_stream(stream_pair, clogged_pair)


async def test_hijacked_replays_buffered_first() -> None:
    left, right = trio.testing.memory_stream_pair()
    hijacked = Hijacked(left, b"early bytes", Connection(1, left))
    await right.send_all(b" then more")
    assert await hijacked.receive_some(5) == b"early"
    assert await hijacked.receive_some() == b" bytes"
    assert await hijacked.receive_some() == b" then more"
    await hijacked.aclose()
    await right.aclose()


async def echo_upgrade(request: Request) -> None:
    hijacked = await request.hijack(
        Response(101, {"connection": "upgrade", "upgrade": "echo"})
    )
    async with hijacked:
        while data := await hijacked.receive_some():
            await hijacked.send_all(data)


async def test_upgrade_head_and_early_data_over_tcp(start_server: StartServer) -> None:
    server, port = await start_server(echo_upgrade)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(UPGRADE + b"early")
        data = await read_until(stream, b"early")
        assert data.startswith(
            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: echo\r\n"
        )
        assert data.endswith(b"\r\n\r\nearly")
        assert server.open_hijacked_connections == 1
        assert server.open_http_connections == 0
        (connection,) = server.connections
        await stream.send_all(b"later")
        assert await read_until(stream, b"later") == b"later"
        await stream.send_eof()
        assert await read_until_closed(stream) == b""
    await connection.wait_closed()
    assert server.open_hijacked_connections == 0


async def test_connect_answer_has_no_framing_headers(start_server: StartServer) -> None:
    async def handler(request: Request) -> None:
        hijacked = await request.hijack(Response(200))
        await hijacked.send_all(await hijacked.receive_some())
        await hijacked.aclose()

    _, port = await start_server(handler)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(CONNECT + b"\x16\x03\x01hello")
        data = await read_until_closed(stream)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length" not in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert rest == b"\x16\x03\x01hello"


async def test_misuse_raises_clear_errors(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[str] = []
    kept: list[Request] = []

    async def handler(request: Request) -> Response | None:
        if request.path == "/late":
            kept.append(request)
            return Response(200, body=b"ok")
        hijacked = await request.hijack()
        for attempt in (
            request.hijack(),
            request.read(),
            request.start_response(Response(200)),
        ):
            try:
                await attempt
            except HijackError as exc:
                errors.append(str(exc))
        await hijacked.send_all(b"raw")
        return Response(200)  # a response after hijack: logged, discarded

    _, port = await start_server(handler)
    with caplog.at_level(logging.ERROR, logger="hijack"):
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(PLAIN)
            assert await read_until_closed(stream) == b"raw"
    assert errors == [
        "the connection was already hijacked",
        "cannot read the request body: the connection was hijacked",
        "cannot send a response: the connection was hijacked",
    ]
    assert any("after hijacking" in r.getMessage() for r in caplog.records)

    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"GET /late HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        await read_until_closed(stream)
    with pytest.raises(HijackError, match="handler already returned"):
        await kept[0].hijack()


async def test_started_stream_is_flushed_before_handover(
    start_server: StartServer,
) -> None:
    async def handler(request: Request) -> None:
        await request.start_response(Response(200, {"content-type": "x/raw"}))
        await request.send_data(b"first")
        hijacked = await request.hijack()
        await hijacked.send_all(b"|raw")
        await hijacked.aclose()

    _, port = await start_server(handler)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(PLAIN)
        data = await read_until_closed(stream)
    assert data.endswith(b"\r\n\r\n5\r\nfirst\r\n|raw")


async def test_handler_return_closes_unless_detached(start_server: StartServer) -> None:
    holder: list[Hijacked] = []
    handed_over = trio.Event()

    async def handler(request: Request) -> None:
        hijacked = await request.hijack()
        if request.path == "/detach":
            hijacked.detach()
            holder.append(hijacked)
            handed_over.set()

    server, port = await start_server(handler)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(PLAIN)
        assert await read_until_closed(stream) == b""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /detach HTTP/1.1\r\nHost: x\r\n\r\n")
        await handed_over.wait()
        assert server.open_hijacked_connections == 1
        await holder[0].send_all(b"still mine")
        assert await stream.receive_some() == b"still mine"
        await holder[0].aclose()
        assert await read_until_closed(stream) == b""
    assert server.open_hijacked_connections == 0
    assert holder[0].connection.state.value == "hijacked"


async def test_server_timeouts_stop_after_hijack(
    memory_server: object, autojump_clock: trio.testing.MockClock
) -> None:
    got: list[bytes] = []

    async def handler(request: Request) -> None:
        async with await request.hijack() as hijacked:
            got.append(bytes(await hijacked.receive_some()))

    limits = Limits(head_timeout=1, idle_timeout=1, body_timeout=1, write_timeout=1)
    _, listener = await memory_server(handler, limits=limits)  # type: ignore[operator]
    client = await listener.connect()
    await client.send_all(PLAIN)
    await trio.sleep(3600)  # an hour of silence: no server timeout applies
    await client.send_all(b"awake")
    await trio.testing.wait_all_tasks_blocked()
    assert got == [b"awake"]
    await client.aclose()


async def test_garbage_collected_detached_stream_warns() -> None:
    left, right = trio.testing.memory_stream_pair()
    hijacked = Hijacked(left, b"", Connection(1, left))
    hijacked.detach()
    with pytest.warns(ResourceWarning, match="garbage collected without being closed"):
        del hijacked
        import gc

        gc.collect()
    await right.aclose()
