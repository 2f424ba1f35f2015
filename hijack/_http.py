"""The h11 driver: one task per connection reads requests, runs the handler,
writes responses, and hands the stream over on hijack.

h11 owns HTTP framing; this module owns sockets, timeouts and tasks. Every
byte received is fed to h11 at once, so at any moment h11's receive buffer
(``trailing_data``) holds exactly the bytes not yet consumed: that is what a
hijack hands over as ``buffered``.

We never call ``receive_some`` while h11 is paused on a pipelined request, so
a client that sends without reading cannot grow our buffers (backpressure).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from typing import Protocol

import h11
import trio

from ._access_log import AccessRecord
from ._config import Limits
from ._connection import Connection, ConnState
from ._hijack import Hijacked, HijackError
from ._message import Headers, HTTPError, Request, Response, phrase

__all__ = ["HTTPConnection", "Handler"]

logger = logging.getLogger("hijack")

Handler = Callable[[Request], Awaitable[Response | None]]

RECEIVE_SIZE = 65536
# After the handler returns with body bytes unread, read (and drop) this many
# to keep the connection alive; past it, close instead (Go does the same).
DRAIN_LIMIT = 256 * 1024
SERVER_HEADER = (b"server", b"hijack")
# At shutdown, how long a connection accepted but silent may take to send
# its first request (Go waits 5 s for StateNew; a balancer's connection
# sends at once, so 1 s is plenty and keeps shutdown quick).
NEW_CONNECTION_SHUTDOWN_WAIT = 1.0
# Lingering close after an error answer: at most this long, this many bytes.
LINGER_SECONDS = 2.0
LINGER_BYTES = 1024 * 1024
# RFC 9112 3.2 + RFC 3986 3.2.2: Host = uri-host [ ":" port ], where uri-host
# is an IP-literal in brackets or a reg-name (possibly empty).
_HOST_VALUE = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+\]"
    rb"|[-A-Za-z0-9._~!$&'()*+,;=%]*)(?::[0-9]*)?"
)


class ServerSide(Protocol):
    """What a connection needs from its server."""

    limits: Limits
    handler: Handler

    @property
    def shutting_down(self) -> bool: ...

    @property
    def reporting(self) -> bool: ...

    def report(self, record: AccessRecord) -> None: ...

    def track_hijacked(self, hijacked: Hijacked) -> None: ...


class _Date:
    """The Date header, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.value = formatdate(second, usegmt=True).encode("ascii")
        return cls.value


class _CloseConnection(Exception):
    """Internal: stop serving this connection now, without a response."""


