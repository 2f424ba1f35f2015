"""Faults: clients that vanish, resets, fd exhaustion, shutdown under load.

Every test ends with the server holding no connection; the leak check (see
tests/leakcheck.py) then finds no task or fd left behind.
"""

from __future__ import annotations

import functools
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from hijack import Connection, ConnState, Limits, Request, Response, Server

from ..conftest import StartServer
from ..helpers import all_closed, exchange, read_until, read_until_closed, reset

GOOD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


async def good_request(port: int) -> bytes:
    return await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )


# -- the client vanishes ---------------------------------------------------------


@pytest.mark.parametrize("linger", [False, True], ids=["fin", "rst"])
@pytest.mark.parametrize(
    "partial",
    [
        b"GET / HTTP/1.1\r\nHo",
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
    ],
    ids=["half-head", "half-body", "half-chunk"],
)
async def test_client_vanishes_mid_request(
    start_server: StartServer, partial: bytes, linger: bool
) -> None:
    events: list[str] = []

    async def handler(request: Request) -> Response:
        events.append("handler")
        try:
            return Response(200, body=await request.read())
        finally:
            events.append("handler done")

    server, port = await start_server(handler)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(partial)
    await trio.testing.wait_all_tasks_blocked()
    if linger:
        reset(stream)
    await stream.aclose()
    await all_closed(server)
    assert events in ([], ["handler", "handler done"])
    assert (await good_request(port)).startswith(b"HTTP/1.1 200 ")
    await all_closed(server)


async def test_client_vanishes_mid_big_response(start_server: StartServer) -> None:
    async def handler(request: Request) -> Response:
        return Response(200, body=b"x" * 50_000_000)

    server, port = await start_server(handler)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(GOOD)
    await read_until(stream, b"x" * 1000)
    reset(stream)
    await stream.aclose()
    await all_closed(server)
    assert (await good_request(port)).startswith(b"HTTP/1.1 200 ")


async def test_client_vanishes_mid_streamed_response(
    start_server: StartServer,
) -> None:
    """The client reads a little of an endless response, then resets. The
    handler's body generator is closed before the connection is."""
    produced = 0
    finalized = False
    finalized_when_closed: list[bool] = []

    async def endless() -> AsyncIterator[bytes]:
        nonlocal produced, finalized
        try:
            for _ in range(100_000):  # ~6.5 GB: far more than any buffer
                produced += 1
                yield b"x" * 65536
        finally:
            finalized = True

    def on_state(connection: Connection, state: ConnState) -> None:
        if state is ConnState.CLOSED:
            finalized_when_closed.append(finalized)

    async def handler(request: Request) -> Response:
        return Response(200, body=endless())

    server, port = await start_server(handler, on_state=on_state)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(GOOD)
    await read_until(stream, b"x" * 1000)
    reset(stream)
    await stream.aclose()
    await all_closed(server)
    assert finalized_when_closed == [True]
    assert produced < 100_000


