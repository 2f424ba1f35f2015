"""The connection loop: one task per connection reads request heads, runs
each request as an :class:`~hijack._exchange.Exchange`, keeps the connection
alive between them, and hands the stream over on hijack.

h11 owns HTTP framing; this module owns the stream, the parser, timeouts and
the keep-alive loop. Every byte received is fed to h11 at once, so at any
moment h11's receive buffer (``trailing_data``) holds exactly the bytes not
yet consumed: that is what a hijack hands over as ``buffered``.

We never call ``receive_some`` while h11 is paused on a pipelined request, so
a client that sends without reading cannot grow our buffers (backpressure).
"""

from __future__ import annotations

import time

import h11
import trio

from ._access_log import make_record
from ._closing import aclose_gracefully
from ._connection import Connection, ConnState
from ._errors import ClientDisconnected, UsageError
from ._exchange import Exchange, Handler, ServerSide, StreamHandler
from ._hijack import Hijacked
from ._message import HTTPError
from ._plain_socket import plain_socket, receive, send_now
from ._request_head import ambiguous_framing, protocol_error_status, refusal_status
from ._response_head import response_headers

__all__ = ["HTTPConnection", "Handler"]

RECEIVE_SIZE = 65536
# At shutdown, how long a connection accepted but silent may take to send
# its first request (Go waits 5 s for StateNew; a balancer's connection
# sends at once, so 1 s is plenty and keeps shutdown quick).
NEW_CONNECTION_SHUTDOWN_WAIT = 1.0
# Lingering close after an error answer: at most this long, this many bytes.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024

_STREAM_GONE = (trio.BrokenResourceError, trio.ClosedResourceError)


