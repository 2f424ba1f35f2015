"""HTTP/2 in the Server: requests, bodies, hijacked CONNECT streams and the
test kit's HTTP/2 client, over memory streams (the real clients are in
test_h2_clients.py, the floods in test_h2_limits.py)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from hijack import (
    ClientDisconnected,
    Handler,
    Hijacked,
    HijackError,
    Limits,
    Request,
    Response,
    Server,
    StreamHandler,
)
from hijack._h2_wire import StreamIO
from hijack.testing import H2ClientConnection, TestClient, open_test_client

from ..leakcheck import leak_fixture

no_leaks = leak_fixture()
pytestmark = pytest.mark.usefixtures("no_leaks")


@asynccontextmanager
async def open_h2(
    handler: Handler, **options: Any
) -> AsyncIterator[tuple[TestClient, H2ClientConnection]]:
    """A test client of ``handler`` and one HTTP/2 connection to it."""
    async with open_test_client(handler, **options) as client, client.http2() as h2c:
        yield client, h2c


async def echo_handler(request: Request) -> Response | None:
    if request.method == "CONNECT":
        stream = await request.hijack(Response(200))
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data.upper())
        return None
    body = await request.read()
    return Response(
        200,
        {"x-version": request.http_version, "x-host": request.headers.get("host", "")},
        b"got %d" % len(body),
    )


async def test_request_and_body() -> None:
    async with open_h2(echo_handler, http2=True) as (_client, h2c):
        response = await h2c.request("GET", "/", authority="example.org")
        assert response.status == 200
        assert response.headers.get("x-version") == "2"
        assert response.headers.get("x-host") == "example.org"
        assert response.body == b"got 0"
        # Bigger than every window: flow control carries it through.
        response = await h2c.request("POST", "/", body=b"x" * 300_000)
        assert response.body == b"got 300000"


async def test_http11_still_served_when_http2_is_on() -> None:
    async with open_test_client(echo_handler, http2=True) as client:
        response = await client.request("POST", "/", body=b"abc")
        assert response.status == 200 and response.body == b"got 3"
        assert response.headers.get("x-version") == "1.1"


async def test_many_streams_on_one_connection() -> None:
    results: list[bytes] = []
    async with (
        open_h2(echo_handler, http2=True) as (_client, h2c),
        trio.open_nursery() as nursery,
    ):

        async def one(n: int) -> None:
            response = await h2c.request("POST", "/", body=b"y" * n)
            results.append(response.body)

        for n in range(20):
            nursery.start_soon(one, n * 1000)
    assert sorted(results) == sorted(b"got %d" % (n * 1000) for n in range(20))


async def test_connect_hijack_streams_both_ways() -> None:
    async with open_h2(echo_handler, http2=True) as (_client, h2c):
        response, tunnel = await h2c.tunnel("example.com:443")
        assert response.status == 200 and tunnel is not None
        await tunnel.send_all(b"hello")
        assert await tunnel.receive_some() == b"HELLO"
        big = b"z" * 500_000  # past the windows both ways
        async with trio.open_nursery() as nursery:
            nursery.start_soon(tunnel.send_all, big)
            got = b""
            while len(got) < len(big):
                got += await tunnel.receive_some()
        assert got == big.upper()
        await tunnel.send_eof()
        assert await tunnel.receive_some() == b""
        await tunnel.aclose()
        # The connection goes on serving other streams.
        assert (await h2c.request("GET", "/")).status == 200


async def _hijack_pairs(
    h2c: H2ClientConnection, streams: trio.MemoryReceiveChannel[trio.abc.Stream]
) -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
    response, client_end = await h2c.tunnel("example.com:443")
    assert response.status == 200 and client_end is not None
    server_end = await streams.receive()
    assert isinstance(server_end, trio.abc.HalfCloseableStream)
    return server_end, client_end


async def test_hijacked_stream_is_a_half_closeable_stream() -> None:
    """trio's own conformance check, on a hijacked HTTP/2 stream and the
    test kit's end of it."""
    send, receive = trio.open_memory_channel[trio.abc.Stream](1)

    async def handler(request: Request) -> None:
        stream = await request.hijack(Response(200))
        stream.detach()  # the test owns it
        await send.send(stream)

    async with open_h2(handler, http2=True) as (_client, h2c):
        await trio.testing.check_half_closeable_stream(
            lambda: _hijack_pairs(h2c, receive), None
        )


