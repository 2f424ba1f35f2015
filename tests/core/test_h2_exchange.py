"""One HTTP/2 request as a handler sees it: bodies read and sent in pieces,
errors mapped to a status or a reset code, misuse refused before anything
goes out, hijacked CONNECT streams, clients that reset or stop reading, and
shutdown with streams in flight. Over the test kit's HTTP/2 client (memory
streams), a raw h2 peer for what a polite client never sends, and real
sockets on 127.0.0.1 where the transport matters."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import h2.errors
import h2.settings
import pytest
import trio
import trio.testing

from hijack import (
    ClientDisconnected,
    Handler,
    HijackError,
    HTTPError,
    Limits,
    Request,
    Response,
    UsageError,
)
from hijack._h2_client import H2ClientConnection, open_h2_client
from hijack._h2_exchange import DRAIN_LIMIT, H2Hijacked
from hijack._h2_wire import H2Stream
from hijack.testing import TestClient, open_test_client

from ..leakcheck import leak_fixture

no_leaks = leak_fixture()
pytestmark = pytest.mark.usefixtures("no_leaks")

CODES = h2.errors.ErrorCodes


def request_head(
    method: str = "GET", path: str = "/", *extra: tuple[bytes, bytes]
) -> list[tuple[bytes, bytes]]:
    return [
        (b":method", method.encode()),
        (b":scheme", b"https"),
        (b":path", path.encode()),
        (b":authority", b"testserver"),
        *extra,
    ]


CONNECT_HEAD = [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]


@asynccontextmanager
async def open_h2(
    handler: Handler, **options: Any
) -> AsyncIterator[tuple[TestClient, H2ClientConnection]]:
    async with (
        open_test_client(handler, http2=True, **options) as client,
        client.http2() as h2c,
    ):
        yield client, h2c


async def read_body(stream: H2Stream) -> list[bytes]:
    """The DATA of ``stream`` to its end, one item per frame received."""
    pieces = []
    while data := await stream.receive(None):
        pieces.append(data)
    return pieces


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "hijack" and r.levelno >= logging.ERROR
    ]


# -- response bodies ----------------------------------------------------------


async def test_a_streamed_body_goes_out_frame_by_frame_without_a_length() -> None:
    """An async iterable body: each non-empty chunk is a DATA frame as it is
    produced (no Content-Length); a HEAD gets the head alone; the iterator
    is closed either way."""
    closed: list[str] = []

    async def chunks(method: str) -> AsyncIterator[bytes]:
        try:
            for piece in (b"one", b"", b"two", b"three"):
                yield piece
        finally:
            closed.append(method)

    async def handler(request: Request) -> Response:
        return Response(200, {"x-kind": "stream"}, chunks(request.method))

    async with open_h2(handler) as (_client, h2c):
        stream = await h2c.open_stream(request_head("GET"), end_stream=True)
        head = await h2c.response_head(stream)
        assert head.status == 200 and head.headers.get("x-kind") == "stream"
        assert "content-length" not in head.headers
        assert await read_body(stream) == [b"one", b"two", b"three"]

        response = await h2c.request("HEAD", "/")
        assert response.status == 200 and response.body == b""
    assert closed == ["GET", "HEAD"]


async def test_start_response_sends_the_head_before_the_body_exists() -> None:
    """``start_response`` puts the head on the wire at once; ``send_data``
    adds DATA frames (an empty one is no frame); returning None ends the
    stream."""
    more = trio.Event()

    async def handler(request: Request) -> None:
        await request.start_response(Response(200, {"x-early": "yes"}))
        await more.wait()
        await request.send_data(b"first")
        await request.send_data(b"")
        await request.send_data(b"second")

    async with open_h2(handler) as (_client, h2c):
        stream = await h2c.open_stream(request_head(), end_stream=True)
        head = await h2c.response_head(stream)
        assert head.status == 200 and head.headers.get("x-early") == "yes"
        more.set()
        assert await read_body(stream) == [b"first", b"second"]


async def test_hop_by_hop_headers_never_reach_an_http2_client() -> None:
    """Connection-specific headers are dropped (RFC 9113 8.2.2): an HTTP/1.1
    handler's headers work on HTTP/2 unchanged."""

    async def handler(request: Request) -> Response:
        return Response(
            200,
            [
                ("Connection", "keep-alive"),
                ("Keep-Alive", "timeout=5"),
                ("Transfer-Encoding", "chunked"),
                ("Upgrade", "h2c"),
                ("X-Kept", "1"),
            ],
            b"body",
        )

    async with open_h2(handler) as (_client, h2c):
        response = await h2c.request("GET", "/")
    assert response.status == 200 and response.body == b"body"
    names = {name for name, _ in response.headers}
    assert names.isdisjoint(
        {"connection", "keep-alive", "transfer-encoding", "upgrade"}
    )
    assert response.headers.get("x-kept") == "1"


