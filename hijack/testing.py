"""Test a handler, upgrades and tunnels included, without a socket.

Go's ``httptest.ResponseRecorder`` cannot hijack, so a Go handler that
hijacks can only be tested over a real listener. Here a test talks to the
real :class:`~hijack.Server` over in-memory streams: the same accept loop,
connection states, hooks, limits, ``connection.context`` and shutdown as a
socket, no port, and it runs under pytest-trio's ``autojump_clock`` (a
timeout of an hour takes no time)::

    async with open_test_client(handler) as client:
        response = await client.request("GET", "/hello")
        assert response.status == 200 and response.body == b"hi"

        head, stream = await client.upgrade("/echo", "echo")  # 101 + raw stream
        await stream.send_all(b"ping")

        async with client.websocket("/ws") as ws:  # websockets' Sans-I/O client
            await ws.send("hi")
            assert await ws.receive() == "hi"

    # HTTP/2 (the server made with http2=True): requests, CONNECT and
    # Extended CONNECT streams, WebSockets over RFC 8441.
    async with open_test_client(handler, http2=True) as client:
        async with client.http2() as h2:
            response = await h2.request("GET", "/hello")
            head, stream = await h2.tunnel("example.com:443")  # CONNECT
        async with client.websocket("/ws", http2=True) as ws:
            await ws.send("hi")

Connections can show the server any identity a test needs (a remote
address, UNIX peer credentials, TLS details): see :class:`Peer`. A real TLS
handshake over memory streams works too (``ssl_context=``).

Resource handling: :func:`open_test_client` runs the server in its own
nursery and shuts it down (grace 0 unless already shut down) on exit, which
closes every connection the test left open. Streams returned by
:meth:`TestClient.upgrade` and :meth:`TestClient.connect` belong to the test:
close them (``async with stream:``); the server's ends are closed at exit
either way.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import h11
import trio
import trio.testing
from websockets.client import ClientProtocol
from websockets.http11 import Response as WSResponse
from websockets.protocol import OPEN
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from ._connection import Connection, PeerInfo
from ._h2_client import H2ClientConnection, H2Response, open_h2_client
from ._http import Handler
from ._message import Headers
from ._replay import ReplayStream
from ._server import Server
from .upgrades.websocket import WebSocket

__all__ = [
    "H2ClientConnection",
    "H2Response",
    "MemoryListener",
    "Peer",
    "TestClient",
    "TestConnection",
    "TestResponse",
    "TestWebSocket",
    "UpgradeRefusedError",
    "open_test_client",
]

HeadersInput = Mapping[str, str] | Iterable[tuple[str, str]]
RECEIVE_SIZE = 65536
#: The Host header a request gets unless the test gives one.
DEFAULT_HOST = "testserver"


#: The identity a test connection shows to the server, in place of what a
#: socket would tell: ``connection.remote_address``, ``local_address``,
#: ``peer_credentials`` and ``tls`` (a :class:`~hijack.TLSInfo`, for a
#: handler that reads ``connection.tls`` without a real handshake). The
#: core's :class:`~hijack.PeerInfo`, which any stream may describe.
Peer = PeerInfo


class _Identity:
    """What the server end of a test stream tells its Connection, and
    which Connection that is (for the test client)."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer
        self.connection: Connection | None = None
        self.applied = trio.Event()


class _ServerEnd(trio.abc.HalfCloseableStream):
    """The server's end of a memory stream pair, with the test's identity
    (trio's StapledStream is final: hence a delegate, not a subclass)."""

    def __init__(self, stapled: trio.abc.HalfCloseableStream, peer: Peer) -> None:
        self._stapled = stapled
        self.identity = _Identity(peer)

    def describe_peer(self, connection: Connection) -> PeerInfo:
        """Asked by the Connection made for this stream (see PeerInfo)."""
        self.identity.connection = connection
        self.identity.applied.set()
        return self.identity.peer

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stapled.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stapled.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self._stapled.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self._stapled.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self._stapled.aclose()


