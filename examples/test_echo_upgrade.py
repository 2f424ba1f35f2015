"""How to test your own upgrade handler with hijack.testing (no socket).

    pip install hijack pytest pytest-trio
    pytest examples/test_echo_upgrade.py     # with trio_mode = true

The handler below switches to a made-up line protocol ("echo"): after the
101 it answers each line in upper case. The tests drive the real
:class:`hijack.Server` over memory streams, through the ``hijack_client``
fixture of hijack's pytest plugin (``hijack.testing.open_test_client`` is
the same thing without pytest).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio

from hijack import Limits, Request, Response
from hijack.testing import TestClient, UpgradeRefusedError


async def echo_upgrade(request: Request) -> Response | None:
    """The handler under test: ``Upgrade: echo`` or a 426."""
    if "echo" not in request.headers.tokens("upgrade"):
        return Response(426, {"upgrade": "echo"}, b"speak echo\n")
    stream = await request.hijack(
        Response(101, {"connection": "upgrade", "upgrade": "echo"})
    )
    async with stream:  # the handler owns the stream; closed when done
        buffer = b""
        while data := await stream.receive_some():
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                await stream.send_all(line.upper() + b"\n")
    return None


ClientFactory = Callable[..., Awaitable[TestClient]]


async def test_upgrade_then_talk_the_new_protocol(hijack_client: ClientFactory) -> None:
    client = await hijack_client(echo_upgrade)
    head, stream = await client.upgrade("/", "echo")
    async with stream:
        assert head.status == 101
        assert head.headers.get("upgrade") == "echo"
        await stream.send_all(b"hello\nwor")
        await stream.send_all(b"ld\n")
        assert await stream.receive_some() == b"HELLO\n"
        assert await stream.receive_some() == b"WORLD\n"
        # The server counts it as hijacked until the handler closes it.
        assert client.server.open_hijacked_connections == 1
        await stream.send_eof()  # the handler's loop ends, it closes
        assert await stream.receive_some() == b""


async def test_plain_request_is_refused(hijack_client: ClientFactory) -> None:
    client = await hijack_client(echo_upgrade)
    response = await client.request("GET", "/")
    assert response.status == 426
    with pytest.raises(UpgradeRefusedError) as refused:
        await client.upgrade("/", "websocket")
    assert refused.value.response.headers.get("upgrade") == "echo"


async def test_server_limits_apply_on_the_mock_clock(
    hijack_client: ClientFactory, autojump_clock: trio.testing.MockClock
) -> None:
    # An hour-long idle timeout takes no real time under autojump_clock.
    client = await hijack_client(echo_upgrade, limits=Limits(idle_timeout=3600))
    async with client.connection() as conn:
        assert (await conn.request("GET", "/")).status == 426
        await conn.connection.wait_closed()  # the server's idle timeout
        assert trio.current_time() >= 3600