class HTTPConnection:
    """Serves HTTP on one stream until it closes or is hijacked."""

    __slots__ = (
        "_body_bytes",
        "_body_deadline",
        "_body_done",
        "_exchange",
        "_hijacked",
        "_idle_is_new",
        "_idle_scope",
        "_linger",
        "_must_close",
        "_request",
        "_response_started",
        "_sent_body",
        "_started",
        "_status",
        "connection",
        "h11",
        "server",
        "stream",
    )

    def __init__(
        self, server: ServerSide, stream: trio.abc.Stream, connection: Connection
    ) -> None:
        self.server = server
        self.stream = stream
        self.connection = connection
        self.h11 = h11.Connection(
            h11.SERVER, max_incomplete_event_size=server.limits.max_head_size
        )
        self._idle_scope: trio.CancelScope | None = None
        self._idle_is_new = False
        self._linger = False
        self._hijacked: Hijacked | None = None
        self._request: Request | None = None
        self._exchange: _Exchange | None = None
        self._reset_exchange()

    def _reset_exchange(self) -> None:
        self._request = None
        self._response_started = False
        self._must_close = False
        self._body_done = False
        self._body_bytes = 0
        self._body_deadline = float("inf")
        self._status: int | None = None
        self._sent_body = 0
        self._started = (0.0, 0.0)  # (trio clock, wall clock) at the head

    def request_shutdown(self) -> None:
        """Graceful shutdown: end the keep-alive wait now; let a request in
        flight finish (its response says ``Connection: close``)."""
        self.connection.shutdown_requested.set()
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

        Resource handling: closes ``stream`` on return unless it was hijacked;
        a hijacked stream is closed when the handler returns unless detached.
        """
        try:
            first = True
            while True:
                request = await self._receive_request(first)
                if request is None:
                    return
                first = False
                try:
                    await self._run_handler(request)
                finally:
                    if self._hijacked is None and self.server.reporting:
                        self._report(request)
                if self._hijacked is not None:
                    return
                if not await self._finish_exchange():
                    return
                self.connection.set_state(ConnState.IDLE)
        except _CloseConnection:
            pass
        finally:
            if self._hijacked is None:
                if self._linger:
                    await self._drain_before_close()
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(self.stream)
                self.connection.set_state(ConnState.CLOSED)

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
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

    async def _receive(self) -> None:
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if type(data) is not bytes:  # memory streams give bytearray; h11 is
            data = bytes(data)  # typed for bytes
        self.h11.receive_data(data)

    async def _next_event_before(
        self, deadline: float
    ) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED] | None:
        """The next h11 event, reading until h11 has one; None if
        ``deadline`` passes first. Most events are already buffered: those
        cost no cancel scope (a measurable share of a keep-alive request)."""
        event = self.h11.next_event()
        if event is not h11.NEED_DATA:
            return event
        with trio.CancelScope(deadline=deadline):
            while True:
                await self._receive()
                event = self.h11.next_event()
                if event is not h11.NEED_DATA:
                    return event
        return None

    def _has_partial_request(self) -> bool:
        return bool(self.h11.trailing_data[0])

    async def _receive_request(self, first: bool) -> Request | None:
        """Wait for the next request head; None when the connection should
        end quietly (client closed, idle timeout, shutdown)."""
        self._reset_exchange()  # the previous exchange is over
        limits = self.server.limits
        conn = self.h11
        now = trio.current_time()
        # On a new connection the head clock starts at accept; between
        # keep-alive requests it starts at the first byte of the next one.
        deadline = now + _or_inf(limits.head_timeout) if first else None
        if not self._has_partial_request():
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
                    await self._receive()
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                finally:
                    self._idle_scope = None
            if scope.cancelled_caught or not conn.trailing_data[0]:
                return None
        self.connection.set_state(ConnState.ACTIVE)
        self._started = (trio.current_time(), time.time())
        if deadline is None:
            deadline = trio.current_time() + _or_inf(limits.head_timeout)
        try:
            event = await self._next_event_before(deadline)
        except h11.RemoteProtocolError as exc:
            await self._send_error(_request_error_status(exc))
            return None
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return None
        if event is None:
            await self._send_error(408)
            return None
        if isinstance(event, h11.ConnectionClosed):
            return None
        if not isinstance(event, h11.Request):  # pragma: no cover - h11 rules
            raise RuntimeError(f"unexpected h11 event {event!r}")
        return await self._check_request(event)

    async def _check_request(self, event: h11.Request) -> Request | None:
        """Enforce what h11 leaves to us; build the Request or answer now."""
        limits = self.server.limits
        head_size = len(event.method) + len(event.target) + 12
        head_size += sum(len(k) + len(v) + 4 for k, v in event.headers)
        status = 0
        # RFC 9110 2.5: serve any 1.x as the highest 1.x we implement.
        if not event.http_version.startswith(b"1."):
            status = 505
        elif any(
            k == b"host" and not _HOST_VALUE.fullmatch(v) for k, v in event.headers
        ):
            status = 400  # RFC 9112 3.2: an invalid Host value
        elif len(event.target) > limits.max_target_size:
            status = 414
        elif head_size > limits.max_head_size:
            status = 431
        else:
            lengths = [v for k, v in event.headers if k == b"content-length"]
            if lengths and int(lengths[0]) > limits.max_body_size:
                status = 413
        if status:
            await self._send_error(status)
            return None
        headers = Headers(list(event.headers))
        # RFC 9112 6.1: Content-Length with Transfer-Encoding may be a
        # smuggling attempt: answer, then close.
        if b"transfer-encoding" in (k for k, _ in event.headers) and any(
            k == b"content-length" for k, _ in event.headers
        ):
            self._must_close = True
        body_timeout = limits.body_timeout
        if body_timeout is not None:
            self._body_deadline = trio.current_time() + body_timeout
        self._exchange = _Exchange(self)
        request = Request(
            self._exchange,
            self.connection,
            event.method.decode("ascii"),
            event.target.decode("latin-1"),
            event.http_version.decode("ascii"),
            headers,
        )
        self._request = request
        return request

    async def _run_handler(self, request: Request) -> None:
        try:
            response = await self.server.handler(request)
            if self._hijacked is not None and response is not None:
                logger.error(
                    "handler returned %r after hijacking %r; discarded",
                    response,
                    request,
                )
        except _CloseConnection:
            raise  # the client is gone: not a handler failure
        except HTTPError as exc:
            if self._hijacked is not None:
                logger.error("handler raised %r after hijacking %r", exc, request)
            else:
                self._must_close = self._must_close or not self._body_done
                await self._respond_error(exc.status, exc.detail, exc.headers)
            return
        except Exception:
            logger.exception("handler failed on %r", request)
            if self._hijacked is None:
                self._must_close = True
                await self._respond_error(500)
            return
        finally:
            if self._exchange is not None:
                self._exchange.live = False
            if self._hijacked is not None:
                await self._hijacked.release()
        if self._hijacked is not None:
            return
        if self._response_started:
            if response is not None:
                logger.error("handler returned %r after start_response", response)
            await self._send(h11.EndOfMessage())
            return
        if response is None:
            logger.error("handler returned None without responding to %r", request)
            self._must_close = True
            await self._respond_error(500)
            return
        try:
            await self._send_response(response, request.method == "HEAD")
        except HijackError as exc:  # e.g. a 2xx to CONNECT without hijack()
            logger.error("handler returned %r to %r: %s", response, request, exc)
            self._must_close = True
            await self._respond_error(500)

    async def _send_response(self, response: Response, head_only: bool) -> None:
        body = response.body
        head = self._begin_response(response, add_length=True)
        if isinstance(body, bytes | bytearray | memoryview):
            # One write for head, body and end: a syscall, not three.
            parts = [head]
            if body and not head_only:
                parts.append(self._encode(h11.Data(data=body)))
                self._sent_body = len(body)
            parts.append(self._encode(h11.EndOfMessage()))
            await self._write(b"".join(parts))
            return
        await self._write(head)
        # Close the body's iterator ourselves, even when the client went away
        # mid-stream: its cleanup then runs in this task, now, not from GC.
        try:
            async for chunk in body:
                if chunk and not head_only:
                    await self._send(h11.Data(data=chunk))
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._send(h11.EndOfMessage())

    async def _finish_exchange(self) -> bool:
        """After a response: True to keep the connection for the next one."""
        conn = self.h11
        if self._must_close or self.server.shutting_down:
            return False
        if conn.their_state is h11.SEND_BODY:
            # Drain a small unread body to keep the connection alive.
            try:
                while self._body_bytes <= DRAIN_LIMIT:
                    if not await self.read_body_chunk():
                        break
            except HTTPError:
                return False
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return False
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return False
        return True

    # -- writing ---------------------------------------------------------

    def _encode(self, event: h11.Event) -> bytes:
        try:
            return self.h11.send(event) or b""
        except h11.LocalProtocolError:
            self.h11.send_failed()
            raise

    async def _send(self, event: h11.Event) -> None:
        if type(event) is h11.Data:
            self._sent_body += len(event.data)
        data = self._encode(event)
        if data:
            await self._write(data)

    async def _write(self, data: bytes) -> None:
        timeout = self.server.limits.write_timeout
        try:
            with trio.CancelScope(
                deadline=trio.current_time() + _or_inf(timeout)
            ) as scope:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.h11.send_failed()
            raise _CloseConnection from exc
        if scope.cancelled_caught:
            self.h11.send_failed()
            raise _CloseConnection

    def _head_headers(
        self, response: Response, add_length: bool
    ) -> list[tuple[bytes, bytes]]:
        headers = response.headers
        names = {k.lower() for k, _ in headers}
        extra = _date_and_server(names)
        body = response.body
        if (
            add_length
            and isinstance(body, bytes | bytearray | memoryview)
            and b"content-length" not in names
            and b"transfer-encoding" not in names
            and response.status not in (204, 304)
        ):
            extra.append((b"content-length", str(len(body)).encode()))
        if self._must_close or self.server.shutting_down:
            extra.append((b"connection", b"close"))
        return extra + headers if extra else headers

    async def start_response(self, response: Response) -> None:
        """Send the head now; the caller streams the body (chunked)."""
        await self._write(self._begin_response(response, add_length=False))

    def _begin_response(self, response: Response, add_length: bool) -> bytes:
        """The encoded head. ``add_length``: the body is ``response.body``
        and its length is known."""
        self._check_not_hijacked("send a response")
        if self._response_started:
            raise HijackError("a response was already started for this request")
        if response.status < 200:
            raise ValueError("use hijack() to send a 1xx response")
        request = self._request
        if (
            request is not None
            and request.method == "CONNECT"
            and response.status < 300
        ):
            # A 2xx to CONNECT switches protocols: only hijack() can send it.
            raise HijackError(
                "a 2xx answer to CONNECT opens a tunnel: use request.hijack(response)"
            )
        self._response_started = True
        self._status = response.status
        return self._encode(
            h11.Response(
                status_code=response.status,
                headers=self._head_headers(response, add_length),
                reason=response.reason.encode("latin-1"),
            )
        )

    async def send_data(self, data: bytes) -> None:
        self._check_not_hijacked("send data")
        if not self._response_started:
            raise RuntimeError("call start_response() before send_data()")
        if data:
            await self._send(h11.Data(data=data))

    async def _respond_error(
        self,
        status: int,
        detail: str = "",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        """Answer with an error if no response was started, else cut the
        connection (the client sees a truncated response)."""
        if self._response_started or self.h11.our_state is not h11.SEND_RESPONSE:
            self._must_close = True
            raise _CloseConnection
        self._linger = self._linger or not self._body_done
        head_only = self._request is not None and self._request.method == "HEAD"
        await self._send_response(_error_response(status, detail, headers), head_only)

    async def _send_error(self, status: int) -> None:
        """An error before any handler ran (bad or slow head): answer if h11
        still lets us, then the connection closes."""
        self._must_close = True
        if self.h11.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        if self.connection.state is ConnState.NEW:
            self.connection.set_state(ConnState.ACTIVE)
        try:
            await self._send_response(_error_response(status), head_only=False)
        except (_CloseConnection, h11.LocalProtocolError):
            return
        finally:
            if self.server.reporting:
                self._report(None)
        self._linger = True

    # -- reading the body ------------------------------------------------

    async def read_body_chunk(self) -> bytes:
        self._check_not_hijacked("read the request body")
        if self._body_done:
            return b""
        conn = self.h11
        if conn.they_are_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        try:
            event = await self._next_event_before(self._body_deadline)
        except h11.RemoteProtocolError as exc:
            self._body_done = True
            self._must_close = True
            raise HTTPError(
                _request_error_status(exc), "malformed request body"
            ) from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._body_done = True
            self._must_close = True
            raise _CloseConnection from exc
        if event is None:
            self._body_done = True
            self._must_close = True
            raise HTTPError(408, "request body too slow")
        if isinstance(event, h11.Data):
            self._body_bytes += len(event.data)
            if self._body_bytes > self.server.limits.max_body_size:
                self._body_done = True
                self._must_close = True
                raise HTTPError(413, "request body too large")
            return bytes(event.data)
        self._body_done = True
        return b""

    # -- hijack ------------------------------------------------------------

    def _check_not_hijacked(self, what: str) -> None:
        if self._hijacked is not None:
            raise HijackError(f"cannot {what}: the connection was hijacked")

    async def hijack(self, response: Response | None) -> Hijacked:
        if self._hijacked is not None:
            raise HijackError("the connection was already hijacked")
        if response is not None:
            if self._response_started:
                raise HijackError("a response was already started; hijack() bare")
            if not isinstance(response.body, bytes) or response.body:
                raise HijackError("a hijack response carries no body")
            head = _serialize_head(response, self._head_headers_for_hijack(response))
            await self._write(head)
            self._status = response.status
        if self.server.reporting and self._request is not None:
            self._report(self._request)
        # Every byte we received went to h11; what it did not consume is
        # exactly what the client sent after the consumed part.
        buffered, _closed = self.h11.trailing_data
        hijacked = Hijacked(self.stream, buffered, self.connection)
        self._hijacked = hijacked
        # The HTTP layer is done with this connection for good: free h11's
        # state now rather than keep it for as long as the tunnel lives.
        del self.h11
        self.connection.set_state(ConnState.HIJACKED)
        self.server.track_hijacked(hijacked)
        return hijacked

    def _report(self, request: Request | None) -> None:
        """The exchange is over: hand its record to the access log and the
        server's ``on_request`` hooks."""
        clock_start, wall_start = self._started
        headers = request.headers if request is not None else None
        self.server.report(
            AccessRecord(
                self.connection,
                request.method if request is not None else "-",
                request.target if request is not None else "-",
                request.http_version if request is not None else "1.1",
                self._status,
                self._sent_body,
                wall_start,
                trio.current_time() - clock_start,
                headers.get("user-agent", "") if headers is not None else "",
                headers.get("referer", "") if headers is not None else "",
                headers.get("upgrade", "").lower() if headers is not None else "",
            )
        )

    def _head_headers_for_hijack(self, response: Response) -> list[tuple[bytes, bytes]]:
        names = {k.lower() for k, _ in response.headers}
        return response.headers + _date_and_server(names)


