"""Connection states follow Go's ConnState rules; hijacked is not closed."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from hijack import Connection, ConnState, Request, Response, Server
from hijack.testing import MemoryListener

from ..helpers import read_until, read_until_closed

N, A, IDLE, H, C = (
    ConnState.NEW,
    ConnState.ACTIVE,
    ConnState.IDLE,
    ConnState.HIJACKED,
    ConnState.CLOSED,
)

MemoryServer = Callable[..., Awaitable[tuple[Server, MemoryListener]]]


async def handler(request: Request) -> Response | None:
    if request.path == "/hijack":
        hijacked = await request.hijack()
        await hijacked.send_all(b"hijacked")
        hijacked.detach()
        request.connection.context["hijacked"] = hijacked
        return None
    return Response(200, body=b"ok")


async def run(
    memory_server: MemoryServer, client_script: Callable[[Any], Awaitable[None]]
) -> tuple[Server, list[ConnState]]:
    states: list[ConnState] = []

    def on_state(connection: Connection, state: ConnState) -> None:
        assert state is connection.state
        states.append(state)

    server, listener = await memory_server(handler, on_state=on_state)
    client = await listener.connect()
    await client_script(client)
    await trio.testing.wait_all_tasks_blocked()
    return server, states


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_keep_alive_then_close(memory_server: MemoryServer) -> None:
    async def script(client: Any) -> None:
        await client.send_all(GET)
        await read_until(client, b"ok")
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await read_until_closed(client)

    _, states = await run(memory_server, script)
    assert states == [N, A, IDLE, A, C]


async def test_hijack(memory_server: MemoryServer) -> None:
    async def script(client: Any) -> None:
        await client.send_all(b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(client, b"hijacked")

    server, states = await run(memory_server, script)
    assert states == [N, A, H]
    assert server.open_hijacked_connections == 1
    assert server.open_http_connections == 0
    (connection,) = server.connections
    await connection.context["hijacked"].aclose()
    # The owner closed it: the server forgets it, and no CLOSED is reported.
    assert states == [N, A, H]
    assert server.open_hijacked_connections == 0
    assert server.connections == []
    assert not connection.is_open


async def test_dial_then_close(memory_server: MemoryServer) -> None:
    async def script(client: Any) -> None:
        await client.aclose()

    server, states = await run(memory_server, script)
    assert states == [N, C]
    assert server.connections == []


async def test_bogus_request(memory_server: MemoryServer) -> None:
    async def script(client: Any) -> None:
        await client.send_all(b"fooo\r\n\r\n")
        assert (await read_until_closed(client)).startswith(b"HTTP/1.1 400 ")
        await client.aclose()  # the server lingers until the client goes

    _, states = await run(memory_server, script)
    assert states == [N, A, C]


async def test_request_then_client_close(memory_server: MemoryServer) -> None:
    async def script(client: Any) -> None:
        await client.send_all(GET)
        await read_until(client, b"ok")
        await client.aclose()

    _, states = await run(memory_server, script)
    assert states == [N, A, IDLE, C]


async def test_counts_track_every_kind(memory_server: MemoryServer) -> None:
    server, listener = await memory_server(handler)
    idle = await listener.connect()
    await idle.send_all(GET)
    await read_until(idle, b"ok")
    fresh = await listener.connect()
    taken = await listener.connect()
    await taken.send_all(b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_until(taken, b"hijacked")
    await trio.testing.wait_all_tasks_blocked()
    assert server.open_http_connections == 2
    assert server.open_hijacked_connections == 1
    assert sorted(c.state.value for c in server.connections) == [
        "hijacked",
        "idle",
        "new",
    ]
    for stream in (idle, fresh):
        await stream.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert server.open_http_connections == 0
    assert server.open_hijacked_connections == 1
    (connection,) = server.connections
    await connection.context["hijacked"].aclose()
    await taken.aclose()
    assert server.open_hijacked_connections == 0


async def test_ids_are_unique_and_context_hook_runs_first(
    memory_server: MemoryServer,
) -> None:
    seen: list[tuple[int, str]] = []

    def on_connect(connection: Connection) -> None:
        connection.context["tag"] = f"conn-{connection.id}"

    async def tagged(request: Request) -> Response:
        seen.append((request.connection.id, request.connection.context["tag"]))
        return Response(200, body=b"ok")

    _, listener = await memory_server(tagged, on_connect=on_connect)
    for _ in range(3):
        client = await listener.connect()
        await client.send_all(GET)
        await read_until(client, b"ok")
        await client.aclose()
    assert seen == [(1, "conn-1"), (2, "conn-2"), (3, "conn-3")]


async def test_broken_state_hook_does_not_break_the_connection(
    memory_server: MemoryServer, caplog: pytest.LogCaptureFixture
) -> None:
    def bad_hook(connection: Connection, state: ConnState) -> None:
        raise RuntimeError("hook bug")

    _, listener = await memory_server(handler, on_state=bad_hook)
    client = await listener.connect()
    await client.send_all(GET)
    assert (await read_until(client, b"ok")).endswith(b"ok")
    await client.aclose()
    assert any("state hook" in r.getMessage() for r in caplog.records)