async def test_a_slow_reader_holds_the_response_at_its_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Flow control on the way out: a client that opens 1000 bytes of
    window gets 1000 bytes, and the handler's ``send_data`` waits until the
    client opens more (within write_timeout)."""
    sent: list[int] = []

    async def handler(request: Request) -> None:
        await request.start_response(Response(200))
        for _ in range(3):
            await request.send_data(b"d" * 1000)
            sent.append(1000)

    settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}
    async with open_test_client(handler, http2=True) as client:
        conn = await client.open_connection()
        async with open_h2_client(conn.stream, settings=settings) as h2c:
            stream = await h2c.open_stream(request_head(), end_stream=True)
            assert (await h2c.response_head(stream)).status == 200
            assert await stream.receive(None) == b"d" * 1000
            await trio.sleep(10)  # the window stays shut: nothing more
            assert sent == [1000]
            assert not stream.inbound
            for expected in (1, 2):
                h2c.h2.increment_flow_control_window(1000, stream_id=stream.id)
                await h2c.flush()
                assert await stream.receive(None) == b"d" * 1000
                await trio.testing.wait_all_tasks_blocked()
                assert len(sent) == expected + 1
            assert await stream.receive(None) == b""


# -- handler errors and misuse --------------------------------------------------


async def test_a_handler_that_raises_gets_a_500_and_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> Response:
        raise RuntimeError("boom")

    async with open_h2(handler) as (_client, h2c):
        response = await h2c.request("GET", "/")
        assert response.status == 500
        assert (await h2c.request("GET", "/again")).status == 500  # conn lives
    assert any("handler failed" in line for line in errors_logged(caplog))
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


async def test_an_http_error_is_answered_with_its_status_and_headers() -> None:
    async def handler(request: Request) -> Response:
        raise HTTPError(401, "who are you", {"www-authenticate": "Basic"})

    async with open_h2(handler) as (_client, h2c):
        response = await h2c.request("GET", "/")
    assert response.status == 401
    assert response.headers.get("www-authenticate") == "Basic"
    assert b"who are you" in response.body


async def test_returning_nothing_without_responding_is_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> None:
        return None

    async with open_h2(handler) as (_client, h2c):
        assert (await h2c.request("GET", "/")).status == 500
    assert any("without responding" in line for line in errors_logged(caplog))


@pytest.mark.parametrize(
    "response",
    [
        Response(200, {"x-bad": "a\r\nb"}),
        Response(200, {"x-bad": "nul\x00"}),
        Response(200, [(b":status", b"204")]),
        Response(103),
    ],
    ids=["crlf", "nul", "pseudo-header", "1xx"],
)
async def test_a_response_that_cannot_be_sent_becomes_a_500(
    response: Response, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad header or a 1xx returned by the handler: nothing of it is
    sent; the client gets a 500 and the log says what was wrong."""

    async def handler(request: Request) -> Response:
        return response

    async with open_h2(handler) as (_client, h2c):
        answer = await h2c.request("GET", "/")
    assert answer.status == 500
    assert "x-bad" not in answer.headers
    assert any("handler returned" in line for line in errors_logged(caplog))


