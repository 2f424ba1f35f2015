"""How often trio runs a connection's task per request: the per-request cost
the asyncio servers do not pay (bench/ANALYSIS.md). Counted with a trio
Instrument over a UNIX socket pair: deterministic, no timing."""

from __future__ import annotations

import os
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Literal

import pytest
import trio
import trio.lowlevel
import trio.testing

from hijack import Request, Response, Server, _plain_socket

HELLO = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


class TaskSteps(trio.abc.Instrument):
    """Counts the scheduler passes of one task."""

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def hello(request: Request) -> Response:
    return Response(200, [("content-type", "text/plain")], b"Hello, world!")


async def echo(request: Request) -> None:
    hijacked = await request.hijack(Response(101, [("Upgrade", "echo")]))
    async with hijacked:
        while data := await hijacked.receive_some():
            await hijacked.send_all(data)


@asynccontextmanager
async def served(
    handler: Callable[[Request], Awaitable[Response | None]],
) -> AsyncIterator[tuple[trio.socket.SocketType, TaskSteps]]:
    """A client socket to one connection of a server, and the counter of
    that connection's task (installed by the caller)."""
    server = Server(handler, access_log=False)
    client, server_end = trio.socket.socketpair()
    async with trio.open_nursery() as nursery:
        # The server-wide timer its waits use, as serve_* runs it.
        await nursery.start(server._deadlines.serve)
        timer_tasks = set(nursery.child_tasks)
        connection = server._new_connection(trio.SocketStream(server_end))
        nursery.start_soon(server._drive, connection)
        [task] = set(nursery.child_tasks) - timer_tasks
        with client:
            yield client, TaskSteps(task)
        nursery.cancel_scope.cancel()


async def receive_exactly(sock: trio.socket.SocketType, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await sock.recv(size - len(data))
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


async def count_round_trips(
    client: trio.socket.SocketType, steps: TaskSteps, message: bytes, size: int
) -> list[int]:
    """The connection task's passes for each of 20 round trips."""
    counts = []
    for _ in range(20):
        await trio.testing.wait_all_tasks_blocked()
        before = steps.steps
        await client.send(message)
        await receive_exactly(client, size)
        await trio.testing.wait_all_tasks_blocked()
        counts.append(steps.steps - before)
    return counts


async def test_one_scheduler_pass_per_keep_alive_request() -> None:
    # Woken by the request; reads it, answers in one write that does not
    # yield, and parks on the next read: one pass. (Two before: trio's
    # send_all always yields.)
    async with served(hello) as (client, steps):
        await client.send(HELLO)
        size = len(await client.recv(65536))
        trio.lowlevel.add_instrument(steps)
        try:
            counts = await count_round_trips(client, steps, HELLO, size)
        finally:
            trio.lowlevel.remove_instrument(steps)
    assert counts == [1] * 20


async def test_pipelined_requests_still_yield_once_each() -> None:
    # Three heads in one read: the answers' writes do not yield, so each
    # buffered head gets a checkpoint of its own: a pipelining client cannot
    # keep the task from letting others run.
    async with served(hello) as (client, steps):
        await client.send(HELLO)
        size = len(await client.recv(65536))
        await trio.testing.wait_all_tasks_blocked()
        trio.lowlevel.add_instrument(steps)
        try:
            await client.send(HELLO * 3)
            await receive_exactly(client, 3 * size)
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(steps)
    assert steps.steps == 3


async def test_one_scheduler_pass_per_hijacked_echo() -> None:
    # The receive yields (woken by the message); the send right after it
    # does not yield again. (Two before: trio's send_all always yields.)
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    )
    async with served(echo) as (client, steps):
        await client.send(upgrade)
        head = await client.recv(65536)
        assert head.startswith(b"HTTP/1.1 101 ")
        trio.lowlevel.add_instrument(steps)
        try:
            counts = await count_round_trips(client, steps, b"x" * 64, 64)
        finally:
            trio.lowlevel.remove_instrument(steps)
    assert counts == [1] * 20


