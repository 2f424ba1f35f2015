"""Fuzz the request path: HTTP-shaped and random bytes, split any way.

For every input the server must answer with valid status lines or just
close, never log an unexpected failure, forget the connection, and serve
the next client.
"""

from __future__ import annotations

import contextlib
import logging
import re

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hijack import Limits, Request, Response, Server
from hijack.testing import MemoryListener

from ..helpers import read_until_closed, splits

STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] [^\r\n]*\r\n")
GOOD = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
LIMITS = Limits(max_head_size=2048, max_target_size=256, max_body_size=1024)

# Pieces that make most inputs reach deep into the parser, not just fail on
# the first byte.
PIECES = [
    b"GET / HTTP/1.1\r\n",
    b"POST /p HTTP/1.1\r\n",
    b"CONNECT h:443 HTTP/1.1\r\n",
    b"GET / HTTP/1.0\r\n",
    b"Host: x\r\n",
    b"Host: y\r\n",
    b"Content-Length: 5\r\n",
    b"Content-Length: 99999\r\n",
    b"Content-Length: -1\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: gzip\r\n",
    b"Expect: 100-continue\r\n",
    b"Connection: close\r\n",
    b"Connection: keep-alive\r\n",
    b"Upgrade: echo\r\n",
    b" folded\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b"5\r\nhello\r\n",
    b"0\r\n\r\n",
    b"ffffffff\r\n",
    b"hello",
    b"\x00",
    b"\x16\x03\x01",
    b"\xff",
]

message = st.lists(
    st.one_of(st.sampled_from(PIECES), st.binary(max_size=20)), max_size=30
).map(b"".join)


async def handler(request: Request) -> Response | None:
    """Reads the body, answers; hijacks an ``Upgrade: echo`` and echoes."""
    if request.headers.get("upgrade") == "echo":
        async with await request.hijack(Response(101, {"upgrade": "echo"})) as stream:
            for _ in range(100):
                data = await stream.receive_some()
                if not data:
                    break
                await stream.send_all(data)
        return None
    body = await request.read()
    return Response(200, body=b"%d" % len(body))


def check_answer(data: bytes) -> None:
    """Empty, or responses that each start with a valid status line."""
    if data:
        assert STATUS_LINE.match(data), data[:100]
        assert data.count(b"HTTP/1.1 ") == len(STATUS_LINE.findall(data)), data


async def talk(listener: MemoryListener, pieces: list[bytes]) -> bytes:
    client = await listener.connect()
    async with client:
        with contextlib.suppress(trio.BrokenResourceError):
            for piece in pieces:
                await client.send_all(piece)
                await trio.testing.wait_all_tasks_blocked()
            await client.send_eof()
        return await read_until_closed(client)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=message, cuts=st.lists(st.integers(0, 1000), max_size=8))
async def test_any_bytes_any_split(
    data: bytes, cuts: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    server = Server(handler, limits=LIMITS)
    listener = MemoryListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, [listener])
        check_answer(await talk(listener, splits(data, cuts)))
        await trio.testing.wait_all_tasks_blocked()
        assert server.connections == []
        answer = await talk(listener, [GOOD])
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        await server.shutdown(grace=0)
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures == [], [r.getMessage() for r in failures]
