"""``Server(sniff=...)``: other protocols on the HTTP port. On memory
streams with trio's autojump clock: what the stream handler gets, the
states the connection goes through, the bound on a silent client, and HTTP
served unchanged when the sniffer declines."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import trio
import trio.lowlevel
import trio.testing

from hijack import (
    Connection,
    ConnState,
    Hijacked,
    Limits,
    Request,
    Response,
    Server,
    Sniffer,
)
from hijack.testing import MemoryListener

from ..helpers import read_until_closed

MemoryServer = Callable[..., Awaitable[tuple[Server, MemoryListener]]]


async def hello(request: Request) -> Response:
    return Response(200, body=b"http\n")


async def test_a_taken_connection_goes_to_the_stream_handler(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    seen: list[tuple[bytes, bytes]] = []
    states: list[ConnState] = []

    async def echo_upper(stream: Hijacked) -> None:
        first = stream.buffered
        data = await stream.receive_some()
        seen.append((first, bytes(data)))
        await stream.send_all(bytes(data).upper())

    def sniff(first: bytes) -> Callable[[Hijacked], Awaitable[None]] | None:
        return echo_upper if first.startswith(b"\x05") else None

    def on_state(connection: Connection, state: ConnState) -> None:
        states.append(state)

    server, listener = await memory_server(hello, sniff=sniff, on_state=on_state)
    client = await listener.connect()
    await client.send_all(b"\x05hello")
    assert await read_until_closed(client) == b"\x05HELLO"
    await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert seen == [(b"\x05hello", b"\x05hello")]
    assert states == [ConnState.NEW, ConnState.ACTIVE, ConnState.HIJACKED]
    assert server.connections == []


async def test_declined_connections_are_http_as_before(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    """The bytes the sniffer saw are the HTTP layer's: a request split
    anywhere, keep-alive and pipelining work."""
    asked: list[bytes] = []

    def sniff(first: bytes) -> None:
        asked.append(first)

    _, listener = await memory_server(hello, sniff=sniff)
    client = await listener.connect()
    await client.send_all(b"GE")
    await trio.testing.wait_all_tasks_blocked()
    await client.send_all(
        b"T / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n"
        b"Connection: close\r\n\r\n"
    )
    answer = await read_until_closed(client)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert asked == [b"GE"]  # once per connection, not per request
    await client.aclose()


async def test_a_silent_client_is_closed_at_head_timeout(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    taken: list[bytes] = []

    def sniff(first: bytes) -> None:
        taken.append(first)

    server, listener = await memory_server(
        hello, sniff=sniff, limits=Limits(head_timeout=5)
    )
    client = await listener.connect()
    start = trio.current_time()
    assert await read_until_closed(client) == b""
    assert trio.current_time() - start == 5
    assert taken == []
    await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []


async def test_a_failing_stream_handler_closes_only_its_connection(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    async def broken(stream: Hijacked) -> None:
        raise RuntimeError("a bug in the handler")

    def sniff(first: bytes) -> Callable[[Hijacked], Awaitable[None]] | None:
        return broken if first == b"!" else None

    server, listener = await memory_server(hello, sniff=sniff)
    bad = await listener.connect()
    await bad.send_all(b"!")
    assert await read_until_closed(bad) == b""
    good = await listener.connect()
    await good.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_until_closed(good)).startswith(b"HTTP/1.1 200 OK")
    for client in (bad, good):
        await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []


async def first_request_passes(sniff: Sniffer | None) -> tuple[int, int]:
    """The connection task's scheduler passes and the reads for a new
    connection's first request, then for a keep-alive one."""
    from .test_scheduler_passes import HELLO, TaskSteps

    server = Server(hello, access_log=False, sniff=sniff)
    client, server_end = trio.socket.socketpair()
    async with trio.open_nursery() as nursery:
        connection = server._new_connection(trio.SocketStream(server_end))
        nursery.start_soon(server._drive, connection)
        [task] = nursery.child_tasks
        steps = TaskSteps(task)
        with client:
            await trio.testing.wait_all_tasks_blocked()
            trio.lowlevel.add_instrument(steps)
            try:
                counts = []
                for _ in range(2):
                    before = steps.steps
                    await client.send(HELLO)
                    answer = await client.recv(65536)
                    assert answer.startswith(b"HTTP/1.1 200 OK")
                    await trio.testing.wait_all_tasks_blocked()
                    counts.append(steps.steps - before)
            finally:
                trio.lowlevel.remove_instrument(steps)
    return counts[0], counts[1]


async def test_a_declining_sniffer_costs_http_no_scheduler_pass() -> None:
    def decline(first: bytes) -> None:
        return None

    assert await first_request_passes(decline) == await first_request_passes(None)
