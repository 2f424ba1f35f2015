"""One HTTP/2 request: the exchange behind a :class:`~hijack.Request` whose
stream is an HTTP/2 stream (the HTTP/1.1 one is ``_exchange.Exchange``).

Same public contract, other framing: the head goes out as HEADERS, the
body as DATA within the peer's window, the end as END_STREAM. What a
handler may hijack is its stream, and only on CONNECT (RFC 9113 8.5) or
Extended CONNECT (RFC 8441, ``request.protocol``): ``hijack(Response(2xx))``
returns a :class:`H2Hijacked` over the stream. There is no 101 in HTTP/2.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import TYPE_CHECKING

import h2.errors
import trio

from ._access_log import make_record
from ._closing import aclose_gracefully
from ._errors import ClientDisconnected, HijackError, UsageError
from ._exchange import Handler, ServerSide
from ._h2_wire import H2Stream, StreamIO, StreamState
from ._hijack import Hijacked
from ._message import BYTES_LIKE, Headers, HTTPError, Request, Response
from ._response_head import response_headers

if TYPE_CHECKING:
    from ._connection import Connection
    from ._h2_wire import H2Wire

__all__ = ["H2Exchange", "H2Hijacked"]

logger = logging.getLogger("hijack")

# Connection-specific headers have no place in HTTP/2 (RFC 9113 8.2.2).
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
    }
)
_BAD_VALUE = (b"\r", b"\n", b"\x00")
#: A request body the handler left unread is read and dropped, up to this
#: much, before the response is sent (the end of a streamed one): curl 7.88
#: stalls its upload when the answer comes first, and fails (exit 92) on the
#: RST_STREAM NO_ERROR RFC 9113 8.1 allows after it. Past this much, the
#: answer goes out and the stream is reset once it is complete.
DRAIN_LIMIT = 256 * 1024


class H2Hijacked(Hijacked):
    """A hijacked HTTP/2 stream: the :class:`~hijack.Hijacked` contract
    (``buffered`` replayed first, ``detach``, closed when the handler
    returns) over one stream, while the connection goes on serving others.
    ``aclose`` ends the stream (END_STREAM; then RST_STREAM NO_ERROR if the
    peer is still sending); ``aclose_forcefully`` resets it (CANCEL). The
    connection stays open while any hijacked stream is."""

    __slots__ = ()

    @property
    def stream_id(self) -> int:
        assert isinstance(self.stream, StreamIO)
        return self.stream.h2_stream.id

    def __repr__(self) -> str:
        return (
            f"<H2Hijacked connection={self.connection.id} stream={self.stream_id} "
            f"buffered={len(self.buffered)}B closed={self.closed}>"
        )

    async def aclose(self) -> None:
        # Closing the stream, not the connection: the loop forgets it.
        await super(Hijacked, self).aclose()

    def close_socket_now(self) -> bool:
        return False  # one stream of many: it must say goodbye in frames

    async def _release(self) -> None:
        if not self._detached and not self.closed:
            await aclose_gracefully(self)


class H2Exchange:
    """One request on one stream (see the module doc)."""

    __slots__ = (
        "_body_bytes",
        "_body_deadline",
        "_connection",
        "_expects_continue",
        "_headers",
        "_live",
        "_method",
        "_response_started",
        "_sent_body",
        "_server",
        "_started",
        "_status",
        "_stream",
        "_target",
        "_wire",
        "hijacked",
        "protocol",
    )

    def __init__(
        self,
        server: ServerSide,
        wire: H2Wire,
        connection: Connection,
        stream: H2Stream,
        head: tuple[str, str, str | None, list[tuple[bytes, bytes]]],
    ) -> None:
        self._server = server
        self._wire = wire
        self._connection = connection
        self._stream = stream
        self._method, self._target, self.protocol, headers = head
        self._headers = Headers(headers)
        self._expects_continue = "100-continue" in self._headers.tokens("expect")
        self._live = True
        self._response_started = False
        self._status: int | None = None
        self._sent_body = 0
        self._body_bytes = 0
        body_timeout = server.limits.body_timeout
        self._body_deadline = trio.current_time() + (
            math.inf if body_timeout is None else body_timeout
        )
        self._started = (trio.current_time(), time.time())
        self.hijacked: H2Hijacked | None = None

    # -- run by the loop -------------------------------------------------------

    async def run(self, handler: Handler) -> None:
        """Run ``handler`` and send what it answered; the access record when
        the exchange is over (at hijack, for a hijacked one)."""
        try:
            await self._run(handler)
        finally:
            if self.hijacked is None and self._server.reporting:
                self.report()

    async def _run(self, handler: Handler) -> None:
        request = Request(
            self, self._connection, self._method, self._target, "2", self._headers
        )
        response: Response | None = None
        try:
            response = await handler(request)
            if self.hijacked is not None and response is not None:
                logger.error(
                    "handler returned %r after hijacking %r", response, request
                )
        except ClientDisconnected:
            return
        except HTTPError as exc:
            if self.hijacked is None:
                await self._answer_error(exc)
            else:
                logger.error("handler raised %r after hijacking %r", exc, request)
            return
        except Exception:
            logger.exception("handler failed on %r", request)
            if self.hijacked is None:
                await self._answer_error(HTTPError(500))
            return
        finally:
            self._live = False
            if self.hijacked is not None:
                await self.hijacked._release()
        if self.hijacked is not None:
            return
        try:
            if self._response_started:
                if response is not None:
                    logger.error("handler returned %r after start_response", response)
                await self._end_response()
            elif response is None:
                logger.error("handler returned None without responding to %r", request)
                await self._answer_error(HTTPError(500))
            else:
                try:
                    await self._send_response(response)
                except UsageError as exc:
                    logger.error(
                        "handler returned %r to %r: %s", response, request, exc
                    )
                    await self._answer_error(HTTPError(500))
        except ClientDisconnected:
            return

    async def _answer_error(self, error: HTTPError) -> None:
        """Answer ``error`` unless a response was started; else reset."""
        if self._response_started:
            self._wire.reset(self._stream, h2.errors.ErrorCodes.INTERNAL_ERROR)
            return
        with contextlib.suppress(ClientDisconnected):
            await self._send_response(error.response())

    async def _drain_unread_body(self) -> None:
        """Read and drop what the peer still sends of the request body (see
        DRAIN_LIMIT), within ``body_timeout``."""
        if self._expects_continue:
            return  # no 100 was sent: the client sends no body
        stream = self._stream
        drained = 0
        while not stream.end_received and stream.error is None:
            if drained > DRAIN_LIMIT:
                return
            try:
                data = await stream.receive(None, self._body_deadline)
            except (trio.TooSlowError, ClientDisconnected):
                return
            if not data:
                return
            drained += len(data)

    async def _send_response(self, response: Response) -> None:
        # A request body still coming in is read first (see DRAIN_LIMIT):
        # curl 7.88 stalls its upload when the answer comes first.
        if self._method != "CONNECT":
            await self._drain_unread_body()
        body = response.body
        head_only = self._method == "HEAD"
        if isinstance(body, BYTES_LIKE):
            has_body = bool(body) and not head_only
            # The head waits for the body's first frame: one write for both.
            await self._send_head(
                response, add_length=True, end=not has_body, flush=not has_body
            )
            if has_body:
                await self._wire.send(self._stream, bytes(body), end=True)
                self._sent_body = len(body)
            return
        await self._send_head(response, add_length=False, end=False)
        try:
            async for chunk in body:
                if chunk and not head_only:
                    await self._wire.send(self._stream, bytes(chunk), end=False)
                    self._sent_body += len(chunk)
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        await self._end_response()

    async def _end_response(self) -> None:
        """END_STREAM, once the request body is in (or drained)."""
        if self._method != "CONNECT":
            await self._drain_unread_body()
        await self._wire.send(self._stream, b"", end=True)

    def _head(self, response: Response, add_length: bool) -> list[tuple[bytes, bytes]]:
        headers = [(b":status", str(response.status).encode("ascii"))]
        for name, value in response_headers(
            response, add_length=add_length, close=False
        ):
            name = name.lower()
            if name in _HOP_BY_HOP:
                continue
            if not name or name.startswith(b":") or any(c in value for c in _BAD_VALUE):
                raise UsageError(f"cannot send header {name!r}: {value!r}")
            headers.append((name, value))
        return headers

    async def _send_head(
        self, response: Response, *, add_length: bool, end: bool, flush: bool = True
    ) -> None:
        self._check_not_hijacked("send a response")
        if self._response_started:
            raise UsageError("a response was already started for this request")
        if response.status < 200:
            raise UsageError("use hijack() to send a 1xx response")
        if self._method == "CONNECT" and response.status < 300:
            raise UsageError(
                "a 2xx answer to CONNECT opens a tunnel: use request.hijack(response)"
            )
        headers = self._head(response, add_length)
        self._response_started = True
        self._status = response.status
        await self._send_headers(headers, end, flush=flush)

    async def _send_headers(
        self, headers: list[tuple[bytes, bytes]], end: bool, *, flush: bool = True
    ) -> None:
        stream = self._stream
        if stream.error is not None:
            raise ClientDisconnected(stream.error)
        if end:
            stream.end_sent = True
        self._wire._send_frame(
            lambda: self._wire.h2.send_headers(stream.id, headers, end_stream=end),
            stream,
        )
        if flush:
            await self._wire.flush()

    # -- called through the Request: the public API's boundary ---------------

    def _check_live(self, what: str) -> None:
        if not self._live:
            raise UsageError(f"cannot {what}: the handler already returned")

    def _check_not_hijacked(self, what: str) -> None:
        if self.hijacked is not None:
            raise HijackError(f"cannot {what}: the stream was hijacked")

    async def start_response(self, response: Response) -> None:
        self._check_live("send a response")
        await self._send_head(response, add_length=False, end=False)

    async def send_data(self, data: bytes) -> None:
        self._check_live("send data")
        self._check_not_hijacked("send data")
        if not self._response_started:
            raise UsageError("call start_response() before send_data()")
        if data:
            await self._wire.send(self._stream, bytes(data), end=False)
            self._sent_body += len(data)

    async def read_body_chunk(self) -> bytes:
        self._check_live("read the request body")
        self._check_not_hijacked("read the request body")
        if self._expects_continue:
            # The client waits for a 100 before it sends the body; not if
            # the body announced is too large (as on HTTP/1.1).
            length = self._headers.get("content-length", "")
            limit = self._server.limits.max_body_size
            if length.isdigit() and int(length) > limit:
                raise HTTPError(413, "request body too large")
            self._expects_continue = False
            if not self._response_started and not self._stream.end_received:
                await self._send_headers([(b":status", b"100")], end=False)
        try:
            data = await self._stream.receive(None, self._body_deadline)
        except trio.TooSlowError:
            raise HTTPError(408, "request body too slow") from None
        self._body_bytes += len(data)
        if self._body_bytes > self._server.limits.max_body_size:
            raise HTTPError(413, "request body too large")
        return data

    async def hijack(self, response: Response | None) -> Hijacked:
        if not self._live:
            raise HijackError("cannot hijack: the handler already returned")
        if self.hijacked is not None:
            raise HijackError("the stream was already hijacked")
        if self._response_started:
            raise HijackError("a response was already started; hijack() bare")
        if response is not None and response.status == 101:
            raise HijackError(
                "HTTP/2 has no 101 Switching Protocols: a WebSocket over HTTP/2 "
                "(RFC 8441) arrives as CONNECT with request.protocol == 'websocket'; "
                "answer it with request.hijack(Response(200))"
            )
        if self._method != "CONNECT":
            raise HijackError(
                "on HTTP/2 only a CONNECT or Extended CONNECT (RFC 8441) stream can "
                "be hijacked; answer this request normally"
            )
        if response is None or not 200 <= response.status < 300:
            raise HijackError(
                "on HTTP/2 hijack() sends the 2xx that opens the stream: "
                "pass it, e.g. request.hijack(Response(200))"
            )
        if not isinstance(response.body, bytes) or response.body:
            raise HijackError("a hijack response carries no body")
        try:
            headers = self._head(response, add_length=False)
        except UsageError as exc:
            raise HijackError(str(exc)) from None
        headers = [(k, v) for k, v in headers if k != b"content-length"]
        self._response_started = True
        self._status = response.status
        await self._send_headers(headers, end=False)
        stream = self._stream
        stream.state = StreamState.HIJACKED
        stream.scope = None  # a reset now reaches the owner as an error
        buffered = stream.take_all()
        hijacked = H2Hijacked(StreamIO(stream), buffered, self._connection)
        self.hijacked = hijacked
        # The buffered bytes left the stream's buffer: their window comes
        # back now (replaying them reads no frame that would give it back).
        self._wire._give_back_now(stream)
        self._wire.widen(stream, self._server.limits.h2_tunnel_window)
        with contextlib.suppress(ClientDisconnected):
            await self._wire.flush()
        if self._server.reporting:
            self.report()
        return hijacked

    def report(self) -> None:
        head = (self._method, self._target, "2", self._headers)
        self._server.report(
            make_record(
                self._connection, head, self._status, self._sent_body, self._started
            )
        )