StreamPair = Callable[
    [], tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]
]


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A trio Listener of in-memory streams, for
    :meth:`Server.serve_listeners <hijack.Server.serve_listeners>`.

    ``await listener.connect()`` returns the client end of a fresh stream
    pair once the server accepted the other end. ``pair`` makes the pairs:
    trio's ``memory_stream_pair`` (unbounded buffers) by default;
    ``trio.testing.lockstep_stream_pair`` to test a peer that does not read
    (a send blocks until the other side receives)."""

    def __init__(self, pair: StreamPair = trio.testing.memory_stream_pair) -> None:
        self._send, self._receive = trio.open_memory_channel[_ServerEnd](0)
        self._pair = pair
        self.closed = False

    async def connect(self, peer: Peer | None = None) -> trio.abc.HalfCloseableStream:
        """The client end of a new connection whose server end shows
        ``peer``'s identity."""
        stream, _ = await self._connect(peer or Peer())
        return stream

    async def _connect(
        self, peer: Peer
    ) -> tuple[trio.abc.HalfCloseableStream, _Identity]:
        client, server = self._pair()
        end = _ServerEnd(server, peer)
        try:
            await self._send.send(end)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise trio.BrokenResourceError("the server is not accepting") from None
        return client, end.identity

    async def accept(self) -> trio.abc.Stream:
        try:
            return await self._receive.receive()
        except trio.EndOfChannel:  # pragma: no cover - we never close _send first
            raise trio.ClosedResourceError from None

    async def aclose(self) -> None:
        self.closed = True
        await self._receive.aclose()
        await trio.lowlevel.checkpoint()


@dataclass
class TestResponse:
    """A response as the client received it. ``body`` is empty for a
    response that switched protocols (101, a 2xx to CONNECT)."""

    __test__ = False  # not a pytest test class

    status: int
    reason: str
    headers: Headers
    body: bytes = b""
    http_version: str = "1.1"

    def text(self) -> str:
        return self.body.decode("utf-8")


class UpgradeRefusedError(Exception):
    """The server answered an upgrade, CONNECT or WebSocket handshake
    without switching protocols; ``response`` is what it said instead."""

    def __init__(self, response: TestResponse) -> None:
        super().__init__(f"not switched: {response.status} {response.reason}")
        self.response = response