class HTTPConnection:
    """Serves HTTP on one stream until it closes or is hijacked.

    Owns the stream and the h11 parser until :meth:`hand_over`, which gives
    both away for good (the parser is freed: an idle tunnel should not pay
    for it)."""

    __slots__ = (
        "_h11",
        "_idle_is_new",
        "_idle_scope",
        "_socket",
        "broken",
        "connection",
        "head_started",
        "linger",
        "server",
        "stream",
        "taken_by",
    )

    def __init__(self, server: ServerSide, connection: Connection) -> None:
        self.server = server
        self.connection = connection
        self.stream = connection.stream
        # A plain socket is read and written directly (see _plain_socket).
        self._socket = plain_socket(self.stream)
        self._h11: h11.Connection | None = h11.Connection(
            h11.SERVER, max_incomplete_event_size=server.limits.max_head_size
        )
        self._idle_scope: trio.CancelScope | None = None
        self._idle_is_new = False
        #: (trio clock, wall clock) at the first byte of the current head.
        self.head_started = (0.0, 0.0)
        #: Half-close and drain before closing (after an early error answer).
        self.linger = False
        #: A write or read failed: the client is gone.
        self.broken = False
        #: The server's sniff gave the connection to this stream handler.
        self.taken_by: StreamHandler | None = None

    @property
    def parser(self) -> h11.Connection:
        """The h11 connection; gone once the stream was handed over."""
        if self._h11 is None:  # pragma: no cover - exchanges check first
            raise RuntimeError("the HTTP layer handed this connection over")
        return self._h11

    @property
    def handed_over(self) -> bool:
        return self._h11 is None

    def request_shutdown(self) -> None:
        """Graceful shutdown: end the keep-alive wait now; a request in
        flight finishes (its response says ``Connection: close``)."""
        scope = self._idle_scope
        if scope is not None:
            if self._idle_is_new:
                scope.deadline = min(
                    scope.deadline, trio.current_time() + NEW_CONNECTION_SHUTDOWN_WAIT
                )
            else:
                scope.cancel()

    # -- the connection loop -------------------------------------------------

    async def serve(self) -> None:
        """Serve requests until the connection ends.

        Resource handling: closes the stream on return unless it was handed
        over; a hijacked stream is closed when the handler returns unless
        detached (see ``Hijacked``)."""
        try:
            first = True
            while True:
                exchange = await self._next_exchange(first)
                if exchange is None:
                    if self.taken_by is not None:
                        await self._give_to(self.taken_by)
                    return
                first = False
                try:
                    await exchange.run(self.server.handler)
                finally:
                    if exchange.hijacked is None and self.server.reporting:
                        exchange.report()
                if exchange.hijacked is not None:
                    return
                if not await exchange.keep_alive():
                    return
                self.connection._set_state(ConnState.IDLE)
        except ClientDisconnected:
            pass
        finally:
            if not self.handed_over:
                if self.linger:
                    await self._drain_before_close()
                await aclose_gracefully(self.stream)
                self.connection._set_state(ConnState.CLOSED)

    async def _drain_before_close(self) -> None:
        """Lingering close (as nginx does). After an early error answer the
        client may still be sending (a huge head, a refused body). Closing
        with unread input makes the kernel send a reset, which can destroy
        the answer before the client reads it. So: half-close, then read and
        drop what still comes, for a short, bounded while."""
        stream = self.stream
        with trio.move_on_after(LINGER_SECONDS):
            try:
                if isinstance(stream, trio.abc.HalfCloseableStream):
                    await stream.send_eof()
                drained = 0
                while drained < LINGER_BYTES:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        break
                    drained += len(data)
            except (*_STREAM_GONE, OSError):
                pass

    async def _next_exchange(self, first: bool) -> Exchange | None:
        """Wait for the next request head; None when the connection should
        end (client closed, idle timeout, shutdown, or a head refused and
        answered here)."""
        limits = self.server.limits
        conn = self.parser
        now = trio.current_time()
        # On a new connection the head clock starts at accept; between
        # keep-alive requests it starts at the first byte of the next one.
        deadline = now + _or_inf(limits.head_timeout) if first else None
        if not conn.trailing_data[0]:
            # Idle between requests: shutdown ends it. A new connection gets
            # a moment to send its first request (Go's StateNew rule): it
            # was accepted from the queue a moment ago, and closing it
            # unanswered would refuse a client during a rolling restart.
            if self.server.shutting_down and not first:
                return None
            wait_until = deadline or now + _or_inf(limits.idle_timeout)
            if first and self.server.shutting_down:
                wait_until = min(wait_until, now + NEW_CONNECTION_SHUTDOWN_WAIT)
            with trio.CancelScope(deadline=wait_until) as scope:
                self._idle_scope = scope
                self._idle_is_new = first
                try:
                    # Between requests we just answered: wait, then read.
                    await self._receive(wait_first=not first)
                finally:
                    self._idle_scope = None
            if scope.cancelled_caught or not conn.trailing_data[0]:
                return None
            if first and self.server.sniff is not None:
                # Not HTTP, maybe: the server's sniff sees the first read.
                self.taken_by = self.server.sniff(conn.trailing_data[0])
                if self.taken_by is not None:
                    return None
        else:
            # A pipelined head, read with an earlier one: no read will yield
            # for it, and the last response's write did not either (see
            # write()). One scheduler pass per request keeps a client that
            # pipelines from starving the other connections.
            await trio.lowlevel.checkpoint()
        self.connection._set_state(ConnState.ACTIVE)
        self.head_started = (trio.current_time(), time.time())
        if deadline is None:
            deadline = trio.current_time() + _or_inf(limits.head_timeout)
        try:
            event = await self.next_event_before(deadline)
        except h11.RemoteProtocolError as exc:
            await self._refuse(protocol_error_status(exc))
            return None
        if event is None:
            await self._refuse(408)
            return None
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):  # pragma: no cover - h11 rules
            raise RuntimeError(f"unexpected h11 event {event!r}")
        headers = list(event.headers)
        status = refusal_status(event, headers, limits)
        if status is not None:
            await self._refuse(status)
            return None
        body_timeout = limits.body_timeout
        return Exchange(
            self,
            self.connection,
            event,
            headers,
            must_close=ambiguous_framing(headers),
            body_deadline=trio.current_time() + _or_inf(body_timeout),
        )

    async def _refuse(self, status: int) -> None:
        """Answer a head refused before any handler ran (bad, slow, too big)
        if h11 still lets us; the connection then closes."""
        conn = self.parser
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        if self.connection.state is ConnState.NEW:
            self.connection._set_state(ConnState.ACTIVE)
        response = HTTPError(status).response()
        assert isinstance(response.body, bytes)
        head = h11.Response(
            status_code=status,
            headers=response_headers(response, add_length=True, close=True),
            reason=response.reason.encode("latin-1"),
        )
        try:
            data = self.encode(head)
            data += self.encode(h11.Data(data=response.body))
            await self.write(data + self.encode(h11.EndOfMessage()))
        except (ClientDisconnected, UsageError):
            return
        finally:
            if self.server.reporting:
                self.server.report(
                    make_record(
                        self.connection,
                        None,
                        status,
                        len(response.body),
                        self.head_started,
                    )
                )
        self.linger = True

    def start_next_cycle(self) -> bool:
        """Both sides are done with a request: reset h11 for the next one."""
        conn = self.parser
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:  # pragma: no cover - checked above
            return False
        return True

    # -- reading -------------------------------------------------------------

    async def _receive(self, *, wait_first: bool = False) -> None:
        data: bytes | bytearray
        try:
            if self._socket is not None:
                data = await receive(self._socket, RECEIVE_SIZE, wait_first=wait_first)
            else:
                data = await self.stream.receive_some(RECEIVE_SIZE)
        except (*_STREAM_GONE, OSError) as exc:
            # Also a TLS client that leaves without close_notify: HTTP framing
            # tells a complete request from a cut one, so it is just gone.
            self.broken = True
            raise ClientDisconnected("the client closed the connection") from exc
        if type(data) is not bytes:  # memory streams give bytearray; h11 is
            data = bytes(data)  # typed for bytes
        self.parser.receive_data(data)

    async def next_event_before(
        self, deadline: float
    ) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED] | None:
        """The next h11 event, reading until h11 has one; None if
        ``deadline`` passes first. Most events are already buffered: those
        cost no cancel scope (a measurable share of a keep-alive request)."""
        conn = self.parser
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.CancelScope(deadline=deadline):
            while True:
                await self._receive()
                event = conn.next_event()
                if event is not h11.NEED_DATA:
                    return event
        return None

    # -- writing -------------------------------------------------------------

    def encode(self, event: h11.Event) -> bytes:
        """``event`` as bytes, through h11's state machine."""
        conn = self.parser
        try:
            return conn.send(event) or b""
        except h11.LocalProtocolError as exc:
            conn.send_failed()
            raise UsageError(f"cannot send {event!r}: {exc}") from None

    async def send(self, event: h11.Event) -> None:
        data = self.encode(event)
        if data:
            await self.write(data)

    async def write(self, data: bytes, *, schedule: bool = True) -> None:
        """Send ``data`` within ``write_timeout``, or raise
        ``ClientDisconnected``: the client left or stopped reading.

        On a plain socket the kernel usually takes it all at once: then no
        cancel scope is made, and with ``schedule=False`` (a complete
        response, which the connection loop follows with a read that
        yields) no scheduler pass is spent either."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._socket is not None:
            try:
                sent = send_now(self._socket, data)
            except OSError as exc:
                self._write_failed()
                raise ClientDisconnected("the client closed the connection") from exc
            if sent == len(data):
                if schedule:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return
            data = data[sent:]
        timeout = self.server.limits.write_timeout
        try:
            with trio.CancelScope(
                deadline=trio.current_time() + _or_inf(timeout)
            ) as scope:
                await self.stream.send_all(data)
        except _STREAM_GONE as exc:
            self._write_failed()
            raise ClientDisconnected("the client closed the connection") from exc
        if scope.cancelled_caught:
            self._write_failed()
            raise ClientDisconnected(
                f"the client read nothing for {timeout}s (write_timeout)"
            )

    def _write_failed(self) -> None:
        self.broken = True
        if self._h11 is not None:
            self._h11.send_failed()

    # -- hijack --------------------------------------------------------------

    async def _give_to(self, take: StreamHandler) -> None:
        """The sniffed connection is not HTTP: hand it, with every byte
        read, to its stream handler (a hijack with no exchange before it)."""
        self.connection._set_state(ConnState.ACTIVE)
        hijacked = self.hand_over()
        try:
            await take(hijacked)
        finally:
            await hijacked._release()

    def hand_over(self) -> Hijacked:
        """Give the stream and every byte read ahead to a :class:`Hijacked`
        and leave HTTP for good."""
        # Every byte we received went to h11; what it did not consume is
        # exactly what the client sent after the consumed part.
        buffered, _closed = self.parser.trailing_data
        hijacked = Hijacked(self.stream, bytes(buffered), self.connection)
        hijacked.hub = self.server.hub
        # Free h11's state now rather than keep it as long as the tunnel.
        self._h11 = None
        self.connection._hijack(hijacked)
        return hijacked


def _or_inf(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout
