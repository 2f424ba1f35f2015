"""The HTTP/2 connection loop (the HTTP/1.1 one is ``_http.py``).

The seam: one :class:`~hijack.Server`, two connection loops. The server
picks this one per connection when ``Server(..., http2=True)``: on a TLS
listener when ALPN chose ``h2``, on a plain listener when the client opens
with the HTTP/2 preface (prior knowledge, as a balancer does). Everything
else stays HTTP/1.1 and never runs a line of this module.

One task per connection reads frames (through the flood meter,
``_h2_meter``, then h2), and one task per stream runs the handler with an
:class:`~hijack._h2_exchange.H2Exchange` behind the same ``Request``. A
stream's life, counted per connection (:attr:`HTTP2Connection.counts`):

    OPEN (a handler serves it) -> HIJACKED (``hijack()`` gave it to its owner)
                               -> CLOSED (both ends sent END_STREAM, or reset)
    HIJACKED -> CLOSED (the owner closed it, or a reset)

Counts: ``counts`` (streams opened, refused, reset by the peer, ever
hijacked), ``open_streams`` and ``hijacked_streams`` (hijacked, not yet
closed by their owner; summed by ``Server.open_hijacked_streams``).

The :class:`~hijack.Connection` stays ACTIVE while any stream is open or
hijacked and IDLE between (it never becomes HIJACKED: the connection is not
handed over, its streams are), so the connection stays open while any
hijacked stream is.

Limits (``Limits.h2_*``; see docs/reference/http2-limits.md): streams over
``h2_max_concurrent_streams`` are refused one by one (RST_STREAM
REFUSED_STREAM), the connection goes on; refusals and the peer's resets
spend the rapid-reset budget; frame floods and oversized header blocks end
the connection with GOAWAY ENHANCE_YOUR_CALM; the decoded header list is
bounded by ``max_head_size``; a stream whose window stays shut for
``write_timeout`` is reset; a connection without streams closes after
``idle_timeout`` (``head_timeout`` before its first request). A request
stream buffers at most ``h2_stream_window``, a hijacked one
``h2_tunnel_window``.

Shutdown: GOAWAY (NO_ERROR, last stream id), streams in flight finish,
owners of hijacked streams see ``connection.shutdown_requested``; when the
grace ends the server cancels this task, which resets what is left.
"""

from __future__ import annotations

import contextlib
import logging
import math

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import trio

from ._closing import aclose_gracefully
from ._connection import Connection, ConnState
from ._errors import ClientDisconnected
from ._exchange import ServerSide, StreamHandler
from ._h2_exchange import DRAIN_LIMIT, H2Exchange
from ._h2_meter import PREFACE, FrameMeter
from ._h2_wire import CONNECTION_WINDOW, H2Stream, H2Wire
from ._http import HTTPConnection
from ._message import HTTPError

__all__ = ["PREFACE", "ConnectionLoop", "HTTP2Connection", "choose_protocol"]

logger = logging.getLogger("hijack")

RECEIVE_SIZE = 65536

_CODES = h2.errors.ErrorCodes