async def test_hijacked_sends_in_a_row_still_yield() -> None:
    # Only a send right after a call that yielded skips its pass: a task that
    # only sends still lets others run at every other send at least.
    passes = []

    async def sender(request: Request) -> None:
        hijacked = await request.hijack(Response(101, [("Upgrade", "x")]))
        async with hijacked:
            task = trio.lowlevel.current_task()
            for _ in range(10):
                await hijacked.receive_some()
                steps = TaskSteps(task)
                trio.lowlevel.add_instrument(steps)
                for _ in range(4):
                    await hijacked.send_all(b"x")
                trio.lowlevel.remove_instrument(steps)
                passes.append(steps.steps)

    async with served(sender) as (client, _steps):
        await client.send(HELLO.replace(b"\r\n\r\n", b"\r\nUpgrade: x\r\n\r\n"))
        await client.recv(65536)
        for _ in range(10):
            await client.send(b"go")
            await receive_exactly(client, 4)
    assert passes == [3] * 10


class CountingOS:
    """``os`` for hijack._plain_socket, counting its reads."""

    def __init__(self) -> None:
        self.reads = 0
        self.write = os.write

    def read(self, fd: int, size: int) -> bytes:
        self.reads += 1
        return os.read(fd, size)


async def test_one_read_per_request_and_per_echo(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # After answering, the next read waits for readiness first instead of
    # trying a recv that can only fail with EAGAIN: one recv per keep-alive
    # request, one per echo round trip.
    fake_os = CountingOS()
    monkeypatch.setattr(_plain_socket, "os", fake_os)
    upgrade = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
    )
    for handler, opening, message in [
        (hello, HELLO, HELLO),
        (echo, upgrade, b"x" * 64),
    ]:
        async with served(handler) as (client, steps):
            await client.send(opening)
            reply = await client.recv(65536)
            size = len(reply) if opening == message else len(message)
            await trio.testing.wait_all_tasks_blocked()
            before = fake_os.reads
            await count_round_trips(client, steps, message, size)
            assert fake_os.reads - before == 20


class CountingReadsAndWrites:
    """``os`` for hijack._plain_socket, counting reads and writes."""

    def __init__(self) -> None:
        self.reads = 0
        self.writes = 0

    def read(self, fd: int, size: int) -> bytes:
        self.reads += 1
        return os.read(fd, size)

    def write(self, fd: int, data: bytes) -> int:
        self.writes += 1
        return os.write(fd, data)


def masked_binary_frame(payload: bytes, *, rsv1: bool = False) -> bytes:
    """A client's binary frame (RFC 6455 5.2), payload under 126 bytes."""
    mask = b"\x01\x02\x03\x04"
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0xC2 if rsv1 else 0x82, 0x80 | len(payload)]) + mask + masked


def deflated(payload: bytes) -> bytes:
    """``payload`` compressed as one permessage-deflate message (RFC 7692)."""
    compressor = zlib.compressobj(wbits=-15)
    return (compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]


# Without extension, and with permessage-deflate (no context takeover
# either way, so every compressed answer has the same length).
WEBSOCKET_CASES = [
    (None, b"", masked_binary_frame(b"x" * 64)),
    (
        "deflate",
        b"Sec-WebSocket-Extensions: permessage-deflate; "
        b"server_no_context_takeover; client_no_context_takeover\r\n",
        masked_binary_frame(deflated(b"x" * 64), rsv1=True),
    ),
]


@pytest.mark.parametrize(("compression", "offer", "message"), WEBSOCKET_CASES)
async def test_one_pass_one_read_one_write_per_websocket_echo(
    monkeypatch: pytest.MonkeyPatch,
    compression: Literal["deflate"] | None,
    offer: bytes,
    message: bytes,
) -> None:
    # The WebSocket's per-message budget on the server (issue 15): woken
    # once, one recv, one send per 64-byte message echoed.
    from hijack.upgrades.websocket import make_echo_handler

    fake_os = CountingReadsAndWrites()
    monkeypatch.setattr(_plain_socket, "os", fake_os)
    handler = make_echo_handler(compression=compression, ping_interval=None)
    opening = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + offer + b"\r\n"
    )
    async with served(handler) as (client, steps):
        await client.send(opening)
        answer = await client.recv(65536)
        assert answer.startswith(b"HTTP/1.1 101 ")
        assert (b"permessage-deflate" in answer) == (compression is not None)
        # One echo first: the answer's length (a small frame comes whole).
        await client.send(message)
        size = len(await client.recv(65536))
        await trio.testing.wait_all_tasks_blocked()
        reads, writes = fake_os.reads, fake_os.writes
        trio.lowlevel.add_instrument(steps)
        try:
            counts = await count_round_trips(client, steps, message, size)
        finally:
            trio.lowlevel.remove_instrument(steps)
        syscalls = (fake_os.reads - reads, fake_os.writes - writes)
    assert counts == [1] * 20
    assert syscalls == (20, 20)