def _encode_headers(
    headers: HeadersInput | None, host: str, extra: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    items = list(headers.items() if isinstance(headers, Mapping) else headers or ())
    names = {name.lower() for name, _ in items}
    if "host" not in names:
        items.insert(0, ("host", host))
    return items + [(k, v) for k, v in extra if k.lower() not in names]


class TestConnection:
    """One client connection to the server (keep-alive: several requests in
    a row are one connection, as the server's state hooks will see).

    Attributes:
      stream: the client's end (after an upgrade, use the returned stream:
        it replays what arrived with the server's answer).
      connection: the server's :class:`~hijack.Connection` for it (its
        ``state``, ``context``, ``wait_closed()``), once the server accepted.
    """

    __test__ = False

    def __init__(self, stream: trio.abc.Stream, identity: _Identity) -> None:
        self.stream = stream
        self._identity = identity
        self._h11 = h11.Connection(h11.CLIENT)

    @property
    def connection(self) -> Connection:
        connection = self._identity.connection
        if connection is None:  # pragma: no cover - accept precedes connect()
            raise RuntimeError("the server has not accepted this connection yet")
        return connection

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: HeadersInput | None = None,
        body: bytes = b"",
    ) -> TestResponse:
        """Send one request, return the whole response. Adds ``Host`` and,
        for a body, ``Content-Length`` unless given."""
        extra = [("content-length", str(len(body)))] if body else []
        return await self._exchange(method, target, headers, body, extra)

    async def upgrade(
        self,
        target: str,
        protocol: str,
        *,
        headers: HeadersInput | None = None,
        method: str = "GET",
    ) -> tuple[TestResponse, trio.abc.HalfCloseableStream]:
        """Ask to switch to ``protocol`` (``Upgrade``/``Connection: upgrade``
        added); return the 101 head and the client's end of the new protocol
        (a stream that first replays bytes that came with the head).

        Raises :class:`UpgradeRefusedError` if the server answered otherwise.
        """
        extra = [("connection", "upgrade"), ("upgrade", protocol)]
        return await self._switch(method, target, headers, extra)

    async def connect(
        self, authority: str, *, headers: HeadersInput | None = None
    ) -> tuple[TestResponse, trio.abc.HalfCloseableStream]:
        """``CONNECT authority``; return the 2xx head and the tunnel.

        Raises :class:`UpgradeRefusedError` if the server answered otherwise.
        """
        return await self._switch("CONNECT", authority, headers, [], host=authority)

    async def send_raw(self, data: bytes) -> None:
        """Write bytes as they are (a malformed request, a split head...)."""
        await self.stream.send_all(data)

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def __aenter__(self) -> TestConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- internals ---------------------------------------------------------

    async def _switch(
        self,
        method: str,
        target: str,
        headers: HeadersInput | None,
        extra: list[tuple[str, str]],
        host: str = DEFAULT_HOST,
    ) -> tuple[TestResponse, trio.abc.HalfCloseableStream]:
        response = await self._exchange(method, target, headers, b"", extra, host)
        if self._h11.our_state is not h11.SWITCHED_PROTOCOL:
            raise UpgradeRefusedError(response)
        trailing, _ = self._h11.trailing_data
        return response, ReplayStream(self.stream, bytes(trailing))

    async def _exchange(
        self,
        method: str,
        target: str,
        headers: HeadersInput | None,
        body: bytes,
        extra: list[tuple[str, str]],
        host: str = DEFAULT_HOST,
    ) -> TestResponse:
        conn = self._next_cycle()
        request = h11.Request(
            method=method, target=target, headers=_encode_headers(headers, host, extra)
        )
        data = conn.send(request) or b""
        if body:
            data += conn.send(h11.Data(data=body)) or b""
        if conn.our_state is h11.SEND_BODY:
            data += conn.send(h11.EndOfMessage()) or b""
        await self.stream.send_all(data)
        return await self.read_response()

    def _next_cycle(self) -> h11.Connection:
        """The client parser, ready for the next request/response pair."""
        conn = self._h11
        if conn.their_state is h11.DONE and conn.our_state is h11.DONE:
            conn.start_next_cycle()
        elif conn.their_state is h11.DONE and conn.our_state is h11.IDLE:
            # The request went out by send_raw(): h11 never saw it, so it
            # cannot start a next cycle. A fresh parser reads on, from the
            # bytes already received (a pipelined answer may be there).
            received, closed = conn.trailing_data
            conn = self._h11 = h11.Connection(h11.CLIENT)
            if received:
                conn.receive_data(received)
            if closed:
                conn.receive_data(b"")  # b"" is EOF to h11
        return conn

    async def read_response(self) -> TestResponse:
        """Read one response (after :meth:`send_raw`, say: then read as the
        answer to a GET, whose body is read to its length). Raises
        ``trio.BrokenResourceError`` if the server closes before answering,
        ``h11.RemoteProtocolError`` for a malformed or truncated answer."""
        conn = self._next_cycle()
        head: h11.Response | h11.InformationalResponse | None = None
        body = bytearray()
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(RECEIVE_SIZE)
                if not data and head is None:
                    raise trio.BrokenResourceError("the server closed before answering")
                conn.receive_data(bytes(data))  # b"": EOF, h11 judges the body
                continue
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    head = event
                    break
                continue  # 100 Continue and friends: wait for the real answer
            if isinstance(event, h11.Response):
                head = event
                if conn.their_state is h11.SWITCHED_PROTOCOL:
                    break
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            elif event is h11.PAUSED or isinstance(  # pragma: no cover - h11 rules
                event, h11.ConnectionClosed
            ):
                # h11 ends a body at EOF (EndOfMessage or an error) first.
                raise trio.BrokenResourceError("the server closed mid-response")
        assert head is not None  # h11 gives a head before a body or its end
        return TestResponse(
            status=head.status_code,
            reason=head.reason.decode("latin-1"),
            headers=Headers(list(head.headers)),
            body=bytes(body),
            http_version=head.http_version.decode("ascii"),
        )