class HTTP2Connection:
    """Serves HTTP/2 on one stream until the peer leaves, the connection
    idles out, a limit ends it, or shutdown finishes its streams."""

    def __init__(
        self,
        server: ServerSide,
        connection: Connection,
        *,
        extended_connect: bool,
        received: bytes = b"",
    ) -> None:
        self.server = server
        self.connection = connection
        limits = server.limits
        self.wire = _ServerWire(
            self,
            connection.stream,
            write_timeout=limits.write_timeout,
            stream_window=limits.h2_stream_window,
        )
        self.meter = FrameMeter(
            {
                "resets": limits.h2_max_resets_per_second,
                "settings": limits.h2_max_settings_per_second,
                "pings": limits.h2_max_pings_per_second,
                "priority": limits.h2_max_priority_per_second,
                "window updates": limits.h2_max_window_updates_per_second,
            },
            limits.max_head_size,
        )
        self.extended_connect = extended_connect
        self._received = received
        self._goaway_sent = False
        self._flood: str | None = None
        self._peer_goaway = False
        self._served_one = False
        self._streams_changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        #: Hijacked streams not closed by their owner yet.
        self._owned: set[int] = set()
        #: How streams ended, for tests and metrics: "refused", "reset by
        #: peer", "hijacked" (streams ever hijacked).
        self.counts = {"streams": 0, "refused": 0, "reset by peer": 0, "hijacked": 0}

    # -- what the server asks -------------------------------------------------

    @property
    def open_streams(self) -> int:
        """Streams open here (served by a handler or hijacked)."""
        return len(self.wire.streams)

    @property
    def hijacked_streams(self) -> int:
        """Hijacked streams whose owner has not closed them yet."""
        return len(self._owned)

    def request_shutdown(self) -> None:
        """Graceful shutdown: GOAWAY now (sent by the janitor), streams
        finish, then the connection closes."""
        self._changed()

    # -- the loop -------------------------------------------------------------

    async def serve(self) -> None:
        wire = self.wire
        limits = self.server.limits
        codes = h2.settings.SettingCodes
        settings = {
            codes.MAX_CONCURRENT_STREAMS: limits.h2_max_concurrent_streams,
            codes.MAX_HEADER_LIST_SIZE: limits.max_head_size,
            codes.INITIAL_WINDOW_SIZE: limits.h2_stream_window,
            codes.MAX_FRAME_SIZE: limits.h2_max_frame_size,
        }
        if self.extended_connect:
            settings[codes.ENABLE_CONNECT_PROTOCOL] = 1
        wire.h2.local_settings = h2.settings.Settings(
            client=False, initial_values=settings
        )
        wire.h2.decoder.max_header_list_size = limits.max_head_size
        # h2 applies our MAX_FRAME_SIZE only once the peer acknowledged it,
        # and checks frames against the old one when the ACK and a big frame
        # arrive in one read: we said it, so we take it from the start.
        wire.h2.max_inbound_frame_size = limits.h2_max_frame_size
        try:
            wire.h2.initiate_connection()
            wire.h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)
            await wire.flush()
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._janitor, nursery.cancel_scope)
                nursery.start_soon(wire.run_flusher)
                try:
                    await self._read_loop()
                finally:
                    # The peer left, a limit ended it, or shutdown is over:
                    # nothing more will be read, so no stream can go on.
                    wire.fail_all("the connection closed")
                    nursery.cancel_scope.cancel()
        except ClientDisconnected:
            pass
        finally:
            self.wire.fail_all("the connection closed")
            await aclose_gracefully(self.connection.stream)
            self.connection._set_state(ConnState.CLOSED)

    async def _read_loop(self) -> None:
        """Read and handle frames until the peer leaves or a limit ends the
        connection (the janitor ends it otherwise)."""
        data = self._received
        self._received = b""
        while True:
            if data and not await self._handle(data):
                return
            try:
                received = await self.connection.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return
            if not received:
                return
            data = bytes(received)

    async def _janitor(self, scope: trio.CancelScope) -> None:
        """Ends the connection when it should end without a frame saying
        so: idle (no stream) for ``idle_timeout`` (``head_timeout`` before
        the first request), the last stream gone after a GOAWAY, or a write
        that failed (the transport is unusable: a write timed out or the
        peer is gone). Sends the GOAWAY of a graceful shutdown."""
        limits = self.server.limits
        while True:
            changed = self._streams_changed
            if self.wire.broken:
                break
            if self.server.shutting_down and not self._goaway_sent:
                await self._send_goaway(_CODES.NO_ERROR)
            if self.wire.streams:
                await changed.wait()
                continue
            if self._goaway_sent or self._peer_goaway:
                break
            timeout = limits.idle_timeout if self._served_one else limits.head_timeout
            with trio.move_on_after(math.inf if timeout is None else timeout):
                await changed.wait()
            if not changed.is_set() and not self.wire.streams:
                await self._send_goaway(_CODES.NO_ERROR)
                break
        scope.cancel()

    def _changed(self) -> None:
        self._streams_changed.set()
        self._streams_changed = trio.Event()

    async def _send_goaway(self, code: int) -> None:
        """GOAWAY with the last stream id we took. NO_ERROR (shutdown, idle)
        lets the open streams finish; an error code ends the connection."""
        if self._goaway_sent:
            return
        self._goaway_sent = True
        last = self.wire.h2.highest_inbound_stream_id
        try:
            if code == _CODES.NO_ERROR:
                self.wire.queue_goaway(last, code)
            else:
                self.wire.h2.close_connection(error_code=code, last_stream_id=last)
            await self.wire.flush()
        except (h2.exceptions.ProtocolError, ClientDisconnected):
            pass

    async def _handle(self, data: bytes) -> bool:
        """Meter and parse ``data``; False when the connection must end."""
        flood = self.meter.feed(data)
        if flood is not None:
            await self._calm(flood.what)
            return False
        try:
            self.wire.receive_events(data)
        except h2.exceptions.ProtocolError as exc:
            self._goaway_sent = True  # h2 queued it
            self._log("protocol error: %s", exc)
            with contextlib.suppress(ClientDisconnected):
                await self.wire.flush()
            return False
        if self._flood is not None:
            await self._calm(self._flood)
            return False
        try:
            await self.wire.flush()
        except ClientDisconnected:
            return False
        return True

    def on_event(self, event: h2.events.Event) -> None:
        """The events that are not a stream's bytes, in order."""
        if isinstance(event, h2.events.RequestReceived):
            self._on_request(event)
        elif isinstance(event, h2.events.StreamReset):
            self.counts["reset by peer"] += 1
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._peer_goaway = True
            self._changed()

    async def _calm(self, what: str) -> None:
        """A flood limit broke: GOAWAY ENHANCE_YOUR_CALM, end the connection."""
        self._log("HTTP/2 limit: too many %s; closing", what)
        await self._send_goaway(_CODES.ENHANCE_YOUR_CALM)

    def _log(self, message: str, *args: object) -> None:
        logger.info("connection %d: " + message, self.connection.id, *args)

    # -- streams ---------------------------------------------------------------

    def _on_request(self, event: h2.events.RequestReceived) -> None:
        """Open a stream and start its handler, or refuse it alone."""
        if self._flood is not None:
            return  # the connection is ending: no more work for this peer
        stream_id = event.stream_id
        wire = self.wire
        limits = self.server.limits
        refuse = None
        if self._goaway_sent or len(wire.streams) >= limits.h2_max_concurrent_streams:
            refuse = _CODES.REFUSED_STREAM
        head = _request_head(event.headers or [])
        if refuse is None and head is None:
            refuse = _CODES.PROTOCOL_ERROR
        if (
            refuse is None
            and head is not None
            and head[2] is not None
            and not self.extended_connect
        ):
            # :protocol only after we said we serve it (RFC 8441 4).
            refuse = _CODES.PROTOCOL_ERROR
        if refuse is not None:
            self.counts["refused"] += 1
            with contextlib.suppress(h2.exceptions.ProtocolError):
                wire.h2.reset_stream(stream_id, refuse)
            if self.meter.count("resets") is not None:
                self._flood = "resets (rapid reset)"
            return
        assert head is not None
        stream = H2Stream(wire, stream_id)
        if event.stream_ended is not None:
            stream.end_received = True
        wire.streams[stream_id] = stream
        self.counts["streams"] += 1
        self._served_one = True
        self.connection._set_state(ConnState.ACTIVE)
        self._changed()
        assert self._nursery is not None
        exchange = H2Exchange(self.server, wire, self.connection, stream, head)
        self._nursery.start_soon(self._run_stream, exchange, stream)

    async def _run_stream(self, exchange: H2Exchange, stream: H2Stream) -> None:
        scope = trio.CancelScope()
        stream.scope = scope
        with scope, contextlib.suppress(ClientDisconnected, HTTPError):
            await exchange.run(self.server.handler)
        if exchange.hijacked is not None:
            return  # its owner (or _release) closes it
        if stream.error is None and not stream.end_sent:
            # Cancelled (reset by the peer, or the grace ended) mid-response.
            self.wire.reset(stream, _CODES.CANCEL)
        else:
            self.wire.discard(stream)
        with contextlib.suppress(ClientDisconnected):
            await self.wire.flush()

    def stream_owned(self, stream: H2Stream, owned: bool) -> None:
        if owned:
            self._owned.add(stream.id)
            self.counts["hijacked"] += 1
        else:
            self._owned.discard(stream.id)

    def stream_closed(self, stream: H2Stream) -> None:
        if not self.wire.streams and self.connection.state is ConnState.ACTIVE:
            self.connection._set_state(ConnState.IDLE)
        self._changed()