async def test_a_handler_that_fails_mid_response_resets_the_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The head is out, so no 500 can follow: the stream is reset
    (INTERNAL_ERROR), the client sees a broken body, not a short one."""

    async def handler(request: Request) -> Response | None:
        if request.path == "/next":
            return Response(200)
        await request.start_response(Response(200))
        await request.send_data(b"partial")
        raise RuntimeError("halfway")

    async with open_h2(handler) as (_client, h2c):
        stream = await h2c.open_stream(request_head(), end_stream=True)
        assert (await h2c.response_head(stream)).status == 200
        with pytest.raises(ClientDisconnected):
            await read_body(stream)
        assert stream.error is not None and "INTERNAL_ERROR" in stream.error
        assert (await h2c.request("GET", "/next")).status == 200  # conn lives
    assert any("handler failed" in line for line in errors_logged(caplog))


async def test_a_response_returned_after_start_response_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> Response:
        await request.start_response(Response(202))
        await request.send_data(b"streamed")
        return Response(200, body=b"ignored")

    async with open_h2(handler) as (_client, h2c):
        response = await h2c.request("GET", "/")
    assert response.status == 202 and response.body == b"streamed"
    assert any("after start_response" in line for line in errors_logged(caplog))


async def test_misuse_raises_before_anything_is_sent() -> None:
    """Each misuse raises UsageError (HijackError for the hijack contract)
    and sends nothing: the response the handler then makes is intact."""
    raised: list[str] = []

    async def handler(request: Request) -> None:
        with pytest.raises(UsageError) as info:
            await request.send_data(b"too early")
        raised.append(str(info.value))
        with pytest.raises(UsageError) as info:
            await request.start_response(Response(100))
        raised.append(str(info.value))
        await request.start_response(Response(200))
        with pytest.raises(UsageError) as info:
            await request.start_response(Response(200))
        raised.append(str(info.value))
        with pytest.raises(HijackError) as hijack_info:
            await request.hijack()
        raised.append(str(hijack_info.value))
        await request.send_data(b"fine")

    async with open_h2(handler) as (_client, h2c):
        response = await h2c.request("GET", "/")
    assert response.status == 200 and response.body == b"fine"
    assert "start_response() before send_data()" in raised[0]
    assert "1xx" in raised[1]
    assert "already started" in raised[2]
    assert "already started" in raised[3]


async def test_a_2xx_to_connect_must_go_through_hijack() -> None:
    """A 2xx to CONNECT opens a tunnel: ``start_response`` refuses it and
    says to use ``hijack``; a refusal (4xx) is an ordinary answer, streamed
    here, and ends the stream without waiting for a request body."""
    errors: list[str] = []

    async def handler(request: Request) -> None:
        with pytest.raises(UsageError) as info:
            await request.start_response(Response(200))
        errors.append(str(info.value))
        await request.start_response(Response(407, {"proxy-authenticate": "Basic"}))
        await request.send_data(b"no")

    async with open_h2(handler) as (_client, h2c):
        response, tunnel = await h2c.tunnel("example.com:443")
    assert response.status == 407 and tunnel is None
    assert response.body == b"no"
    assert "request.hijack(response)" in errors[0]


async def test_a_2xx_returned_to_connect_is_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handler(request: Request) -> Response:
        return Response(200)

    async with open_h2(handler) as (_client, h2c):
        response, tunnel = await h2c.tunnel("example.com:443")
    assert response.status == 500 and tunnel is None
    assert any("opens a tunnel" in line for line in errors_logged(caplog))


async def test_a_request_is_dead_once_its_handler_returned() -> None:
    """A request kept past its handler: every call raises, nothing is sent
    on a stream that belongs to nobody now."""
    kept: list[Request] = []

    async def handler(request: Request) -> Response:
        kept.append(request)
        return Response(200, body=b"done")

    async with open_h2(handler) as (_client, h2c):
        assert (await h2c.request("POST", "/", body=b"unread")).body == b"done"
        (request,) = kept
        with pytest.raises(UsageError, match="already returned"):
            await request.read()
        with pytest.raises(UsageError, match="already returned"):
            await request.start_response(Response(200))
        with pytest.raises(UsageError, match="already returned"):
            await request.send_data(b"x")
        with pytest.raises(HijackError, match="already returned"):
            await request.hijack(Response(200))
        assert (await h2c.request("GET", "/")).status == 200


async def test_a_handler_that_raises_client_disconnected_resets_its_stream(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """ClientDisconnected (a handler relaying for a client that left) is
    not an error to answer: no 500, no log line; the stream is reset
    (CANCEL) so the client does not wait for a response."""

    async def handler(request: Request) -> Response:
        if request.path == "/next":
            return Response(200)
        raise ClientDisconnected("the other side left")

    async with open_h2(handler) as (_client, h2c):
        stream = await h2c.open_stream(request_head(), end_stream=True)
        with pytest.raises(ClientDisconnected):
            await h2c.response_head(stream)
        assert stream.error is not None and "CANCEL" in stream.error
        assert (await h2c.request("GET", "/next")).status == 200
    assert errors_logged(caplog) == []


# -- request bodies ------------------------------------------------------------


async def test_a_request_body_is_read_in_the_pieces_it_arrives_in() -> None:
    pieces: list[bytes] = []

    async def handler(request: Request) -> Response:
        async for chunk in request.body():
            pieces.append(chunk)
        return Response(200, body=b"%d pieces" % len(pieces))

    async with open_h2(handler) as (_client, h2c):
        stream = await h2c.open_stream(request_head("POST"))
        for piece in (b"a" * 10, b"b" * 20):
            await h2c.send(stream, piece, end=False)
            await trio.testing.wait_all_tasks_blocked()
        await h2c.send(stream, b"c" * 30, end=True)
        assert (await h2c.response_head(stream)).status == 200
        assert await read_body(stream) == [b"3 pieces"]
    assert pieces == [b"a" * 10, b"b" * 20, b"c" * 30]


async def test_a_body_past_max_body_size_is_a_413_without_a_length() -> None:
    """No Content-Length to refuse up front: the read that crosses the
    limit raises 413, and the client, still sending, gets it."""

    async def handler(request: Request) -> Response:
        return Response(200, body=b"%d" % len(await request.read()))

    limits = Limits(max_body_size=1000)
    async with open_h2(handler, limits=limits) as (_client, h2c):
        response = await h2c.request("POST", "/", body=b"x" * 1500)
        assert response.status == 413
        assert (await h2c.request("POST", "/", body=b"x" * 1000)).body == b"1000"


async def test_a_body_slower_than_body_timeout_is_a_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that sends part of a body and stops: 408 after
    body_timeout (counted from the head), without waiting for the rest."""

    async def handler(request: Request) -> Response:
        return Response(200, body=b"%d" % len(await request.read()))

    limits = Limits(body_timeout=20)
    async with open_h2(handler, limits=limits) as (_client, h2c):
        started = trio.current_time()
        stream = await h2c.open_stream(request_head("POST"))
        await h2c.send(stream, b"part", end=False)
        assert (await h2c.response_head(stream)).status == 408
        assert trio.current_time() - started == pytest.approx(20, abs=0.5)
        assert b"too slow" in b"".join(await read_body(stream))


