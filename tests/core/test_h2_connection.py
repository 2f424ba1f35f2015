"""One HTTP/2 connection as a peer sees it: which protocol a connection
gets (ALPN, the preface, what is neither), the peer's GOAWAY and EOF, a
peer that stops reading, SETTINGS that reopen windows, malformed heads,
and shutdown with streams in flight. Over the test kit (memory streams, a
lockstep pair for a peer that does not read), a raw h2 peer for what the
kit's client would never send, and real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
import trio
import trio.testing

from hijack import ClientDisconnected, Hijacked, Limits, Request, Response, Server
from hijack._h2_client import open_h2_client
from hijack._h2_meter import PREFACE
from hijack.testing import MemoryListener, open_test_client

from ..helpers import reset, tls_contexts
from ..leakcheck import leak_fixture

no_leaks = leak_fixture()
pytestmark = pytest.mark.usefixtures("no_leaks")

CODES = h2.errors.ErrorCodes
StartServer = Callable[..., Awaitable[tuple[Server, int]]]


async def version(request: Request) -> Response:
    return Response(200, {"x-version": request.http_version}, b"ok")


def request_head(path: str = "/") -> list[tuple[bytes, bytes]]:
    return [
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":path", path.encode()),
        (b":authority", b"testserver"),
    ]


class RawPeer:
    """h2's own client connection over a stream, driven by hand: it sends
    what it is told (validation off) and collects the server's events."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        config = h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.events: list[h2.events.Event] = []
        self.h2.initiate_connection()

    async def flush(self) -> None:
        await self.stream.send_all(self.h2.data_to_send())

    async def read_until_closed(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError):
            while data := await self.stream.receive_some(65536):
                self.events += self.h2.receive_data(data)
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError
                ):
                    await self.flush()

    async def read_then_stop(
        self,
        nursery: trio.Nursery,
        *,
        until: Callable[[], bool],
        request: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Over a lockstep pair (a write blocks until the other side
        reads): write in a task of ``nursery``, read here (sending
        ``request`` once the server's SETTINGS are in) until ``until()``;
        from then on read nothing."""
        outgoing = trio.Event()

        async def write() -> None:
            nonlocal outgoing
            while True:
                if data := self.h2.data_to_send():
                    await self.stream.send_all(data)
                await outgoing.wait()
                outgoing = trio.Event()

        nursery.start_soon(write)
        while not until():
            self.events += self.h2.receive_data(await self.stream.receive_some(65536))
            if request and self.of(h2.events.RemoteSettingsChanged):
                self.h2.send_headers(1, request, end_stream=True)
                request = None
            outgoing.set()

    def of(self, kind: type[h2.events.Event]) -> list[h2.events.Event]:
        return [event for event in self.events if isinstance(event, kind)]


# -- which protocol ------------------------------------------------------------


@pytest.mark.parametrize(("offered", "expected"), [("h2", "2"), ("http/1.1", "1.1")])
async def test_alpn_picks_the_protocol_on_tls(offered: str, expected: str) -> None:
    """On TLS the client's ALPN decides: ``h2`` gets HTTP/2, a client that
    offers only ``http/1.1`` gets HTTP/1.1 from the same server."""
    server_context, client_context = tls_contexts("testserver")
    client_context.set_alpn_protocols([offered])
    async with open_test_client(
        version,
        http2=True,
        ssl_context=server_context,
        client_ssl_context=client_context,
    ) as client:
        if offered == "h2":
            async with client.http2() as h2c:
                response = await h2c.request("GET", "/")
                assert response.headers.get("x-version") == expected
        else:
            answer = await client.request("GET", "/")
            assert answer.headers.get("x-version") == expected


async def test_a_truncated_preface_is_not_http2() -> None:
    """The first bytes of the preface, then EOF: that is no HTTP/2 client;
    the bytes go to HTTP/1.1, which answers 400 (``PRI`` is no request it
    serves) and closes."""
    async with open_test_client(version, http2=True) as client:
        stream = await client.listener.connect()
        await stream.send_all(PREFACE[:10])
        await stream.send_eof()
        answer = b""
        while data := await stream.receive_some():
            answer += data
        await stream.aclose()
    assert answer.startswith(b"HTTP/1.1 4"), answer[:40]


async def test_a_client_silent_from_the_start_is_closed_after_head_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Neither preface nor request: the connection is closed after
    head_timeout, with nothing sent (there is no protocol to say it in)."""
    limits = Limits(head_timeout=15)
    async with open_test_client(version, http2=True, limits=limits) as client:
        stream = await client.listener.connect()
        started = trio.current_time()
        assert await stream.receive_some() == b""
        assert trio.current_time() - started == pytest.approx(15, abs=0.5)
        await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert not client.server.connections


async def test_a_client_that_leaves_before_a_byte_costs_nothing() -> None:
    async with open_test_client(version, http2=True) as client:
        stream = await client.listener.connect()
        await stream.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert not client.server.connections
        async with client.http2() as h2c:  # the server is fine
            assert (await h2c.request("GET", "/")).status == 200


async def test_a_malformed_request_head_is_a_protocol_error() -> None:
    """A head without ``:method``: h2 (python-hyper) rejects it before the
    loop sees it, as a connection error (GOAWAY PROTOCOL_ERROR); other
    connections are served."""
    async with open_test_client(version, http2=True) as client:
        peer = RawPeer(await client.listener.connect())
        peer.h2.send_headers(1, request_head()[1:], end_stream=True)
        await peer.flush()
        await peer.read_until_closed()
        await peer.stream.aclose()
        (goaway,) = peer.of(h2.events.ConnectionTerminated)
        assert isinstance(goaway, h2.events.ConnectionTerminated)
        assert goaway.error_code == CODES.PROTOCOL_ERROR
        assert not peer.of(h2.events.ResponseReceived)
        async with client.http2() as h2c:
            assert (await h2c.request("GET", "/")).status == 200


async def test_the_authority_and_a_host_header_are_not_doubled() -> None:
    """``:authority`` becomes ``Host`` for the handler, unless the client
    sent a ``host`` header too: then the handler sees that one, once."""
    seen: list[list[str]] = []

    async def handler(request: Request) -> Response:
        seen.append(request.headers.get_all("host"))
        return Response(200)

    async with open_test_client(handler, http2=True) as client, client.http2() as h2c:
        await h2c.request("GET", "/", authority="a.example")
        await h2c.request(
            "GET", "/", authority="a.example", headers=[(b"host", b"a.example")]
        )
    assert seen == [["a.example"], ["a.example"]]


# -- the peer's side of the connection ---------------------------------------------


async def test_a_peer_goaway_lets_its_open_streams_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The client says GOAWAY with a stream in flight: that stream is
    answered in full, then the server closes the connection (RFC 9113
    6.8: the peer will open no more streams)."""
    release = trio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(200, body=b"finished")

    async with open_test_client(slow, http2=True) as client:
        async with client.http2() as h2c:
            stream = await h2c.open_stream(request_head(), end_stream=True)
            await trio.testing.wait_all_tasks_blocked()
            h2c.queue_goaway(0, CODES.NO_ERROR)
            await h2c.flush()
            await trio.sleep(60)  # no idle timeout while the stream is open
            release.set()
            assert (await h2c.response_head(stream)).status == 200
            assert await stream.receive(None) == b"finished"
            with trio.fail_after(1):
                await h2c.closed.wait()
        assert not client.server.connections


async def test_a_peer_that_half_closes_tcp_ends_the_connection(
    start_server: StartServer,
) -> None:
    """Over a real socket: EOF from the client (shutdown(SHUT_WR)) ends the
    HTTP/2 connection; a handler in flight is cancelled, nothing leaks."""
    cancelled = trio.Event()
    started = trio.Event()

    async def handler(request: Request) -> Response:
        started.set()
        try:
            await trio.sleep_forever()
        finally:
            cancelled.set()
        return Response(200)  # pragma: no cover - cancelled first

    server, port = await start_server(handler, http2=True)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    peer = RawPeer(stream)
    peer.h2.send_headers(1, request_head(), end_stream=True)
    await peer.flush()
    with trio.fail_after(5):
        await started.wait()
        await stream.send_eof()
        await cancelled.wait()
        await peer.read_until_closed()
    await stream.aclose()
    assert not peer.of(h2.events.ResponseReceived)
    with trio.fail_after(5):
        for connection in list(server.connections):
            await connection.wait_closed()
    assert not server.connections


async def test_a_peer_that_stops_reading_loses_the_connection_after_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A client that asks for a big response and reads nothing more (its
    TCP window full): the server gives up after write_timeout and closes
    the connection then (not an idle_timeout later), the handler is not
    left blocked."""
    ended: list[str] = []

    async def big(request: Request) -> Response | None:
        try:
            await request.start_response(Response(200))
            for _ in range(100):
                await request.send_data(b"x" * 16384)
        except ClientDisconnected:
            ended.append("ClientDisconnected")
            raise
        return None  # pragma: no cover - the peer never reads it all

    listener = MemoryListener(trio.testing.lockstep_stream_pair)
    limits = Limits(write_timeout=10)
    async with open_test_client(
        big, http2=True, limits=limits, listener=listener
    ) as client:
        stream = await listener.connect()
        peer = RawPeer(stream)
        async with trio.open_nursery() as nursery:
            await peer.read_then_stop(
                nursery,
                until=lambda: bool(peer.of(h2.events.DataReceived)),
                request=request_head(),
            )
            stopped = trio.current_time()
            (connection,) = client.server.connections
            with trio.fail_after(60):
                await connection.wait_closed()
            nursery.cancel_scope.cancel()
        assert trio.current_time() - stopped == pytest.approx(10, abs=2)
        assert ended == ["ClientDisconnected"]
        await stream.aclose()


async def test_a_silent_peer_that_does_not_read_is_let_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Settings exchanged, then nothing: no request, and no reading. The
    idle GOAWAY cannot be delivered either; the connection is closed once
    head_timeout and then write_timeout are spent, not held for ever."""
    listener = MemoryListener(trio.testing.lockstep_stream_pair)
    limits = Limits(head_timeout=10, write_timeout=5)
    async with open_test_client(
        version, http2=True, limits=limits, listener=listener
    ) as client:
        peer = RawPeer(await listener.connect())
        async with trio.open_nursery() as nursery:
            await peer.read_then_stop(
                nursery,
                until=lambda: bool(peer.of(h2.events.SettingsAcknowledged)),
            )
            stopped = trio.current_time()
            (connection,) = client.server.connections
            with trio.fail_after(60):
                await connection.wait_closed()
            nursery.cancel_scope.cancel()
        assert trio.current_time() - stopped == pytest.approx(15, abs=1)
        await peer.stream.aclose()


async def test_a_peer_that_never_reads_our_settings_is_let_go(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The preface, then the client leaves without reading a byte: the
    server's first write fails, the connection is closed and counted out."""
    listener = MemoryListener(trio.testing.lockstep_stream_pair)
    async with open_test_client(version, http2=True, listener=listener) as client:
        stream = await listener.connect()
        await stream.send_all(PREFACE)
        await trio.testing.wait_all_tasks_blocked()
        (connection,) = client.server.connections
        await stream.aclose()
        with trio.fail_after(5):
            await connection.wait_closed()


async def test_settings_that_widen_the_window_wake_a_waiting_response(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The client starts with 1000-byte stream windows, then raises
    INITIAL_WINDOW_SIZE by SETTINGS (RFC 9113 6.9.2): a response waiting
    for window goes on at once, without a WINDOW_UPDATE."""

    async def big(request: Request) -> Response:
        return Response(200, body=b"w" * 5000)

    settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000}
    async with open_test_client(big, http2=True) as client:
        conn = await client.open_connection()
        async with open_h2_client(conn.stream, settings=settings) as h2c:
            stream = await h2c.open_stream(request_head(), end_stream=True)
            assert (await h2c.response_head(stream)).status == 200
            assert await stream.receive(None) == b"w" * 1000
            await trio.sleep(5)
            assert not stream.inbound  # the window is shut
            h2c.h2.update_settings(
                {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 65535}
            )
            await h2c.flush()
            rest = b""
            with trio.fail_after(1):
                while data := await stream.receive(None):
                    rest += data
            assert rest == b"w" * 4000


async def test_a_connection_carries_more_than_its_window() -> None:
    """The connection's receive window (16 MiB) is given back as DATA
    arrives: 18 MiB of uploads on one connection all get through (three
    6 MiB bodies, each under max_body_size)."""

    async def count(request: Request) -> Response:
        size = 0
        async for chunk in request.body():
            size += len(chunk)
        return Response(200, body=b"%d" % size)

    body = b"u" * (6 * 1024 * 1024)
    async with open_test_client(count, http2=True) as client, client.http2() as h2c:
        for _ in range(3):
            with trio.fail_after(10):
                response = await h2c.request("POST", "/", body=body)
            assert response.body == b"%d" % len(body)


async def test_a_tcp_reset_in_the_middle_of_the_preface_costs_nothing(
    start_server: StartServer,
) -> None:
    """Over a real socket: half a preface, then RST. The server drops the
    connection without a trace and serves the next one."""
    server, port = await start_server(version, http2=True)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(PREFACE[:8])
    with trio.fail_after(5):
        while not server.connections:
            await trio.testing.wait_all_tasks_blocked()
        (connection,) = server.connections
        reset(stream)
        await connection.wait_closed()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream, open_h2_client(stream) as h2c:
        response = await h2c.request("GET", "/")
    assert response.headers.get("x-version") == "2"


# -- shutdown ----------------------------------------------------------------------


async def test_shutdown_finishes_streams_in_flight_and_refuses_new_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Graceful shutdown: GOAWAY NO_ERROR at once, a stream opened after it
    is refused (REFUSED_STREAM: safe to retry elsewhere), the stream in
    flight gets its whole response, then the connection closes, before
    the grace ends."""
    release = trio.Event()

    async def slow(request: Request) -> None:
        await request.start_response(Response(200))
        await request.send_data(b"begun ")
        await release.wait()
        await request.send_data(b"and done")

    async with open_test_client(slow, http2=True) as client:
        server = client.server
        async with client.http2() as h2c, trio.open_nursery() as nursery:
            stream = await h2c.open_stream(request_head(), end_stream=True)
            assert (await h2c.response_head(stream)).status == 200
            assert await stream.receive(None) == b"begun "
            started = trio.current_time()
            nursery.start_soon(server.shutdown, 30)
            await trio.testing.wait_all_tasks_blocked()
            assert h2c.goaway is not None and h2c.goaway.error_code == 0
            late = await h2c.open_stream(request_head("/late"), end_stream=True)
            with pytest.raises(ClientDisconnected):
                await h2c.response_head(late)
            assert late.error is not None and "REFUSED_STREAM" in late.error
            release.set()
            assert await stream.receive(None) == b"and done"
            assert await stream.receive(None) == b""
            with trio.fail_after(1):
                await h2c.closed.wait()
        assert trio.current_time() - started < 30
        assert not server.connections


async def test_shutdown_reaches_a_connection_the_sniff_took(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """With ``http2=True`` a sniffed protocol (SOCKS5 on the port) still
    gets ``connection.shutdown_requested`` when the server shuts down."""

    async def waits_for_shutdown(stream: Hijacked) -> None:
        await stream.receive_some()
        await stream.connection.shutdown_requested.wait()
        await stream.send_all(b"bye")

    def sniff(first: bytes) -> Callable[[Hijacked], Awaitable[None]] | None:
        return waits_for_shutdown if first.startswith(b"\x05") else None

    server = Server(version, http2=True, sniff=sniff)
    async with open_test_client(server) as client:
        stream = await client.listener.connect()
        await stream.send_all(b"\x05\x01\x00")
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown, 30)
            got = b""
            while data := await stream.receive_some():
                got += data
        assert got == b"bye"
        await stream.aclose()


async def test_a_sniffed_connection_that_speaks_during_shutdown_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Connected before the shutdown, first bytes after it: the sniffed
    protocol's handler still runs, and already sees
    ``shutdown_requested``, so it can say goodbye in its own protocol."""

    async def says_goodbye(stream: Hijacked) -> None:
        await stream.receive_some()
        assert stream.connection.shutdown_requested.is_set()
        await stream.send_all(b"bye")

    def sniff(first: bytes) -> Callable[[Hijacked], Awaitable[None]] | None:
        return says_goodbye if first.startswith(b"\x05") else None

    server = Server(version, http2=True, sniff=sniff)
    async with open_test_client(server) as client:
        stream = await client.listener.connect()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.shutdown, 30)
            await trio.testing.wait_all_tasks_blocked()
            await stream.send_all(b"\x05\x01\x00")
            got = b""
            while data := await stream.receive_some():
                got += data
        assert got == b"bye"
        await stream.aclose()