class _ServerWire(H2Wire):
    """The wire with the server loop's hooks."""

    def __init__(self, loop: HTTP2Connection, *args: object, **kwargs: object) -> None:
        super().__init__(*args, client_side=False, **kwargs)  # type: ignore[arg-type]
        self.loop = loop
        self._discarded: dict[int, int] = {}

    def on_event(self, event: h2.events.Event) -> None:
        self.loop.on_event(event)

    def on_owned(self, stream: H2Stream, owned: bool) -> None:
        self.loop.stream_owned(stream, owned)

    def on_stream_closed(self, stream: H2Stream) -> None:
        self._discarded.pop(stream.id, None)
        self.loop.stream_closed(stream)

    def on_discarding(self, stream: H2Stream) -> None:
        self._discarded[stream.id] = 0

    def on_discarded(self, stream: H2Stream, size: int) -> None:
        total = self._discarded.get(stream.id, 0) + size
        self._discarded[stream.id] = total
        if total > DRAIN_LIMIT:
            self.reset(stream, _CODES.NO_ERROR)


def _request_head(
    headers: list[tuple[bytes, bytes]],
) -> tuple[str, str, str | None, list[tuple[bytes, bytes]]] | None:
    """(method, target, :protocol, regular headers) of a request; None if
    malformed. ``:authority`` becomes ``host`` when there is none (the
    HTTP/1.1 handlers route on it); the target is ``:path``, or the
    authority for a plain CONNECT."""
    pseudo: dict[bytes, bytes] = {}
    regular: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name.startswith(b":"):
            pseudo[name] = value
        else:
            regular.append((name, value))
    method = pseudo.get(b":method")
    if method is None:
        return None
    authority = pseudo.get(b":authority")
    protocol = pseudo.get(b":protocol")
    if method == b"CONNECT" and protocol is None:
        if authority is None:
            return None
        target = authority
    else:
        target = pseudo.get(b":path", b"")
        if not target:
            return None
    if authority is not None and not any(k == b"host" for k, _ in regular):
        regular.insert(0, (b"host", authority))
    return (
        method.decode("ascii", "replace"),
        target.decode("latin-1"),
        None if protocol is None else protocol.decode("latin-1"),
        regular,
    )