async def test_an_unread_100_continue_body_is_never_asked_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler that answers without reading: no 100 goes out, and the
    server does not wait for a body the client will not send."""

    async def handler(request: Request) -> Response:
        return Response(403, body=b"not you")

    async with open_h2(handler) as (_client, h2c):
        started = trio.current_time()
        head = request_head(
            "POST", "/", (b"expect", b"100-continue"), (b"content-length", b"5")
        )
        stream = await h2c.open_stream(head)
        assert (await h2c.response_head(stream)).status == 403
        assert trio.current_time() == started
        assert stream.id not in h2c.interim
        assert await read_body(stream) == [b"not you"]


async def test_an_unread_body_past_the_drain_limit_is_cut_by_a_reset(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handler answers without reading a big upload: the server reads
    and drops DRAIN_LIMIT of it, sends the whole response, then resets the
    stream (NO_ERROR, RFC 9113 8.1) instead of reading the rest; the
    connection goes on."""

    async def handler(request: Request) -> Response:
        return Response(200, body=b"answer")

    async with open_h2(handler) as (client, h2c):
        stream = await h2c.open_stream(request_head("POST"))
        with pytest.raises(ClientDisconnected):
            await h2c.send(stream, b"u" * (4 * DRAIN_LIMIT), end=True)
        assert (await h2c.response_head(stream)).status == 200
        assert await read_body(stream) == [b"answer"]
        assert stream.error is not None and "NO_ERROR" in stream.error
        assert (await h2c.request("GET", "/")).status == 200
        await trio.testing.wait_all_tasks_blocked()
        (connection,) = client.server.connections
        assert connection._driver.open_streams == 0  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("waiting_in", "sees"),
    [("read", ClientDisconnected), ("elsewhere", trio.Cancelled)],
)
async def test_a_client_that_resets_mid_body_ends_the_handler(
    waiting_in: str,
    sees: type[BaseException],
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """RST_STREAM while the handler works on the request: a handler waiting
    for the body sees ClientDisconnected, one waiting on anything else is
    cancelled; nothing is answered or logged as an error on that stream,
    and the connection serves the next request."""
    got: list[bytes] = []
    ended: list[BaseException] = []
    done = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/next":
            return Response(200)
        try:
            body = request.body()
            got.append(await body.__anext__())
            if waiting_in == "read":
                await body.__anext__()
            else:
                await trio.sleep_forever()
        except BaseException as exc:
            ended.append(exc)
            done.set()
            raise
        return Response(200)  # pragma: no cover - the reset comes first

    async with open_h2(handler) as (client, h2c):
        stream = await h2c.open_stream(request_head("POST", "/upload"))
        await h2c.send(stream, b"first", end=False)
        await trio.testing.wait_all_tasks_blocked()
        h2c.reset(stream, CODES.CANCEL)
        await h2c.flush()
        await done.wait()
        assert (await h2c.request("GET", "/next")).status == 200
        (connection,) = client.server.connections
        assert connection._driver.counts["reset by peer"] == 1  # type: ignore[union-attr]
    assert got == [b"first"]
    assert [type(exc) for exc in ended] == [sees]
    assert errors_logged(caplog) == []


async def test_a_client_that_resets_mid_response_closes_the_body_iterator(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A streamed body the client no longer wants: the reset cancels the
    handler, the body's async iterator is closed (its ``finally`` runs)."""
    closed = trio.Event()

    async def endless() -> AsyncIterator[bytes]:
        try:
            while True:
                yield b"tick " * 1000
        finally:
            closed.set()

    async def handler(request: Request) -> Response:
        if request.path == "/next":
            return Response(200, body=b"next")
        return Response(200, body=endless())

    async with open_h2(handler) as (_client, h2c):
        stream = await h2c.open_stream(request_head(), end_stream=True)
        assert (await h2c.response_head(stream)).status == 200
        assert (await stream.receive(None)).startswith(b"tick ")
        h2c.reset(stream, CODES.CANCEL)
        await h2c.flush()
        with trio.fail_after(5):
            await closed.wait()
        assert (await h2c.request("GET", "/next")).body == b"next"


async def test_the_answer_waits_for_the_end_of_the_upload(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A handler that answers before the body is in: the response waits
    for the client's END_STREAM (curl 7.88 stalls its upload when the
    answer comes first), and the body is dropped, not handed to anyone."""
    answered = trio.Event()

    async def handler(request: Request) -> Response:
        return Response(200, body=b"early")

    async with open_h2(handler) as (_client, h2c), trio.open_nursery() as nursery:
        stream = await h2c.open_stream(request_head("POST"))
        await h2c.send(stream, b"first half", end=False)

        async def wait_head() -> None:
            assert (await h2c.response_head(stream)).status == 200
            answered.set()

        nursery.start_soon(wait_head)
        await trio.sleep(5)
        assert not answered.is_set()
        await h2c.send(stream, b"", end=True)
        await answered.wait()
        assert await read_body(stream) == [b"early"]


async def test_any_async_iterable_is_a_body() -> None:
    """Not only async generators: an object with ``__aiter__`` (and no
    ``aclose``) streams the same way."""

    class Countdown:
        def __aiter__(self) -> AsyncIterator[bytes]:
            return self._count()

        async def _count(self) -> AsyncIterator[bytes]:
            for n in (3, 2, 1):
                yield b"%d" % n

    async def handler(request: Request) -> Response:
        return Response(200, body=Countdown())

    async with open_h2(handler) as (_client, h2c):
        response = await h2c.request("GET", "/")
    assert response.status == 200 and response.body == b"321"


async def test_a_response_to_a_stream_the_client_reset_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that carries on after ClientDisconnected and returns a
    response anyway: nothing is sent on the dead stream, nothing logged,
    the connection goes on."""
    returned = trio.Event()

    async def handler(request: Request) -> Response:
        if request.path == "/next":
            return Response(200)
        with contextlib.suppress(ClientDisconnected):
            await request.read()
        returned.set()
        return Response(200, body=b"nobody listens")

    async with open_h2(handler) as (_client, h2c):
        stream = await h2c.open_stream(request_head("POST", "/upload"))
        await h2c.send(stream, b"some", end=False)
        await trio.testing.wait_all_tasks_blocked()
        h2c.reset(stream, CODES.CANCEL)
        await h2c.flush()
        await returned.wait()
        assert (await h2c.request("GET", "/next")).status == 200
    assert errors_logged(caplog) == []


async def test_expect_100_continue_with_no_body_coming_sends_no_100() -> None:
    """A client that says ``Expect: 100-continue`` but ended its stream
    with the head: reading the body gives the empty body at once, and no
    100 goes out (there is nothing to ask for)."""

    async def handler(request: Request) -> Response:
        return Response(200, body=b"%d" % len(await request.read()))

    async with open_h2(handler) as (_client, h2c):
        head = request_head("POST", "/", (b"expect", b"100-continue"))
        stream = await h2c.open_stream(head, end_stream=True)
        assert (await h2c.response_head(stream)).status == 200
        assert await read_body(stream) == [b"0"]
        assert stream.id not in h2c.interim


# -- hijacked streams ------------------------------------------------------------


async def test_hijack_refuses_what_cannot_open_a_tunnel() -> None:
    """Each wrong hijack raises HijackError and sends nothing; the right
    one then works on the same stream."""
    errors: list[str] = []

    async def handler(request: Request) -> None:
        for wrong in (
            None,
            Response(404),
            Response(200, body=b"a body"),
            Response(200, {"x-bad": "a\r\nb"}),
        ):
            with pytest.raises(HijackError) as info:
                await request.hijack(wrong)
            errors.append(str(info.value))
        stream = await request.hijack(Response(200, {"x-tunnel": "yes"}))
        async with stream:
            await stream.send_all(b"open")

    async with open_h2(handler) as (_client, h2c):
        response, tunnel = await h2c.tunnel("example.com:443")
        assert response.status == 200 and tunnel is not None
        assert response.headers.get("x-tunnel") == "yes"
        assert "content-length" not in response.headers
        assert await tunnel.receive_some() == b"open"
        await tunnel.aclose()
    assert "pass it" in errors[0] and "pass it" in errors[1]
    assert "no body" in errors[2]
    assert "x-bad" in errors[3]


async def test_a_hijacked_stream_refuses_the_http_api(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """After hijack the request's HTTP calls raise HijackError; the stream
    says which one it is; a response returned afterwards is logged and
    dropped; a stream the handler left open is ended for it (END_STREAM)."""
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        if request.method != "CONNECT":
            return Response(204)
        stream = await request.hijack(Response(200))
        assert isinstance(stream, H2Hijacked)
        seen.append(repr(stream))
        seen.append(str(stream.stream_id))
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: request.hijack(Response(200)),
            request.read,
            lambda: request.send_data(b"x"),
            lambda: request.start_response(Response(200)),
        ]
        for call in calls:
            with pytest.raises(HijackError) as info:
                await call()
            seen.append(str(info.value))
        await stream.send_all(b"bye")
        return Response(204)  # too late: the stream is not HTTP any more

    async with open_h2(handler) as (_client, h2c):
        response, tunnel = await h2c.tunnel("example.com:443")
        assert response.status == 200 and tunnel is not None
        assert await tunnel.receive_some() == b"bye"
        assert await tunnel.receive_some() == b""  # ended by the server
        tunnel_id = tunnel.h2_stream.id
        await tunnel.aclose()
        assert (await h2c.request("GET", "/")).status == 204  # conn lives
    assert f"stream={tunnel_id}" in seen[0] and seen[1] == str(tunnel_id)
    assert "already hijacked" in seen[2]
    assert all("was hijacked" in message for message in seen[3:6])
    assert any("after hijacking" in line for line in errors_logged(caplog))


@pytest.mark.parametrize(
    ("error", "logged"),
    [(HTTPError(400, "too late"), "after hijacking"), (RuntimeError(), "failed")],
    ids=["http-error", "exception"],
)
async def test_an_error_after_hijack_is_logged_not_answered(
    error: Exception, logged: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The 2xx is out and the stream belongs to the handler: an error it
    raises is logged, no status follows, the stream is ended for it."""

    async def handler(request: Request) -> None:
        await request.hijack(Response(200))
        raise error

    async with open_h2(handler) as (_client, h2c):
        response, tunnel = await h2c.tunnel("example.com:443")
        assert response.status == 200 and tunnel is not None
        assert await tunnel.receive_some() == b""  # no status: the stream ends
        await tunnel.aclose()
    assert any(logged in line for line in errors_logged(caplog))


async def test_a_reset_tunnel_breaks_its_owners_reads() -> None:
    """The client resets a hijacked stream: its owner is not cancelled (it
    may hold other resources) but its read, and every write after, raises
    ``trio.BrokenResourceError``, the trio error for a broken stream."""
    outcome: list[str] = []
    reading = trio.Event()

    async def handler(request: Request) -> Response | None:
        if request.method != "CONNECT":
            return Response(200)
        stream = await request.hijack(Response(200))
        async with stream:
            reading.set()
            try:
                await stream.receive_some()
            except trio.BrokenResourceError as exc:
                outcome.append(str(exc))
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_all(b"late")
            outcome.append("write refused")
            with pytest.raises(trio.BrokenResourceError):
                await stream.send_eof()
            outcome.append("write refused")
        return None

    async with open_h2(handler) as (_client, h2c):
        response, tunnel = await h2c.tunnel("example.com:443")
        assert response.status == 200 and tunnel is not None
        await reading.wait()
        h2c.reset(tunnel.h2_stream, CODES.CANCEL)
        await h2c.flush()
        await tunnel.aclose()
        assert (await h2c.request("GET", "/")).status == 200  # conn lives
    assert len(outcome) == 3 and "reset" in outcome[0]
    assert outcome[1:] == ["write refused"] * 2


async def test_a_client_that_ended_its_side_before_the_hijack() -> None:
    """CONNECT, some bytes and END_STREAM, all before the handler hijacks:
    the owner reads the bytes, then EOF, and can still answer (a half-closed
    stream, as a socket after shutdown(SHUT_WR))."""
    arrived = trio.Event()

    async def handler(request: Request) -> None:
        await arrived.wait()
        stream = await request.hijack(Response(200))
        async with stream:
            received = b""
            while data := await stream.receive_some():
                received += data
            await stream.send_all(b"got " + received)

    async with open_h2(handler) as (_client, h2c):
        stream = await h2c.open_stream(CONNECT_HEAD)
        await h2c.send(stream, b"request", end=True)
        await trio.testing.wait_all_tasks_blocked()
        arrived.set()
        assert (await h2c.response_head(stream)).status == 200
        assert await read_body(stream) == [b"got request"]
