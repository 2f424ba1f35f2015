"""pytest plugin of hijack (entry point ``pytest11``): fixtures for
pytest-trio users who test hijack handlers.

Import-light on purpose: pytest loads this module in every project where
hijack is installed, so it imports neither hijack nor trio; a fixture
imports them when a test uses it.

Fixture:

``hijack_client``
    A factory: ``client = await hijack_client(handler_or_server, **options)``
    returns a :class:`hijack.testing.TestClient` (the options are those of
    :func:`hijack.testing.open_test_client`). Every server it started is
    shut down when the test ends. Needs pytest-trio (it uses its
    ``nursery`` fixture), so the test runs under ``autojump_clock`` if asked.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import trio

    from hijack import Handler, Server
    from hijack.testing import TestClient

    ClientFactory = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def hijack_client(nursery: trio.Nursery) -> AsyncIterator[ClientFactory]:
    """``await hijack_client(app, **options)``: a test client for ``app``."""
    import trio

    from hijack.testing import open_test_client

    done = trio.Event()
    running: list[trio.Event] = []

    async def run(
        app: Handler | Server,
        options: dict[str, Any],
        *,
        task_status: trio.TaskStatus[TestClient],
    ) -> None:
        stopped = trio.Event()
        running.append(stopped)
        try:
            async with open_test_client(app, **options) as client:
                task_status.started(client)
                await done.wait()
        finally:
            stopped.set()

    async def start(app: Handler | Server, **options: Any) -> TestClient:
        # The server's nursery lives in pytest-trio's nursery fixture, not in
        # the test's task: a nursery must be closed by the task that opened it.
        client: TestClient = await nursery.start(run, app, options)
        return client

    yield start
    done.set()
    for stopped in running:
        await stopped.wait()