async def choose_protocol(
    server: ServerSide, connection: Connection
) -> ConnectionLoop | None:
    """The loop for a connection of a server with ``http2=True``: HTTP/2 if
    TLS chose ``h2`` by ALPN, or if a plain connection opens with the
    HTTP/2 preface; HTTP/1.1 otherwise (with the bytes read to tell, given
    to h11, or to the server's ``sniff`` first). None if the client left or
    was silent for ``head_timeout``."""
    extended = bool(getattr(server, "extended_connect", False))
    stream = connection.stream
    if isinstance(stream, trio.SSLStream):
        if stream.selected_alpn_protocol() == "h2":
            return HTTP2Connection(server, connection, extended_connect=extended)
        return HTTPConnection(server, connection)
    timeout = server.limits.head_timeout
    received = b""
    with trio.move_on_after(math.inf if timeout is None else timeout):
        while len(received) < len(PREFACE) and PREFACE.startswith(received):
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return None
            if not data:
                break
            received += data
    if not received:
        return None
    if received.startswith(PREFACE):
        return HTTP2Connection(
            server, connection, extended_connect=extended, received=received
        )
    http = HTTPConnection(server, connection)
    http.parser.receive_data(received)
    sniff = getattr(server, "sniff", None)
    if sniff is not None:
        # The first read the HTTP/1.1 loop would have shown the sniff.
        taken = sniff(received)
        if taken is not None:
            return _TakenBy(http, taken)
    return http


class _TakenBy:
    """The server's sniff took the connection (SOCKS5 on the port): hand it,
    with the bytes read, to the stream handler, as the HTTP/1.1 loop does."""

    def __init__(self, http: HTTPConnection, take: StreamHandler) -> None:
        self._http = http
        self._take = take

    def request_shutdown(self) -> None:
        pass  # the stream handler watches connection.shutdown_requested

    async def serve(self) -> None:
        await self._http._give_to(self._take)


#: What serves a connection of a server with ``http2=True``.
ConnectionLoop = HTTPConnection | HTTP2Connection | _TakenBy