async def test_bytes_sent_before_the_hijack_are_replayed() -> None:
    arrived = trio.Event()
    seen: list[bytes] = []

    async def handler(request: Request) -> None:
        await arrived.wait()
        stream = await request.hijack(Response(200))
        seen.append(stream.buffered)
        async with stream:
            seen.append(bytes(await stream.receive_some()))  # replayed
            seen.append(bytes(await stream.receive_some()))

    async with open_h2(handler, http2=True) as (_client, h2c):
        stream = await h2c.open_stream(
            [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
        )
        await h2c.send(stream, b"early", end=False)
        await trio.testing.wait_all_tasks_blocked()
        arrived.set()
        assert (await h2c.response_head(stream)).status == 200
        await h2c.send(stream, b"later", end=True)
        while await stream.receive(None):
            pass
    assert seen == [b"early", b"early", b"later"]


async def test_101_on_http2_is_a_usage_error_that_says_what_to_do() -> None:
    errors: list[HijackError] = []

    async def handler(request: Request) -> Response:
        try:
            await request.hijack(Response(101))
        except HijackError as exc:
            errors.append(exc)
        return Response(400)

    async with open_h2(handler, http2=True, extended_connect=True) as (_client, h2c):
        response, stream = await h2c.tunnel(
            "testserver", protocol="websocket", target="/ws"
        )
    assert response.status == 400 and stream is None
    assert "no 101" in str(errors[0]) and "Response(200)" in str(errors[0])


async def test_hijack_of_a_plain_request_is_refused() -> None:
    errors: list[HijackError] = []

    async def handler(request: Request) -> Response:
        with pytest.raises(HijackError) as info:
            await request.hijack(Response(200))
        errors.append(info.value)
        return Response(200, body=b"normal")

    async with open_h2(handler, http2=True) as (_client, h2c):
        response = await h2c.request("GET", "/")
    assert response.body == b"normal"
    assert "only a CONNECT" in str(errors[0])


async def test_extended_connect_is_advertised_only_when_served() -> None:
    async with open_h2(echo_handler, http2=True) as (_client, h2c):
        assert h2c.h2.remote_settings.enable_connect_protocol == 0
        # A client that sends :protocol anyway: that stream is refused,
        # the connection goes on.
        response_stream = await h2c.open_stream(
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"https"),
                (b":path", b"/"),
                (b":authority", b"testserver"),
            ]
        )
        with pytest.raises(ClientDisconnected):
            await h2c.response_head(response_stream)
        assert (await h2c.request("GET", "/")).status == 200

    async def served(request: Request) -> Response:
        return Response(200)

    served.serves_extended_connect = True  # type: ignore[attr-defined]
    async with open_h2(served, http2=True) as (_client, h2c):
        assert h2c.h2.remote_settings.enable_connect_protocol == 1