@asynccontextmanager
async def _closed_on_error(conn: TestConnection) -> AsyncIterator[None]:
    """The connection of a one-shot upgrade belongs to the stream returned;
    if there is none (refused, cancelled), close it here."""
    try:
        yield
    except BaseException:
        await trio.aclose_forcefully(conn.stream)
        raise


class TestClient:
    """Opens test connections to a server running on a :class:`MemoryListener`.

    The one-shot methods (:meth:`request`, :meth:`upgrade`, :meth:`connect`,
    :meth:`websocket`) each open a new connection; use :meth:`connection`
    for keep-alive or raw bytes.

    Attributes:
      server: the :class:`~hijack.Server` under test.
      listener: the :class:`MemoryListener` it serves.
    """

    __test__ = False

    def __init__(
        self,
        server: Server,
        listener: MemoryListener,
        *,
        peer: Peer | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        server_hostname: str = DEFAULT_HOST,
    ) -> None:
        self.server = server
        self.listener = listener
        self._peer = peer or Peer()
        self._client_ssl = client_ssl_context
        self._server_hostname = server_hostname

    async def open_connection(self, peer: Peer | None = None) -> TestConnection:
        """A new connection (the caller closes it); ``peer`` overrides the
        client's default identity. Returns once the server accepted it."""
        plain, identity = await self.listener._connect(peer or self._peer)
        stream: trio.abc.Stream = plain
        if self._client_ssl is not None:
            stream = trio.SSLStream(
                plain, self._client_ssl, server_hostname=self._server_hostname
            )
        # The server makes the Connection in the task it starts per accept.
        await identity.applied.wait()
        return TestConnection(stream, identity)

    @asynccontextmanager
    async def connection(
        self, peer: Peer | None = None
    ) -> AsyncIterator[TestConnection]:
        """``async with client.connection() as conn:`` a connection closed on
        exit."""
        conn = await self.open_connection(peer)
        async with conn:
            yield conn

    async def request(
        self,
        method: str,
        target: str,
        *,
        headers: HeadersInput | None = None,
        body: bytes = b"",
        peer: Peer | None = None,
    ) -> TestResponse:
        """One request on a new connection, closed after the response."""
        async with self.connection(peer) as conn:
            return await conn.request(method, target, headers=headers, body=body)

    async def upgrade(
        self,
        target: str,
        protocol: str,
        *,
        headers: HeadersInput | None = None,
        method: str = "GET",
        peer: Peer | None = None,
    ) -> tuple[TestResponse, trio.abc.HalfCloseableStream]:
        """:meth:`TestConnection.upgrade` on a new connection; closing the
        returned stream closes the connection."""
        conn = await self.open_connection(peer)
        async with _closed_on_error(conn):
            return await conn.upgrade(target, protocol, headers=headers, method=method)

    async def connect(
        self,
        authority: str,
        *,
        headers: HeadersInput | None = None,
        peer: Peer | None = None,
    ) -> tuple[TestResponse, trio.abc.HalfCloseableStream]:
        """:meth:`TestConnection.connect` on a new connection; closing the
        returned stream closes the connection."""
        conn = await self.open_connection(peer)
        async with _closed_on_error(conn):
            return await conn.connect(authority, headers=headers)

    @asynccontextmanager
    async def http2(
        self, peer: Peer | None = None
    ) -> AsyncIterator[H2ClientConnection]:
        """An HTTP/2 connection to a server made with ``http2=True``, closed
        on exit: prior knowledge in memory, or ALPN ``h2`` over TLS (the
        ``client_ssl_context`` must offer it: ``set_alpn_protocols(["h2"])``).
        ``await h2.request(method, target, body=...)`` answers an
        :class:`H2Response`; ``await h2.tunnel(authority)`` opens a CONNECT
        stream and ``await h2.tunnel(host, protocol="websocket",
        target="/ws")`` an Extended CONNECT one (RFC 8441): the response
        and, on a 2xx, the stream (a ``trio.abc.HalfCloseableStream``)."""
        conn = await self.open_connection(peer)
        async with open_h2_client(conn.stream) as h2_connection:
            yield h2_connection

    @asynccontextmanager
    async def websocket(
        self,
        target: str = "/",
        *,
        subprotocols: Iterable[str] = (),
        headers: HeadersInput | None = None,
        max_size: int = 1 << 20,
        peer: Peer | None = None,
        http2: bool = False,
    ) -> AsyncIterator[TestWebSocket]:
        """A WebSocket client connection (the handshake done), closed on
        exit: with a closing handshake (1000, or 1011 if the block raised)
        if neither side closed yet. ``http2=True``: over an HTTP/2 stream
        (RFC 8441 Extended CONNECT; the server needs ``http2=True``).

        Raises :class:`UpgradeRefusedError` if the server answered without
        switching, websockets' ``InvalidHandshake`` for a bad 101."""
        if http2:
            async with self.http2(peer) as h2_connection:
                ws = await _websocket_over_http2(
                    h2_connection, target, subprotocols, headers, max_size
                )
                async with ws:
                    yield ws
            return
        conn = await self.open_connection(peer)
        async with conn:
            ws = await _websocket_handshake(
                conn, target, subprotocols, headers, max_size
            )
            async with ws:
                yield ws


