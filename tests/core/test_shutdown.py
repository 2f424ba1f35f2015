"""Graceful shutdown: idle closed now, in-flight finished, hijacked told."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.testing

from hijack import Limits, Request, Response, Server
from hijack._http import NEW_CONNECTION_SHUTDOWN_WAIT
from hijack.testing import MemoryListener

from ..helpers import read_until, read_until_closed

MemoryServer = Callable[..., Awaitable[tuple[Server, MemoryListener]]]


async def test_shutdown_closes_idle_and_finishes_in_flight(
    nursery: trio.Nursery,
    memory_server: MemoryServer,
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/slow":
            await release.wait()
        return Response(200, body=b"done")

    server, listener = await memory_server(handler, limits=Limits(shutdown_grace=60))
    fresh = await listener.connect()
    idle = await listener.connect()
    await idle.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_until(idle, b"done")
    busy = await listener.connect()
    await busy.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.testing.wait_all_tasks_blocked()

    stopped_at: list[float] = []

    async def shut() -> None:
        await server.shutdown()
        stopped_at.append(trio.current_time())

    nursery.start_soon(shut)
    await trio.testing.wait_all_tasks_blocked()
    assert listener.closed
    assert await read_until_closed(idle) == b""
    # A new connection that never sent a byte gets NEW_CONNECTION_SHUTDOWN_WAIT.
    assert await read_until_closed(fresh) == b""
    assert trio.current_time() == NEW_CONNECTION_SHUTDOWN_WAIT
    await trio.testing.wait_all_tasks_blocked()
    assert server.open_http_connections == 1
    await trio.sleep(5)
    release.set()
    data = await read_until_closed(busy)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in data
    assert data.endswith(b"done")
    await trio.testing.wait_all_tasks_blocked()
    assert stopped_at == [NEW_CONNECTION_SHUTDOWN_WAIT + 5.0]
    for stream in (fresh, idle, busy):
        await stream.aclose()


async def test_hijacked_owners_are_told_and_drained(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    async def polite(request: Request) -> None:
        hijacked = await request.hijack()
        async with hijacked:
            await request.connection.shutdown_requested.wait()
            await hijacked.send_all(b"bye")

    async def stubborn(request: Request) -> None:
        hijacked = await request.hijack()
        async with hijacked:
            await trio.sleep_forever()

    async def handler(request: Request) -> None:
        await (polite if request.path == "/polite" else stubborn)(request)

    server, listener = await memory_server(handler, limits=Limits(shutdown_grace=30))
    a = await listener.connect()
    await a.send_all(b"GET /polite HTTP/1.1\r\nHost: x\r\n\r\n")
    b = await listener.connect()
    await b.send_all(b"GET /stubborn HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.testing.wait_all_tasks_blocked()
    assert server.open_hijacked_connections == 2

    start = trio.current_time()
    async with trio.open_nursery() as inner:
        inner.start_soon(server.shutdown)
        assert await read_until_closed(a) == b"bye"
        await trio.testing.wait_all_tasks_blocked()
        assert server.open_hijacked_connections == 1
    # shutdown() returned: the stubborn one was cancelled after the grace.
    assert trio.current_time() - start == 30
    assert await read_until_closed(b) == b""
    assert server.open_hijacked_connections == 0
    assert server.connections == []
    await a.aclose()
    await b.aclose()


async def test_detached_hijacked_stream_is_closed_after_grace(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    async def handler(request: Request) -> None:
        (await request.hijack()).detach()  # handed on, and then forgotten

    server, listener = await memory_server(handler, limits=Limits(shutdown_grace=10))
    client = await listener.connect()
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.testing.wait_all_tasks_blocked()
    assert server.open_hijacked_connections == 1
    await server.shutdown()
    assert server.open_hijacked_connections == 0
    assert await read_until_closed(client) == b""
    await client.aclose()


async def test_a_new_connection_may_send_its_request_after_shutdown_started(
    nursery: trio.Nursery,
    memory_server: MemoryServer,
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A rolling restart retires a worker that has just accepted a
    connection: the client's request, sent a moment later, is answered."""

    async def handler(request: Request) -> Response:
        return Response(200, body=b"done")

    server, listener = await memory_server(handler, limits=Limits(shutdown_grace=60))
    fresh = await listener.connect()
    await trio.testing.wait_all_tasks_blocked()
    nursery.start_soon(server.shutdown)
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(NEW_CONNECTION_SHUTDOWN_WAIT / 2)
    await fresh.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    data = await read_until_closed(fresh)
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in data
    await fresh.aclose()


async def test_shutdown_returns_when_the_serving_task_was_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """serve_listeners cancelled from outside (its nursery torn down by an
    error or a timeout) still counts as stopped: shutdown() returns instead of
    waiting forever, and the listener is closed."""

    async def handler(request: Request) -> Response:
        return Response(200)

    server = Server(handler)
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        nursery.cancel_scope.cancel()
    with trio.fail_after(60):  # all tasks blocked: autojump reaches it at once
        await server.shutdown()
    assert listener.closed