async def test_a_slow_reader_stops_the_sender(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Flow control is the backpressure: a handler that does not read
    holds the client at one stream window, and the server buffers no more."""
    release = trio.Event()
    buffered: list[int] = []

    async def handler(request: Request) -> Response:
        await release.wait()
        return Response(200, body=b"%d" % len(await request.read()))

    limits = Limits(h2_stream_window=65535)
    async with (
        open_h2(handler, http2=True, limits=limits) as (client, h2c),
        trio.open_nursery() as nursery,
    ):
        stream = await h2c.open_stream(
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":path", b"/"),
                (b":authority", b"t"),
            ]
        )
        sent = trio.Event()

        async def send() -> None:
            await h2c.send(stream, b"q" * 1_000_000, end=True)
            sent.set()

        nursery.start_soon(send)
        await trio.sleep(5)
        assert not sent.is_set()
        (connection,) = client.server.connections
        driver = connection._driver
        server_streams = driver.wire.streams  # type: ignore[union-attr]
        buffered.extend(s.inbound_size for s in server_streams.values())
        release.set()
        response = await h2c.response_head(stream)
        assert response.status == 200
        body = b""
        while data := await stream.receive(None):
            body += data
        assert body == b"1000000"
    assert buffered and max(buffered) <= 65535


async def test_streams_over_the_limit_are_refused_one_by_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    release = trio.Event()

    async def handler(request: Request) -> Response:
        await release.wait()
        return Response(200, body=b"ok")

    limits = Limits(h2_max_concurrent_streams=3)
    async with open_h2(handler, http2=True, limits=limits) as (client, h2c):
        assert h2c.h2.remote_settings.max_concurrent_streams == 3
        get = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/"),
            (b":authority", b"t"),
        ]
        # The client ignores the advertised limit (h2 itself would not).
        h2c.h2.remote_settings.max_concurrent_streams = 10
        h2c.h2.remote_settings.acknowledge()
        streams = [await h2c.open_stream(get, end_stream=True) for _ in range(4)]
        with pytest.raises(ClientDisconnected):
            await h2c.response_head(streams[3])
        release.set()
        for stream in streams[:3]:
            assert (await h2c.response_head(stream)).status == 200
            while await stream.receive(None):
                pass
        assert (await h2c.request("GET", "/")).status == 200
        (connection,) = client.server.connections
        assert connection._driver.counts["refused"] == 1  # type: ignore[union-attr]


async def test_hijacked_streams_are_counted_and_keep_the_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_test_client(echo_handler, http2=True, limits=Limits()) as client:
        server = client.server
        async with client.http2() as h2c:
            _, first = await h2c.tunnel("a:443")
            _, second = await h2c.tunnel("b:443")
            assert first is not None and second is not None
            await trio.testing.wait_all_tasks_blocked()
            assert server.open_hijacked_streams == 2
            assert server.open_http_connections == 1
            await first.aclose()
            await trio.sleep(1)
            assert server.open_hijacked_streams == 1
            await second.send_all(b"still")
            assert await second.receive_some() == b"STILL"
            await second.aclose()
            await trio.sleep(1)
            assert server.open_hijacked_streams == 0
            assert len(server.connections) == 1


async def test_shutdown_sends_goaway_and_lets_hijacked_streams_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    said_goodbye = trio.Event()

    async def handler(request: Request) -> None:
        stream = await request.hijack(Response(200))
        async with stream:
            await request.connection.shutdown_requested.wait()
            await stream.send_all(b"bye")
            said_goodbye.set()

    async with open_test_client(handler, http2=True) as client:
        server = client.server
        async with client.http2() as h2c:
            _, tunnel = await h2c.tunnel("a:443")
            assert tunnel is not None
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.shutdown, 30)
                assert await tunnel.receive_some() == b"bye"
                assert await tunnel.receive_some() == b""  # the owner closed it
                await said_goodbye.wait()
            assert h2c.goaway is not None and h2c.goaway.error_code == 0
            await tunnel.aclose()
        assert not server.connections


async def test_shutdown_grace_resets_what_is_left(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: Request) -> None:
        stream = await request.hijack(Response(200))
        async with stream:
            await trio.sleep_forever()  # ignores shutdown_requested

    async with open_test_client(handler, http2=True) as client:
        server = client.server
        async with client.http2() as h2c:
            _, tunnel = await h2c.tunnel("a:443")
            assert tunnel is not None
            started = trio.current_time()
            await server.shutdown(grace=5)
            assert trio.current_time() - started == pytest.approx(5, abs=0.5)
            with pytest.raises(trio.BrokenResourceError):
                await tunnel.receive_some()
            assert isinstance(tunnel, StreamIO)
            await tunnel.aclose()
        assert not server.connections


async def test_an_unread_body_is_drained_and_the_stream_forgotten(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The handler answers without reading: the body (more than a window)
    is read and dropped, the client's send completes, the stream leaves the
    server's table (curl 7.88 fails on an early RST_STREAM NO_ERROR)."""

    async def early(request: Request) -> Response:
        return Response(200, body=b"early")

    async with open_h2(early, http2=True) as (client, h2c):
        stream = await h2c.open_stream(
            [
                (b":method", b"POST"),
                (b":scheme", b"https"),
                (b":path", b"/"),
                (b":authority", b"t"),
            ]
        )
        with trio.fail_after(5):
            await h2c.send(stream, b"u" * 200_000, end=True)
        assert (await h2c.response_head(stream)).status == 200
        assert await stream.receive(None) == b"early"
        await trio.testing.wait_all_tasks_blocked()
        (connection,) = client.server.connections
        assert connection._driver.open_streams == 0  # type: ignore[union-attr]
        assert stream.error is None  # ended, not reset


async def test_a_full_window_before_the_hijack_is_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The client fills the stream's window before the handler hijacks:
    the buffered bytes are replayed and their window reopened, so the rest
    flows."""
    arrived = trio.Event()
    received: list[int] = []

    async def handler(request: Request) -> None:
        await arrived.wait()
        stream = await request.hijack(Response(200))
        total = 0
        async with stream:
            while data := await stream.receive_some():
                total += len(data)
        received.append(total)

    async with open_h2(handler, http2=True) as (_client, h2c):
        stream = await h2c.open_stream(
            [(b":method", b"CONNECT"), (b":authority", b"example.com:443")]
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(h2c.send, stream, b"f" * 300_000, end=True)
            )
            await trio.testing.wait_all_tasks_blocked()
            arrived.set()
        assert (await h2c.response_head(stream)).status == 200
        while await stream.receive(None):
            pass
    assert received == [300_000]


async def test_expect_100_continue(autojump_clock: trio.testing.MockClock) -> None:
    """A client that waits for a 100 before its body gets one when the
    handler reads the body; one announcing too big a body gets 413 and no
    100."""

    async def read(request: Request) -> Response:
        return Response(200, body=b"%d" % len(await request.read()))

    limits = Limits(max_body_size=1000)
    async with open_h2(read, http2=True, limits=limits) as (_client, h2c):
        head = [
            (b":method", b"POST"),
            (b":scheme", b"https"),
            (b":path", b"/"),
            (b":authority", b"t"),
            (b"expect", b"100-continue"),
        ]
        stream = await h2c.open_stream([*head, (b"content-length", b"5")])
        assert (await h2c.informational(stream)).status == 100
        await h2c.send(stream, b"12345", end=True)
        final = await h2c.response_head(stream)
        assert final.status == 200
        assert await stream.receive(None) == b"5"

        started = trio.current_time()
        big = await h2c.open_stream([*head, (b"content-length", b"5000")])
        assert (await h2c.response_head(big)).status == 413
        assert trio.current_time() - started < 1  # no wait for a body
        assert big.id not in h2c.interim


async def test_sniff_still_sees_the_first_bytes_with_http2_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """``Server(sniff=..., http2=True)``: the preface goes to HTTP/2, a
    sniffed protocol (SOCKS5's 0x05) to its stream handler, the rest to
    HTTP/1.1, on one port."""

    async def upper(stream: Hijacked) -> None:
        data = await stream.receive_some()
        await stream.send_all(bytes(data).upper())

    def sniff(first: bytes) -> StreamHandler | None:
        return upper if first.startswith(b"\x05") else None

    server = Server(echo_handler, http2=True, sniff=sniff)
    async with open_test_client(server) as client:
        socks = await client.listener.connect()
        await socks.send_all(b"\x05hello")
        got = b""
        while chunk := await socks.receive_some():
            got += chunk
        assert got == b"\x05HELLO"
        await socks.aclose()
        assert (await client.request("GET", "/")).headers.get("x-version") == "1.1"
        async with client.http2() as h2c:
            response = await h2c.request("GET", "/")
            assert response.headers.get("x-version") == "2"