async def test_client_gone_during_send_data_is_not_a_handler_failure(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    cleaned = trio.Event()

    async def handler(request: Request) -> None:
        try:
            await request.start_response(Response(200))
            for _ in range(100_000):
                await request.send_data(b"z" * 65536)
        finally:
            cleaned.set()

    server, port = await start_server(handler)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(GOOD)
    await read_until(stream, b"z" * 1000)
    reset(stream)
    await stream.aclose()
    await all_closed(server)
    assert cleaned.is_set()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_hijacked_then_client_resets(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An echo after hijack; the client sends, then closes with a RST. The
    handler sees the error, the hijacked stream is closed, nothing logged
    as a server failure."""
    outcome: list[str] = []

    async def handler(request: Request) -> None:
        hijacked = await request.hijack(
            Response(101, {"upgrade": "echo", "connection": "upgrade"})
        )
        try:
            for _ in range(10_000):
                data = await hijacked.receive_some()
                if not data:
                    outcome.append("eof")
                    return
                await hijacked.send_all(data)
        except trio.BrokenResourceError:
            outcome.append("reset")

    server, port = await start_server(handler)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\nping"
    )
    await read_until(stream, b"ping")
    assert server.open_hijacked_connections == 1
    reset(stream)
    await stream.aclose()
    await all_closed(server)
    assert outcome == ["reset"]
    assert server.open_hijacked_connections == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_hijack_handler_that_ignores_the_reset_is_logged_and_cleaned(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request) -> Response | None:
        if request.path != "/h":
            return Response(200, body=b"ok")
        hijacked = await request.hijack()
        for _ in range(10_000):
            await hijacked.send_all(b"y" * 65536)  # until the peer resets
        return None

    server, port = await start_server(handler)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /h HTTP/1.1\r\nHost: x\r\n\r\n")
    await read_until(stream, b"y" * 1000)
    reset(stream)
    await stream.aclose()
    await all_closed(server)
    failures = [r for r in caplog.records if r.exc_info and r.levelno >= logging.ERROR]
    assert len(failures) == 1
    assert failures[0].exc_info is not None
    assert failures[0].exc_info[0] is trio.BrokenResourceError
    assert (await good_request(port)).startswith(b"HTTP/1.1 200 ")


async def test_plain_2xx_answer_to_connect_is_a_clean_500(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def handler(request: Request) -> Response:
        return Response(200, body=b"not a tunnel")

    server, port = await start_server(handler)
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 500 ")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "CONNECT" in errors[0].getMessage()
    assert errors[0].exc_info is None
    await all_closed(server)


# -- file descriptor exhaustion (a subprocess with a low RLIMIT_NOFILE) ----------

FD_SERVER = textwrap.dedent(
    """
    import logging, os, resource, sys
    import trio
    from hijack import Limits, Response, Server

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)

    async def handler(request):
        return Response(200, body=b"ok")

    async def main():
        server = Server(handler, limits=Limits(head_timeout=60, idle_timeout=60))
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve_tcp, 0)
            # Room for a few connections only.
            soft = len(os.listdir("/proc/self/fd")) + 4
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            print(listeners[0].socket.getsockname()[1], flush=True)
            # Stop when the parent closes our stdin.
            await trio.to_thread.run_sync(sys.stdin.read)
            await server.shutdown(grace=0)

    trio.run(main)
    """
)


async def test_accept_survives_fd_exhaustion(tmp_path: object) -> None:
    """Connect more clients than the server has fds: accept fails with
    EMFILE, is logged, retried; the server serves again once clients go."""
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-c", FD_SERVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                check=False,
            )
        )
        assert process.stdout and process.stderr and process.stdin
        stderr = b""
        emfile_logged = trio.Event()
        recovered = trio.Event()

        async def collect_stderr() -> None:
            nonlocal stderr
            assert process.stderr
            async for chunk in process.stderr:
                stderr += chunk
                if b"EMFILE" in stderr:
                    emfile_logged.set()
                if b"accept works again" in stderr:
                    recovered.set()

        nursery.start_soon(collect_stderr)
        port = int(await read_until(process.stdout, b"\n"))
        clients = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(12)]
        await emfile_logged.wait()
        assert b"accept failed (EMFILE); retrying in 0.1s" in stderr
        # Still serving the connections it did accept.
        await clients[0].send_all(GOOD)
        assert (await read_until(clients[0], b"ok")).startswith(b"HTTP/1.1 200 ")
        for client in clients:
            await client.aclose()
        # The backlog drains (the server says so) and a new client is served.
        await recovered.wait()
        assert (await good_request(port)).startswith(b"HTTP/1.1 200 ")
        await process.stdin.aclose()
        await process.wait()
    assert process.returncode == 0, stderr.decode()
    assert b"Traceback" not in stderr.split(b"OSError")[-1]


# -- graceful shutdown on a UNIX socket --------------------------------------------


async def test_graceful_shutdown_on_unix_socket(
    nursery: trio.Nursery, tmp_path: os.PathLike[str]
) -> None:
    """In flight: finished with Connection: close. Idle: closed at once.
    Hijacked: told via ``shutdown_requested``, says goodbye. The socket file
    is removed, all well within the grace period."""
    release = trio.Event()
    grace = 30.0

    async def handler(request: Request) -> Response | None:
        if request.path == "/slow":
            await release.wait()
            return Response(200, body=b"finished")
        if request.path == "/ws":
            hijacked = await request.hijack(
                Response(101, {"upgrade": "echo", "connection": "upgrade"})
            )
            async with hijacked:
                await request.connection.shutdown_requested.wait()
                await hijacked.send_all(b"going away")
            return None
        return Response(200, body=b"quick")

    path = os.path.join(os.fspath(tmp_path), "s.sock")
    server = Server(handler, limits=Limits(shutdown_grace=grace))
    await nursery.start(server.serve_unix, path)

    async def connect() -> trio.SocketStream:
        return await trio.open_unix_socket(path)

    idle, busy, hijacked = await connect(), await connect(), await connect()
    await idle.send_all(GOOD)
    await read_until(idle, b"quick")
    await busy.send_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
    await hijacked.send_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\n\r\n")
    await read_until(hijacked, b"\r\n\r\n")
    await trio.testing.wait_all_tasks_blocked()
    assert server.open_http_connections == 2
    assert server.open_hijacked_connections == 1

    start = trio.current_time()
    with trio.fail_after(grace / 2):
        async with trio.open_nursery() as inner:
            inner.start_soon(server.shutdown)
            assert await read_until_closed(idle) == b""
            assert await read_until_closed(hijacked) == b"going away"
            assert not os.path.exists(path)
            release.set()
            data = await read_until_closed(busy)
    assert trio.current_time() - start < grace / 2
    assert data.startswith(b"HTTP/1.1 200 ")
    assert b"connection: close" in data.lower()
    assert data.endswith(b"finished")
    assert server.connections == []
    for stream in (idle, busy, hijacked):
        await stream.aclose()
