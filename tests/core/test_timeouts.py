"""Every timeout and limit, on memory streams with trio's autojump clock."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import trio
import trio.testing

from hijack import Limits, Request, Response, Server
from hijack.testing import MemoryListener

from ..conftest import trickle_until_answered
from ..helpers import read_until, read_until_closed

MemoryServer = Callable[..., Awaitable[tuple[Server, MemoryListener]]]
LIMITS = Limits(head_timeout=5, idle_timeout=30, body_timeout=10, write_timeout=7)


async def echo_body(request: Request) -> Response:
    return Response(200, body=await request.read())


async def test_slow_head_gets_408_at_the_deadline(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    server, listener = await memory_server(echo_body, limits=LIMITS)
    client = await listener.connect()
    answered_after, data = await trickle_until_answered(
        client, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert data.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert answered_after == 5
    await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []


async def test_silent_new_connection_closed_at_head_deadline(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    server, listener = await memory_server(echo_body, limits=LIMITS)
    client = await listener.connect()
    start = trio.current_time()
    assert await read_until_closed(client) == b""
    assert trio.current_time() - start == 5
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []


async def test_idle_keep_alive_closed_after_idle_timeout(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    _, listener = await memory_server(echo_body, limits=LIMITS)
    client = await listener.connect()
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_until(client, b"\r\n\r\n")
    start = trio.current_time()
    assert await read_until_closed(client) == b""
    assert trio.current_time() - start == 30


async def test_slow_body_gets_408(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    _, listener = await memory_server(echo_body, limits=LIMITS)
    client = await listener.connect()
    await client.send_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    with contextlib.suppress(trio.BrokenResourceError):  # the server hangs up
        for _ in range(20):
            await client.send_all(b"x")
            await trio.sleep(1)
    data = await read_until_closed(client)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in data


async def test_client_that_never_reads_hits_write_timeout(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    async def big(request: Request) -> Response:
        return Response(200, body=b"x" * 1_000_000)

    listener = MemoryListener(trio.testing.lockstep_stream_pair)
    server, _ = await memory_server(big, limits=LIMITS, listener=listener)
    client = await listener.connect()
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await trio.sleep(8)  # the write times out at 7 s; the server closes
    assert server.connections == []
    await client.aclose()


async def test_max_connections_stops_accepting(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    _, listener = await memory_server(echo_body, limits=Limits(max_connections=2))
    first = await listener.connect()
    second = await listener.connect()
    with trio.move_on_after(1) as blocked:
        await listener.connect()  # nobody accepts while at the limit
    assert blocked.cancelled_caught
    await first.aclose()
    with trio.fail_after(1):
        third = await listener.connect()
    await third.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_until_closed(third)).startswith(b"HTTP/1.1 200 ")
    await second.aclose()
    await third.aclose()