@asynccontextmanager
async def open_test_client(
    app: Handler | Server,
    *,
    peer: Peer | None = None,
    ssl_context: ssl.SSLContext | None = None,
    client_ssl_context: ssl.SSLContext | None = None,
    server_hostname: str = DEFAULT_HOST,
    listener: MemoryListener | None = None,
    **server_options: Any,
) -> AsyncIterator[TestClient]:
    """Serve ``app`` (a handler, or a :class:`~hijack.Server` you built with
    hooks and limits) on a :class:`MemoryListener`; yield a client for it.

    ``server_options`` are :class:`~hijack.Server` keyword arguments when
    ``app`` is a handler. ``peer`` is the default identity of connections.
    With ``ssl_context`` the server speaks TLS (a real handshake over the
    memory streams); the client then uses ``client_ssl_context`` and
    ``server_hostname`` (SNI). ``listener``: a :class:`MemoryListener` of
    your own, e.g. of lockstep streams to test a client that does not read.

    Resource handling: on exit the server is shut down with grace 0 (unless
    the test already called ``server.shutdown()``), closing what is open.
    """
    if isinstance(app, Server):
        if server_options:
            raise TypeError("server options go to Server(...) when app is a Server")
        server = app
    else:
        server = Server(app, **server_options)
    if ssl_context is not None and client_ssl_context is None:
        raise TypeError("ssl_context needs a client_ssl_context that trusts it")
    listener = listener or MemoryListener()
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: server.serve_listeners(
                [listener], ssl_context=ssl_context, task_status=task_status
            )
        )
        try:
            yield TestClient(
                server,
                listener,
                peer=peer,
                client_ssl_context=client_ssl_context,
                server_hostname=server_hostname,
            )
        finally:
            with trio.CancelScope(shield=True):
                await server.shutdown(grace=0)


