"""A small HTTP/2 client on the same stream machinery as the server
(``_h2_wire``): what the test kit speaks to a server in memory, and what a
test uses to open CONNECT / Extended CONNECT streams. Not a general HTTP
client: one connection, requests and tunnels, no push, no redirects."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import h2.events
import h2.settings
import trio

from ._errors import ClientDisconnected
from ._h2_wire import CONNECTION_WINDOW, H2Stream, H2Wire, StreamIO, StreamState
from ._message import Headers

__all__ = ["H2ClientConnection", "H2Response", "open_h2_client"]

RECEIVE_SIZE = 65536
#: A tunnel's receive window, and the largest frame the server may send.
TUNNEL_WINDOW = 1024 * 1024
MAX_FRAME_SIZE = 65536


class H2Response:
    """A response head (and, for :meth:`H2ClientConnection.request`, its
    body): ``status``, ``headers`` (pseudo-headers left out)."""

    def __init__(self, headers: list[tuple[bytes, bytes]], body: bytes = b"") -> None:
        self.status = 0
        regular = []
        for name, value in headers:
            if name == b":status":
                self.status = int(value)
            elif not name.startswith(b":"):
                regular.append((name, value))
        self.headers = Headers(regular)
        self.body = body

    def __repr__(self) -> str:
        return f"<H2Response {self.status}>"


class H2ClientConnection(H2Wire):
    """The client side of one HTTP/2 connection, as
    :meth:`TestClient.http2 <hijack.testing.TestClient.http2>` yields it:
    ``request()``, ``tunnel()`` (CONNECT, Extended CONNECT), and the
    lower-level ``open_stream()``, ``send()``, ``response_head()``,
    ``informational()``."""

    def __init__(
        self, transport: trio.abc.Stream, *, write_timeout: float | None
    ) -> None:
        super().__init__(transport, client_side=True, write_timeout=write_timeout)
        self._heads: dict[int, list[tuple[bytes, bytes]]] = {}
        self._head_events: dict[int, trio.Event] = {}
        #: Informational (1xx) heads received per stream, in order.
        self.interim: dict[int, list[H2Response]] = {}
        self._interim_events: dict[int, trio.Event] = {}
        #: The server's SETTINGS as last received.
        self.remote_settings = self.h2.remote_settings
        self.settings_received = trio.Event()
        self.goaway: h2.events.ConnectionTerminated | None = None
        self.closed = trio.Event()

    async def _read_loop(self) -> None:
        try:
            while True:
                try:
                    data = await self.transport.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    return
                if not data:
                    return
                try:
                    self.receive_events(bytes(data))
                except h2.exceptions.ProtocolError:
                    return
                try:
                    await self.flush()
                except ClientDisconnected:
                    return
        finally:
            self.fail_all("the connection closed")
            for event in self._head_events.values():
                event.set()
            self.closed.set()

    def on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.InformationalResponseReceived):
            assert event.stream_id is not None
            head = H2Response(list(event.headers or []))
            self.interim.setdefault(event.stream_id, []).append(head)
            self._interim_events.setdefault(event.stream_id, trio.Event()).set()
        elif isinstance(event, h2.events.ResponseReceived):
            assert event.stream_id is not None
            self._heads[event.stream_id] = list(event.headers or [])
            waiter = self._head_events.get(event.stream_id)
            if waiter is not None:
                waiter.set()
        elif isinstance(event, h2.events.StreamReset):
            waiter = self._head_events.get(event.stream_id or 0)
            if waiter is not None:
                waiter.set()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            self.settings_received.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.goaway = event
            for waiter in self._head_events.values():
                waiter.set()

    async def open_stream(
        self, headers: list[tuple[bytes, bytes]], *, end_stream: bool = False
    ) -> H2Stream:
        """Send a request head on a new stream."""
        stream_id = self.h2.get_next_available_stream_id()
        stream = H2Stream(self, stream_id)
        self.streams[stream_id] = stream
        self._head_events[stream_id] = trio.Event()
        if end_stream:
            stream.end_sent = True
        self.h2.send_headers(stream_id, headers, end_stream=end_stream)
        await self.flush()
        return stream

    async def informational(self, stream: H2Stream) -> H2Response:
        """Wait for the first 1xx head of ``stream`` (a ``100 Continue``)."""
        await self._interim_events.setdefault(stream.id, trio.Event()).wait()
        return self.interim[stream.id][0]

    async def response_head(self, stream: H2Stream) -> H2Response:
        """Wait for the response head of ``stream``; ``ClientDisconnected``
        if the stream was reset or the connection went first."""
        await self._head_events[stream.id].wait()
        head = self._heads.pop(stream.id, None)
        if head is None:
            raise ClientDisconnected(stream.error or "no response")
        return H2Response(head)

    async def request(
        self,
        method: str,
        target: str,
        *,
        authority: str = "testserver",
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ) -> H2Response:
        """One request; the whole response (body read to its end)."""
        stream = await self.open_stream(
            _request_headers(method, target, authority, None, headers),
            end_stream=not body,
        )
        if body:
            await self.send(stream, body, end=True)
        response = await self.response_head(stream)
        chunks = []
        while data := await stream.receive(None):
            chunks.append(data)
        response.body = b"".join(chunks)
        self.discard(stream)
        return response

    async def tunnel(
        self,
        authority: str,
        *,
        protocol: str | None = None,
        target: str = "/",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> tuple[H2Response, StreamIO | None]:
        """CONNECT ``authority`` (or, with ``protocol``, an Extended CONNECT
        to ``target`` on it, RFC 8441): the response, and the stream as a
        ``HalfCloseableStream`` if it is a 2xx (None otherwise)."""
        stream = await self.open_stream(
            _request_headers("CONNECT", target, authority, protocol, headers)
        )
        response = await self.response_head(stream)
        if not 200 <= response.status < 300:
            chunks = []
            while data := await stream.receive(None):
                chunks.append(data)
            response.body = b"".join(chunks)
            self.discard(stream)
            return response, None
        stream.state = StreamState.HIJACKED
        self.widen(stream, TUNNEL_WINDOW)
        return response, StreamIO(stream)


def _request_headers(
    method: str,
    target: str,
    authority: str,
    protocol: str | None,
    extra: list[tuple[bytes, bytes]] | None,
) -> list[tuple[bytes, bytes]]:
    headers = [(b":method", method.encode("ascii"))]
    if method == "CONNECT" and protocol is None:
        headers.append((b":authority", authority.encode("latin-1")))
    else:
        headers += [
            (b":scheme", b"https"),
            (b":path", target.encode("latin-1")),
            (b":authority", authority.encode("latin-1")),
        ]
        if protocol is not None:
            headers.append((b":protocol", protocol.encode("latin-1")))
    return headers + list(extra or [])


@asynccontextmanager
async def open_h2_client(
    transport: trio.abc.Stream,
    *,
    write_timeout: float | None = 30.0,
    settings: dict[h2.settings.SettingCodes, int] | None = None,
) -> AsyncIterator[H2ClientConnection]:
    """An HTTP/2 client connection over ``transport`` (the preface sent, the
    server's SETTINGS awaited); closed on exit."""
    conn = H2ClientConnection(transport, write_timeout=write_timeout)
    values = {h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME_SIZE}
    values.update(settings or {})
    conn.h2.local_settings = h2.settings.Settings(client=True, initial_values=values)
    conn.h2.max_inbound_frame_size = values[h2.settings.SettingCodes.MAX_FRAME_SIZE]
    conn.h2.initiate_connection()
    conn.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(conn._read_loop)
        nursery.start_soon(conn.run_flusher)
        try:
            await conn.flush()
            with trio.move_on_after(10):
                await conn.settings_received.wait()
            yield conn
        finally:
            nursery.cancel_scope.cancel()
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(transport)