def _date_and_server(names: set[bytes]) -> list[tuple[bytes, bytes]]:
    """The headers every response gets unless the handler set them."""
    extra = []
    if b"date" not in names:
        extra.append((b"date", _Date.now()))
    if b"server" not in names:
        extra.append(SERVER_HEADER)
    return extra


def _error_response(
    status: int, detail: str = "", headers: list[tuple[bytes, bytes]] | None = None
) -> Response:
    """The plain-text answer the server sends for an error of its own."""
    body = f"{status} {phrase(status)}\n".encode()
    if detail:
        body += detail.encode("utf-8", "replace") + b"\n"
    content_type = (b"content-type", b"text/plain; charset=utf-8")
    return Response(status, [content_type, *(headers or ())], body)


def _serialize_head(response: Response, headers: list[tuple[bytes, bytes]]) -> bytes:
    """The head of a hijack response. We write it ourselves: the connection
    leaves HTTP, so h11 must not add framing headers (a raw stream after a
    200 has no Transfer-Encoding). Values are checked for CR, LF and NUL."""
    reason = response.reason.encode("latin-1")
    lines = [b"HTTP/1.1 %d %s\r\n" % (response.status, reason)]
    for name, value in headers:
        if (
            not name
            or any(c in name for c in b"\r\n\x00 :\t")
            or any(c in value for c in b"\r\n\x00")
        ):
            raise ValueError(f"bad header {name!r}: {value!r}")
        lines.append(name + b": " + value + b"\r\n")
    if any(c in reason for c in b"\r\n\x00"):
        raise ValueError(f"bad reason {reason!r}")
    lines.append(b"\r\n")
    return b"".join(lines)


