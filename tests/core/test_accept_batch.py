"""Accepting several connections per wake-up (hijack/_accept.py): the
accept task's scheduler passes, the batch bound, and the limits it keeps.
Real loopback sockets; counted with a trio Instrument, no timing."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
import trio.lowlevel
import trio.testing

from hijack import Limits, Request, Response
from hijack._accept import ACCEPT_BATCH

from ..conftest import StartServer
from ..helpers import read_until_closed

CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def hello(request: Request) -> Response:
    return Response(200, body=b"hello")


class AcceptSteps(trio.abc.Instrument):
    """Counts the scheduler passes of the server's accept tasks."""

    def __init__(self) -> None:
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name.endswith("._accept_loop"):
            self.steps += 1


@contextmanager
def queued(port: int, count: int) -> Iterator[list[socket.socket]]:
    """``count`` clients connected (in the listen backlog, not accepted
    yet: no scheduler pass ran since), closed at the end."""
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    try:
        yield clients
    finally:
        for client in clients:
            client.close()


async def accepted_with_steps(start_server: StartServer, count: int) -> int:
    server, port = await start_server(hello, access_log=False)
    await trio.testing.wait_all_tasks_blocked()
    steps = AcceptSteps()
    with queued(port, count):
        trio.lowlevel.add_instrument(steps)
        try:
            await trio.testing.wait_all_tasks_blocked()
        finally:
            trio.lowlevel.remove_instrument(steps)
        assert len(server.connections) == count
    return steps.steps


async def test_a_burst_is_accepted_in_one_pass(start_server: StartServer) -> None:
    # trio's listener yields after each accept, the capacity semaphore once
    # more: 2 passes per connection before. One wake-up takes the burst.
    assert await accepted_with_steps(start_server, 20) == 1


async def test_a_long_burst_still_lets_others_run(start_server: StartServer) -> None:
    # At most ACCEPT_BATCH connections per pass.
    count = 2 * ACCEPT_BATCH + 5
    assert await accepted_with_steps(start_server, count) == 3


@pytest.mark.parametrize("limit", [1, 3])
async def test_max_connections_holds_with_batches(
    start_server: StartServer, limit: int
) -> None:
    server, port = await start_server(
        hello, access_log=False, limits=Limits(max_connections=limit)
    )
    with queued(port, limit + 4) as clients:
        await trio.testing.wait_all_tasks_blocked()
        assert len(server.connections) == limit
        # Each answered client frees one place for the next in the backlog.
        for client in clients:
            stream = trio.SocketStream(trio.socket.from_stdlib_socket(client))
            await stream.send_all(CLOSE)
            assert (await read_until_closed(stream)).startswith(b"HTTP/1.1 200 ")
            await trio.testing.wait_all_tasks_blocked()
            assert len(server.connections) <= limit
    await trio.testing.wait_all_tasks_blocked()
    assert server.connections == []
