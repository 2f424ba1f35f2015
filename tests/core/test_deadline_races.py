"""A request that races a deadline or a shutdown is served, not dropped.

The race: the request's bytes reach the socket in the same scheduler batch
in which the connection's idle (or head) deadline passes, or a graceful
shutdown ends the keep-alive waits. The connection's task then wakes to
both news at once. Whatever ends the wait (a cancel scope per wait, a
server-wide timer) must let the task look at the socket once more: bytes
that arrived by the deadline are a request to answer. A connection-long
cancel scope fails this (once cancelled it cannot be reset, so the next
checkpoint drops the request: bench/ANALYSIS.md).

Staged over real UNIX sockets (a write there is in the peer's buffer when
the call returns) with trio's MockClock: no autojump, the test moves time
itself, so the deadline passes exactly when the bytes arrive. trio runs a
batch in either order at random; each race is run many times.
"""

from __future__ import annotations

import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing

from hijack import Limits, Request, Response, Server
from hijack._http import NEW_CONNECTION_SHUTDOWN_WAIT

from ..helpers import read_until, read_until_closed

HELLO = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
BODY = b"Hello, world!"
HEAD_TIMEOUT = 5.0
IDLE_TIMEOUT = 30.0
LIMITS = Limits(head_timeout=HEAD_TIMEOUT, idle_timeout=IDLE_TIMEOUT)
ROUNDS = 24

pytestmark = pytest.mark.usefixtures("no_leaks")

Start = Callable[..., Awaitable[tuple[Server, str]]]


async def hello(request: Request) -> Response:
    return Response(200, [("content-type", "text/plain")], BODY)


@pytest.fixture
async def start_unix(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Start]:
    """``server, path = await start_unix(limits=...)``: the hello server on a
    UNIX socket, shut down (grace 0) at the end."""
    servers: list[Server] = []

    async def start(**kwargs: object) -> tuple[Server, str]:
        server = Server(hello, access_log=False, **kwargs)  # type: ignore[arg-type]
        path = str(tmp_path / f"s{len(servers)}.sock")
        await nursery.start(functools.partial(server.serve_unix, path))
        servers.append(server)
        return server, path

    yield start
    for server in servers:
        await server.shutdown(grace=0)


async def connect(path: str) -> trio.SocketStream:
    return await trio.open_unix_socket(path)


async def race(clock: trio.testing.MockClock, deadline: float, in_batch: bool) -> None:
    """Move time so that ``deadline`` (from now) passes; with ``in_batch``,
    return inside the scheduler batch where it passes (which wakes
    whatever ends the wait, before or after this task, at random), so that
    bytes the caller writes next arrive in that batch. Without, return
    before any pass: the bytes will be noticed in the batch where the
    deadline passes."""
    clock.jump(deadline)
    if in_batch:
        await trio.lowlevel.checkpoint()


def arrive(client: trio.SocketStream, data: bytes) -> None:
    """Put ``data`` in the server's receive buffer now, with no scheduler
    pass (trio's send would take one after the write)."""
    assert os.write(client.socket.fileno(), data) == len(data)


async def answered(client: trio.SocketStream) -> bytes:
    data = await read_until(client, BODY)
    assert data.startswith(b"HTTP/1.1 200 "), f"dropped, got {data!r}"
    assert data.endswith(BODY), f"dropped, got {data!r}"
    return data


async def test_request_arriving_as_the_idle_deadline_passes_is_served(
    start_unix: Start, mock_clock: trio.testing.MockClock
) -> None:
    server, path = await start_unix(limits=LIMITS)
    client = await connect(path)
    arrive(client, HELLO)
    await answered(client)
    for round_ in range(ROUNDS):
        await trio.testing.wait_all_tasks_blocked()
        # The keep-alive wait's deadline.
        await race(mock_clock, IDLE_TIMEOUT, in_batch=round_ % 2 == 1)
        arrive(client, HELLO)
        await answered(client)
    # The deadline still closes a connection that stays silent.
    await trio.testing.wait_all_tasks_blocked()
    mock_clock.jump(IDLE_TIMEOUT)
    assert await read_until_closed(client) == b""
    await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []


async def test_first_request_arriving_as_the_head_deadline_passes_is_served(
    start_unix: Start, mock_clock: trio.testing.MockClock
) -> None:
    server, path = await start_unix(limits=LIMITS)
    for round_ in range(ROUNDS):
        client = await connect(path)
        await trio.testing.wait_all_tasks_blocked()  # accepted, waiting
        # The head deadline, counted from accept.
        await race(mock_clock, HEAD_TIMEOUT, in_batch=round_ % 2 == 1)
        arrive(client, HELLO)
        await answered(client)
        await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []


@pytest.mark.parametrize("same_batch", [True, False])
async def test_request_arriving_as_shutdown_starts_is_served(
    start_unix: Start,
    mock_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    same_batch: bool,
) -> None:
    # same_batch: shutdown runs in the batch where the bytes are noticed
    # (in either order); otherwise it starts before any pass, while the
    # connection still waits with the bytes already in its buffer.
    server, path = await start_unix(limits=LIMITS)
    clients = [await connect(path) for _ in range(ROUNDS)]
    for client in clients:
        arrive(client, HELLO)
        await answered(client)
    await trio.testing.wait_all_tasks_blocked()
    for client in clients:
        arrive(client, HELLO)
    if same_batch:
        nursery.start_soon(server.shutdown)
    else:
        await server.shutdown()
    for client in clients:
        data = await read_until_closed(client)
        assert data.startswith(b"HTTP/1.1 200 "), f"dropped, got {data!r}"
        if not same_batch:  # read after shutdown began: the answer says so
            assert b"connection: close" in data.lower()
        await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []


async def test_idle_connections_without_a_request_close_at_shutdown(
    start_unix: Start, mock_clock: trio.testing.MockClock
) -> None:
    # The other side of the race: an idle wait with nothing in the buffer
    # ends at shutdown, with no time passing; a new silent connection gets
    # its NEW_CONNECTION_SHUTDOWN_WAIT.
    server, path = await start_unix(limits=LIMITS)
    idle = await connect(path)
    arrive(idle, HELLO)
    await answered(idle)
    fresh = await connect(path)
    await trio.testing.wait_all_tasks_blocked()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.shutdown)
        assert await read_until_closed(idle) == b""
        start = trio.current_time()
        mock_clock.jump(NEW_CONNECTION_SHUTDOWN_WAIT)
        assert await read_until_closed(fresh) == b""
        assert trio.current_time() == start + NEW_CONNECTION_SHUTDOWN_WAIT
    await idle.aclose()
    await fresh.aclose()
    assert server.connections == []


# -- the timer's own deadlines, over plain sockets (autojump) ------------------


async def test_timer_closes_silent_and_idle_plain_connections_on_time(
    start_unix: Start, autojump_clock: trio.testing.MockClock
) -> None:
    server, path = await start_unix(limits=LIMITS)
    start = trio.current_time()
    silent = await connect(path)
    assert await read_until_closed(silent) == b""
    assert trio.current_time() - start == HEAD_TIMEOUT
    idle = await connect(path)
    arrive(idle, HELLO)
    await answered(idle)
    start = trio.current_time()
    assert await read_until_closed(idle) == b""
    assert trio.current_time() - start == IDLE_TIMEOUT
    await silent.aclose()
    await idle.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []


async def test_timer_answers_a_slow_head_408_at_its_deadline(
    start_unix: Start, autojump_clock: trio.testing.MockClock
) -> None:
    # One byte a second: each read is quick, the whole head is not. The
    # head clock of a keep-alive request starts at its first byte.
    _, path = await start_unix(limits=LIMITS)
    client = await connect(path)
    arrive(client, HELLO)
    await answered(client)
    await trio.sleep(1)
    start = trio.current_time()
    data = b""
    for byte in HELLO[:-1]:
        arrive(client, bytes([byte]))
        with trio.move_on_after(1):
            data += await read_until(client, b"\r\n\r\n")
        if data:
            break
    assert data.startswith(b"HTTP/1.1 408 "), data
    assert trio.current_time() - start == HEAD_TIMEOUT
    await client.aclose()


async def test_waits_fall_back_to_their_own_scope_when_the_timer_stops(
    nursery: trio.Nursery, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    # Two serve_* calls share the timer the first one runs; when that call
    # ends, the other's waits still end on time (on a cancel scope each).
    server = Server(hello, access_log=False, limits=LIMITS)
    first = trio.CancelScope()

    async def serve_first(*, task_status: trio.TaskStatus[object]) -> None:
        with first:
            await server.serve_unix(str(tmp_path / "a.sock"), task_status=task_status)

    await nursery.start(serve_first)
    await nursery.start(server.serve_unix, str(tmp_path / "b.sock"))
    client = await connect(str(tmp_path / "b.sock"))
    arrive(client, HELLO)
    await answered(client)
    await trio.testing.wait_all_tasks_blocked()
    assert server._deadlines.running
    start = trio.current_time()
    first.cancel()
    assert await read_until_closed(client) == b""
    assert trio.current_time() - start == IDLE_TIMEOUT
    assert not server._deadlines.running
    await client.aclose()
    await server.shutdown(grace=0)


async def test_finished_connections_do_not_pile_up_in_the_timer(
    start_unix: Start, autojump_clock: trio.testing.MockClock
) -> None:
    # Each connection below waits once (an entry at its head deadline) and
    # closes long before it: their entries are swept, not kept until then.
    server, path = await start_unix(limits=Limits(head_timeout=3600))
    for _ in range(300):
        client = await connect(path)
        await trio.testing.wait_all_tasks_blocked()  # accepted, waiting
        arrive(client, HELLO)
        await answered(client)
        await client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []
    assert len(server._deadlines._heap) <= 2 * 65
