"""One request and its response: state born with the request head, dead
with the handler (hypercorn's ``HTTPStream`` beside its ``H11Protocol``).

The connection loop (``_http.py``) makes a fresh :class:`Exchange` for every
request head it accepts, runs the handler through it, and drops it. Every
per-request fact (response started, body read, must close) lives here, so no
request can ever see the state of the one before it.

The methods a :class:`~hijack.Request` calls are the error boundary of the
public API (see ``_errors.py``): what they raise is an ``HTTPError``, a
``ClientDisconnected`` or a ``UsageError``, never h11's or a private one.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

import h11

from ._access_log import AccessRecord, make_record
from ._config import Limits
from ._connection import Connection
from ._errors import ClientDisconnected, HijackError, UsageError
from ._hijack import Hijacked
from ._hub import Hub
from ._message import BYTES_LIKE, Headers, HTTPError, Request, Response
from ._request_head import protocol_error_status
from ._response_head import hijack_head, response_headers

__all__ = ["Exchange", "Handler", "Sniffer", "StreamHandler"]

logger = logging.getLogger("hijack")

Handler = Callable[[Request], Awaitable[Response | None]]
#: Takes a whole connection that is not HTTP (see ``Server(sniff=...)``).
StreamHandler = Callable[[Hijacked], Awaitable[None]]
#: Looks at a connection's first bytes: a StreamHandler to take it, or None
#: to serve it as HTTP.
Sniffer = Callable[[bytes], StreamHandler | None]

# After the handler returns with body bytes unread, read (and drop) this many
# to keep the connection alive; past it, close instead (Go does the same).
DRAIN_LIMIT = 256 * 1024


class ServerSide(Protocol):
    """What a connection needs from its server."""

    limits: Limits
    handler: Handler
    sniff: Sniffer | None

    @property
    def shutting_down(self) -> bool: ...

    @property
    def hub(self) -> Hub | None: ...

    @property
    def reporting(self) -> bool: ...

    def report(self, record: AccessRecord) -> None: ...


class Driver(Protocol):
    """What an exchange needs from the connection loop that made it (the
    HTTP/1.1 loop in ``_http.py``): the parser's states, the writer, the
    hand-over at hijack. Spelled out here so the exchange reads apart from
    the loop and the loop imports the exchange, not the other way round."""

    server: ServerSide
    connection: Connection
    broken: bool
    linger: bool
    head_started: tuple[float, float]

    @property
    def parser(self) -> h11.Connection: ...

    def encode(self, event: h11.Event) -> bytes: ...

    async def send(self, event: h11.Event) -> None: ...

    async def write(self, data: bytes, *, schedule: bool = True) -> None: ...

    def start_next_cycle(self) -> bool: ...

    async def next_event_before(
        self, deadline: float
    ) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED] | None: ...

    def hand_over(self) -> Hijacked: ...


class Exchange:
    """One request: its head, the response's progress, the body's progress,
    and whether the connection must close after it.

    The :class:`~hijack.Request` handed to the handler points here; nothing
    here points back at it (a reference cycle per request would leave every
    request to the cyclic garbage collector: measurable CPU on keep-alive)."""

    __slots__ = (
        "_body_bytes",
        "_body_deadline",
        "_body_done",
        "_connection",
        "_driver",
        "_headers",
        "_live",
        "_method",
        "_response_started",
        "_sent_body",
        "_status",
        "_target",
        "_version",
        "hijacked",
        "must_close",
    )

    def __init__(
        self,
        driver: Driver,
        connection: Connection,
        event: h11.Request,
        headers: list[tuple[bytes, bytes]],
        *,
        must_close: bool,
        body_deadline: float,
    ) -> None:
        self._driver = driver
        self._live = True
        self._response_started = False
        self._body_done = False
        self._body_bytes = 0
        self._body_deadline = body_deadline
        self._status: int | None = None
        self._sent_body = 0
        self.must_close = must_close
        self.hijacked: Hijacked | None = None
        self._connection = connection
        self._method = event.method.decode("ascii")
        self._target = event.target.decode("latin-1")
        self._version = event.http_version.decode("ascii")
        self._headers = Headers(headers)

    # -- run by the connection loop -----------------------------------------

    async def run(self, handler: Handler) -> None:
        """Run ``handler`` and send what it answered (or the error it
        raised). Raises ``ClientDisconnected`` if the client is gone."""
        request = Request(
            self,
            self._connection,
            self._method,
            self._target,
            self._version,
            self._headers,
        )
        try:
            response = await handler(request)
            if self.hijacked is not None and response is not None:
                logger.error(
                    "handler returned %r after hijacking %r; discarded",
                    response,
                    request,
                )
        except ClientDisconnected:
            raise  # the client is gone: not a handler failure
        except HTTPError as exc:
            if self.hijacked is not None:
                logger.error("handler raised %r after hijacking %r", exc, request)
                return
            self.must_close = self.must_close or not self._body_done
            await self._answer_error(exc)
            return
        except Exception:
            logger.exception("handler failed on %r", request)
            if self.hijacked is None:
                self.must_close = True
                await self._answer_error(HTTPError(500))
            return
        finally:
            self._live = False
            if self.hijacked is not None:
                await self.hijacked._release()
        if self.hijacked is not None:
            return
        if self._driver.broken:
            # The handler caught ClientDisconnected and went on: nobody to
            # answer to.
            raise ClientDisconnected("the client went away during the handler")
        if self._response_started:
            if response is not None:
                logger.error("handler returned %r after start_response", response)
            await self._driver.send(h11.EndOfMessage())
            return
        if response is None:
            logger.error("handler returned None without responding to %r", request)
            self.must_close = True
            await self._answer_error(HTTPError(500))
            return
        try:
            await self._send_response(response)
        except UsageError as exc:  # e.g. a 2xx to CONNECT without hijack()
            logger.error("handler returned %r to %r: %s", response, request, exc)
            self.must_close = True
            await self._answer_error(HTTPError(500))

    async def keep_alive(self) -> bool:
        """After the response: True if the connection can serve another
        request (the body is read to its end, nobody asked to close)."""
        driver = self._driver
        if self.must_close or driver.server.shutting_down:
            return False
        if driver.parser.their_state is h11.SEND_BODY:
            # Drain a small unread body to keep the connection alive.
            try:
                while self._body_bytes <= DRAIN_LIMIT:
                    if not await self._read_body_chunk():
                        break
            except HTTPError:
                return False
        return driver.start_next_cycle()

    async def _answer_error(self, error: HTTPError) -> None:
        """Answer ``error`` if no response was started; else the connection
        is cut (the client sees a truncated response)."""
        driver = self._driver
        if self._response_started or driver.parser.our_state is not h11.SEND_RESPONSE:
            self.must_close = True
            return
        driver.linger = driver.linger or not self._body_done
        await self._send_response(error.response())

    async def _send_response(self, response: Response) -> None:
        driver = self._driver
        head_only = self._method == "HEAD"
        body = response.body
        head = self._begin_response(response, add_length=True)
        if isinstance(body, BYTES_LIKE):
            # One write for head, body and end: a syscall, not three.
            parts = [head]
            if body and not head_only:
                parts.append(driver.encode(h11.Data(data=body)))
                self._sent_body = len(body)
            parts.append(driver.encode(h11.EndOfMessage()))
            await driver.write(b"".join(parts), schedule=False)
            return
        await driver.write(head)
        # Close the body's iterator ourselves, even when the client went away
        # mid-stream: its cleanup then runs in this task, now, not from GC.
        try:
            async for chunk in body:
                if chunk and not head_only:
                    await driver.send(h11.Data(data=chunk))
                    self._sent_body += len(chunk)
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        await driver.send(h11.EndOfMessage())

    def _begin_response(self, response: Response, add_length: bool) -> bytes:
        """The encoded head. ``add_length``: the body is ``response.body``
        and its length is known."""
        self._check_not_hijacked("send a response")
        if self._response_started:
            raise UsageError("a response was already started for this request")
        if response.status < 200:
            raise UsageError("use hijack() to send a 1xx response")
        if self._method == "CONNECT" and response.status < 300:
            # A 2xx to CONNECT switches protocols: only hijack() can send it.
            raise UsageError(
                "a 2xx answer to CONNECT opens a tunnel: use request.hijack(response)"
            )
        try:
            event = h11.Response(
                status_code=response.status,
                headers=response_headers(
                    response,
                    add_length=add_length,
                    close=self.must_close or self._driver.server.shutting_down,
                ),
                reason=response.reason.encode("latin-1"),
            )
        except h11.LocalProtocolError as exc:  # CR/LF/NUL in a header...
            raise UsageError(f"cannot send {response!r}: {exc}") from None
        head = self._driver.encode(event)
        self._response_started = True
        self._status = response.status
        return head

    # -- called through the Request: the public API's boundary -------------

    def _check_live(self, what: str) -> None:
        # A Request kept past its handler must not act on a later request of
        # the same connection.
        if not self._live:
            raise UsageError(f"cannot {what}: the handler already returned")

    def _check_not_hijacked(self, what: str) -> None:
        if self.hijacked is not None:
            raise HijackError(f"cannot {what}: the connection was hijacked")

    async def start_response(self, response: Response) -> None:
        """Send the head now; the caller streams the body (chunked)."""
        self._check_live("send a response")
        await self._driver.write(self._begin_response(response, add_length=False))

    async def send_data(self, data: bytes) -> None:
        self._check_live("send data")
        self._check_not_hijacked("send data")
        if not self._response_started:
            raise UsageError("call start_response() before send_data()")
        if data:
            await self._driver.send(h11.Data(data=data))
            self._sent_body += len(data)

    async def read_body_chunk(self) -> bytes:
        self._check_live("read the request body")
        return await self._read_body_chunk()

    async def _read_body_chunk(self) -> bytes:
        self._check_not_hijacked("read the request body")
        if self._body_done:
            return b""
        driver = self._driver
        if driver.parser.they_are_waiting_for_100_continue:
            await driver.send(h11.InformationalResponse(status_code=100, headers=[]))
        try:
            event = await driver.next_event_before(self._body_deadline)
        except h11.RemoteProtocolError as exc:
            self._end_body()
            raise HTTPError(
                protocol_error_status(exc), "malformed request body"
            ) from exc
        except ClientDisconnected:
            self._end_body()
            raise
        if event is None:
            self._end_body()
            raise HTTPError(408, "request body too slow")
        if isinstance(event, h11.Data):
            self._body_bytes += len(event.data)
            if self._body_bytes > driver.server.limits.max_body_size:
                self._end_body()
                raise HTTPError(413, "request body too large")
            return bytes(event.data)
        self._body_done = True
        return b""

    def _end_body(self) -> None:
        """The body cannot be read to its end: the connection must close."""
        self._body_done = True
        self.must_close = True

    async def hijack(self, response: Response | None) -> Hijacked:
        if not self._live:
            raise HijackError("cannot hijack: the handler already returned")
        if self.hijacked is not None:
            raise HijackError("the connection was already hijacked")
        if response is not None:
            if self._response_started:
                raise HijackError("a response was already started; hijack() bare")
            if response.status == 101:
                self._check_upgrade_requested()
            await self._driver.write(hijack_head(response))
            self._status = response.status
        self.hijacked = self._driver.hand_over()
        if self._driver.server.reporting:
            self.report()
        return self.hijacked

    def report(self) -> None:
        """The exchange is over (answered, or handed over): give its record
        to the access log and the server's ``on_request`` hooks."""
        driver = self._driver
        head = (self._method, self._target, self._version, self._headers)
        driver.server.report(
            make_record(
                self._connection,
                head,
                self._status,
                self._sent_body,
                driver.head_started,
            )
        )

    def _check_upgrade_requested(self) -> None:
        """RFC 9110 7.8 / 15.2.2: a server sends 101 only to a request that
        asked to upgrade, and ignores Upgrade in an HTTP/1.0 request."""
        if not self._headers.tokens("upgrade"):
            raise HijackError(
                "a 101 answers a request that asks to upgrade; this one has no "
                "Upgrade header (answer it normally, or hijack() bare)"
            )
        if self._version == "1.0":
            raise HijackError("an HTTP/1.0 request cannot be upgraded (RFC 9110 7.8)")