class TestWebSocket(WebSocket):
    """The client side of a WebSocket, for tests: hijack's
    :class:`~hijack.upgrades.websocket.WebSocket` message API (``send``,
    ``receive``, ``ping``, ``close``, ``close_code``...) over websockets'
    Sans-I/O ``ClientProtocol``, which frames, masks and checks the server's
    handshake independently of hijack's server side.

    Attributes: ``response``, the server's 101 answer; ``subprotocol``, the
    one the server chose.
    """

    __test__ = False

    def __init__(
        self,
        stream: trio.abc.Stream,
        protocol: ClientProtocol,
        response: TestResponse,
        max_size: int,
    ) -> None:
        super().__init__(
            stream,
            None,
            protocol=protocol,
            subprotocol=response.headers.get("sec-websocket-protocol"),
            max_message_size=max_size,
            ping_interval=None,
        )
        self.response = response

    async def send_raw(self, data: bytes) -> None:
        """Bytes as they are: a malformed or unmasked frame, say."""
        await self._stream.send_all(data)


async def _websocket_handshake(
    conn: TestConnection,
    target: str,
    subprotocols: Iterable[str],
    headers: HeadersInput | None,
    max_size: int,
) -> TestWebSocket:
    """The opening handshake, by websockets' ClientProtocol."""
    protocol = ClientProtocol(
        parse_uri(f"ws://{DEFAULT_HOST}{target}"),
        subprotocols=[Subprotocol(p) for p in subprotocols] or None,
        max_size=max_size,
    )
    request = protocol.connect()
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    for name, value in items:
        if name.lower() == "host":
            del request.headers["Host"]
        request.headers[name] = value
    protocol.send_request(request)
    await conn.stream.send_all(b"".join(protocol.data_to_send()))
    buffer = b""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        data = await conn.stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise trio.BrokenResourceError("the server closed during the handshake")
        buffer += data
    # The head goes in alone: frames that came in the same read as a 101 must
    # not be drained with the handshake's events; fed after it, they are the
    # WebSocket's first events.
    head, rest = buffer[: end + 4], buffer[end + 4 :]
    protocol.receive_data(head)
    events = protocol.events_received()
    while not events:  # a refusal: its body follows the head
        if rest:
            protocol.receive_data(rest)
            rest = b""
        elif data := await conn.stream.receive_some(RECEIVE_SIZE):
            protocol.receive_data(bytes(data))
        else:
            protocol.receive_eof()
            if not (events := protocol.events_received()):
                raise trio.BrokenResourceError("the server closed mid-answer")
            break
        events = protocol.events_received()
    answer = events[0]
    assert isinstance(answer, WSResponse)
    response = TestResponse(
        status=answer.status_code,
        reason=answer.reason_phrase,
        headers=Headers(
            [
                (k.lower().encode("latin-1"), v.encode("latin-1"))
                for k, v in answer.headers.raw_items()
            ]
        ),
        body=bytes(answer.body or b""),
    )
    if answer.status_code != 101:
        raise UpgradeRefusedError(response)
    if protocol.handshake_exc is not None:
        raise protocol.handshake_exc
    protocol.receive_data(rest)
    return TestWebSocket(conn.stream, protocol, response, max_size)


async def _websocket_over_http2(
    h2_connection: H2ClientConnection,
    target: str,
    subprotocols: Iterable[str],
    headers: HeadersInput | None,
    max_size: int,
) -> TestWebSocket:
    """RFC 8441: an Extended CONNECT, a 200, then frames on the stream."""
    offered = list(subprotocols)
    extra = [(b"sec-websocket-version", b"13")]
    if offered:
        extra.append((b"sec-websocket-protocol", ", ".join(offered).encode()))
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    extra += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in items]
    answer, stream = await h2_connection.tunnel(
        DEFAULT_HOST, protocol="websocket", target=target, headers=extra
    )
    response = TestResponse(
        answer.status, "", answer.headers, answer.body, http_version="2"
    )
    if stream is None:
        raise UpgradeRefusedError(response)
    protocol = ClientProtocol(
        parse_uri(f"ws://{DEFAULT_HOST}{target}"),
        subprotocols=[Subprotocol(p) for p in offered] or None,
        max_size=max_size,
        state=OPEN,
    )
    return TestWebSocket(stream, protocol, response, max_size)
