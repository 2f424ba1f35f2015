"""Shared fixtures: servers on real loopback ports (port 0), raw-socket helpers."""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from hijack import ProxyProtocol, Request, Response, Server
from hijack.testing import MemoryListener

from .daemons import Daemons
from .helpers import read_until_closed
from .leakcheck import leak_fixture

Handler = Callable[[Request], Awaitable[Response | None]]
StartServer = Callable[..., Awaitable[tuple[Server, int]]]


# One time limit for every test, instead of a safety net in each: a hang
# fails the test it happens in, named, instead of stalling the run. Real
# seconds, kept by a timer thread: a deadline on trio's clock would not do,
# since autojump_clock jumps to any deadline whenever every task waits, even
# on a loopback socket whose answer is a microsecond away.
TEST_TIME_LIMIT = 60.0


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        inner = getattr(getattr(item.obj, "hypothesis", None), "inner_test", None)
        if inner is not None and inspect.iscoroutinefunction(inner):
            item.obj.hypothesis.inner_test = _with_time_limit(inner)
        elif inspect.iscoroutinefunction(item.obj):
            item.obj = _with_time_limit(item.obj)


def _with_time_limit(test: Callable[..., Awaitable[None]]) -> Callable[..., Any]:
    """``test``, cancelled and failed after TEST_TIME_LIMIT real seconds.
    (Not a fixture: pytest-trio runs only the trio fixtures a test names,
    never autouse ones.)"""

    @functools.wraps(test)
    async def limited(*args: Any, **kwargs: Any) -> None:
        token = trio.lowlevel.current_trio_token()
        scope = trio.CancelScope()

        def expire() -> None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(scope.cancel)

        timer = threading.Timer(TEST_TIME_LIMIT, expire)
        timer.start()
        try:
            with scope:
                await test(*args, **kwargs)
        finally:
            timer.cancel()
        if scope.cancelled_caught:
            raise TimeoutError(f"the test ran past its {TEST_TIME_LIMIT:g} s limit")

    return limited


# Every test that starts a server must leave no task and no fd behind: the
# check runs after the server fixtures' teardown, since they depend on it.
no_leaks = leak_fixture()


@pytest.fixture
async def start_server(
    nursery: trio.Nursery, no_leaks: None
) -> AsyncIterator[StartServer]:
    """``server, port = await start_server(handler, **Server kwargs)``: a
    server on 127.0.0.1, port 0 (``proxy_protocol``: its listener's policy),
    shut down (grace 0) at the end of the test."""
    servers: list[Server] = []

    async def start(
        handler: Handler,
        *,
        proxy_protocol: ProxyProtocol | None = None,
        **kwargs: Any,
    ) -> tuple[Server, int]:
        server = Server(handler, **kwargs)
        listeners = await nursery.start(
            functools.partial(server.serve_tcp, 0, proxy_protocol=proxy_protocol)
        )
        servers.append(server)
        return server, listeners[0].socket.getsockname()[1]

    yield start
    for server in servers:
        await server.shutdown(grace=0)


@pytest.fixture
async def daemons(nursery: trio.Nursery, no_leaks: None) -> AsyncIterator[Daemons]:
    """``await daemons.start(command, listening=[(host, port)])``: real
    daemons (HAProxy, nginx), stopped at the end of the test."""
    running = Daemons(nursery)
    yield running
    await running.stop()


@pytest.fixture
async def memory_server(
    nursery: trio.Nursery, no_leaks: None
) -> AsyncIterator[Callable[..., Awaitable[tuple[Server, MemoryListener]]]]:
    """``server, listener = await memory_server(handler, **kwargs)``."""

    async def start(
        handler: Handler, *, listener: MemoryListener | None = None, **kwargs: Any
    ) -> tuple[Server, MemoryListener]:
        server = Server(handler, **kwargs)
        listener = listener or MemoryListener()
        await nursery.start(server.serve_listeners, [listener])
        return server, listener

    yield start


async def trickle_until_answered(
    client: trio.abc.Stream, data: bytes, interval: float = 1.0
) -> tuple[float, bytes]:
    """Send ``data`` one byte per ``interval`` while reading; return how long
    after the start the server's answer began, and everything it sent."""
    start = trio.current_time()

    async def trickle() -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            for byte in data:
                await client.send_all(bytes([byte]))
                await trio.sleep(interval)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        first = await client.receive_some()
        answered_after = trio.current_time() - start
        rest = await read_until_closed(client)
        nursery.cancel_scope.cancel()
    return answered_after, bytes(first) + rest