def _request_error_status(exc: h11.RemoteProtocolError) -> int:
    """The status for a bad request. h11 hints 501 for any Transfer-Encoding
    but a single ``chunked`` (in a head or a trailer); RFC 9112 6.3 says a
    request whose final coding is not chunked MUST get 400, then close."""
    status = exc.error_status_hint
    return 400 if status == 501 else status


def _or_inf(timeout: float | None) -> float:
    return float("inf") if timeout is None else timeout


class _Exchange:
    """A request's handle on its connection, valid while its handler runs.

    A Request object kept past its handler must not act on a later request
    of the same connection: once ``live`` is False every call raises."""

    __slots__ = ("driver", "live")

    def __init__(self, driver: HTTPConnection) -> None:
        self.driver = driver
        self.live = True

    def _check(self, what: str) -> HTTPConnection:
        if not self.live:
            raise HijackError(f"cannot {what}: the handler already returned")
        return self.driver

    async def read_body_chunk(self) -> bytes:
        return await self._check("read the request body").read_body_chunk()

    async def hijack(self, response: Response | None) -> Hijacked:
        return await self._check("hijack").hijack(response)

    async def start_response(self, response: Response) -> None:
        await self._check("send a response").start_response(response)

    async def send_data(self, data: bytes) -> None:
        await self._check("send data").send_data(data)
