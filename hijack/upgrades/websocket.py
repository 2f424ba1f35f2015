"""WebSocket (RFC 6455) on a hijacked connection, with wsproto.

``accept_websocket(request)`` checks the opening handshake, answers ``101``
through ``request.hijack()`` and returns a :class:`WebSocket`: a
message-based API (``send``, ``receive``, ``async for``, ``ping``,
``close``). ``websocket_handler(app)`` turns ``async def app(ws)`` into a
server handler.

Ownership: the WebSocket owns the hijacked stream. It closes it when the
closing handshake is over (or failed, or timed out): in ``close()``, at the
end of ``async with ws``, or as soon as the connection is lost. A handler
that returns without closing lets the server close the stream abruptly
(no closing handshake).

Reading model: there is no background reader. Whichever task waits on the
socket (``receive``, ``ping`` or ``close``) reads it for everyone, one at a
time; pings are answered as frames are read. So pings, pongs and close
frames are handled while some task reads. ``async with ws`` adds one
background task, in its own nursery, that watches the server's graceful
shutdown (``connection.shutdown_requested``) and then closes with 1001.

Cancellation: cancelling ``receive`` loses nothing. Cancelling ``send`` (or
``ping``, ``close``) in the middle of a write may leave half a frame on the
wire, so the connection is then aborted (close code 1006).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import logging
import os
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable
from types import TracebackType
from typing import Any

import h11
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection as WSProtoConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from .. import Connection, Handler, Headers, HTTPError, Request, Response
from ._echo_page import ECHO_PAGE

__all__ = [
    "ECHO_PAGE",
    "ConnectionClosed",
    "Handler",
    "WebSocket",
    "WebSocketHandshakeError",
    "accept_websocket",
    "is_websocket_request",
    "make_echo_handler",
    "websocket_handler",
]

logger = logging.getLogger("hijack.websocket")

App = Callable[["WebSocket"], Awaitable[None]]

MiB = 1024 * 1024
RECEIVE_SIZE = 65536
# How many complete messages ping() may queue for receive() while it reads
# the socket waiting for its pong and no task is receiving.
MAX_QUEUE = 32
ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, 1.3

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
NO_STATUS = 1005
ABNORMAL_CLOSURE = 1006
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
# Codes an endpoint may put in a close frame (RFC 6455 7.4, IANA registry).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
# Closes that end ``async for message in ws`` quietly.
_QUIET = frozenset({NORMAL_CLOSURE, GOING_AWAY, NO_STATUS})


class ConnectionClosed(Exception):
    """The WebSocket is closed or closing: no more messages either way.

    ``code`` and ``reason`` come from the close frame that started the
    closing handshake (the peer's or ours); 1006 when the connection was
    lost without one."""

    def __init__(self, code: int, reason: str = "") -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"WebSocket closed: {code}" + (f" {reason}" if reason else ""))


class WebSocketHandshakeError(HTTPError):
    """A bad opening handshake. Raised by :func:`accept_websocket` before
    anything was sent, so the handler can still answer it: ``return
    exc.response()`` (which carries ``headers``, e.g. ``Sec-WebSocket-Version``
    on a 426). Left uncaught, the server answers the same, headers included."""

    def __init__(
        self, status: int, detail: str, headers: Iterable[tuple[str, str]] = ()
    ) -> None:
        super().__init__(status, detail, list(headers))


# -- the opening handshake -------------------------------------------------


def is_websocket_request(request: Request) -> bool:
    """True if the client asks for a WebSocket (``Upgrade: websocket``).

    Route on this, then let :func:`accept_websocket` check the rest."""
    return "websocket" in request.headers.tokens("upgrade")


def _check_handshake(
    request: Request, allowed_origins: Collection[str | None] | None
) -> str:
    """Validate the upgrade request (RFC 6455 4.2.1); return the key."""
    headers = request.headers

    def bad(detail: str) -> WebSocketHandshakeError:
        return WebSocketHandshakeError(400, detail)

    if request.method != "GET":
        raise bad("a WebSocket handshake uses GET")
    if request.http_version != "1.1":
        raise bad("a WebSocket handshake needs HTTP/1.1")
    if "content-length" in headers or "transfer-encoding" in headers:
        raise bad("a WebSocket handshake has no body")
    if "websocket" not in headers.tokens("upgrade"):
        raise bad("missing 'Upgrade: websocket'")
    if "upgrade" not in headers.tokens("connection"):
        raise bad("missing 'Connection: Upgrade'")
    versions = headers.get_all("sec-websocket-version")
    if versions != ["13"]:
        # 4.2.2: tell the client which version we speak.
        status = 426 if versions else 400
        raise WebSocketHandshakeError(
            status, "WebSocket version 13 required", [("Sec-WebSocket-Version", "13")]
        )
    keys = headers.get_all("sec-websocket-key")
    if len(keys) != 1:
        raise bad("need exactly one Sec-WebSocket-Key")
    # wsproto accepts any key; RFC 6455 4.1 says: base64 of 16 random bytes.
    try:
        raw_key = base64.b64decode(keys[0].strip(), validate=True)
    except (binascii.Error, ValueError):
        raw_key = b""
    if len(raw_key) != 16:
        raise bad("Sec-WebSocket-Key must be base64 of 16 bytes")
    if allowed_origins is not None:
        origins = headers.get_all("origin")
        origin = origins[0].strip().lower() if len(origins) == 1 else None
        allowed = {o.lower() if o is not None else None for o in allowed_origins}
        if len(origins) > 1 or origin not in allowed:
            raise WebSocketHandshakeError(403, f"origin {origin!r} not allowed")
    return keys[0].strip()


def _accept_token(key: str) -> str:
    digest = hashlib.sha1(key.encode("ascii") + ACCEPT_GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def _choose_subprotocol(request: Request, supported: Iterable[str]) -> str | None:
    """The client's most preferred subprotocol that we support, if any."""
    ours = set(supported)
    for offered in request.headers.get_all("sec-websocket-protocol"):
        for name in offered.split(","):
            if name.strip() in ours:
                return name.strip()
    return None


async def accept_websocket(
    request: Request,
    *,
    subprotocols: Iterable[str] = (),
    max_message_size: int = MiB,
    allowed_origins: Collection[str | None] | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
    close_timeout: float = 5.0,
) -> WebSocket:
    """Check the handshake, answer ``101 Switching Protocols``, return the
    :class:`WebSocket`.

    ``subprotocols``: the ones we speak; the client's first one among them is
    chosen (``ws.subprotocol``, None if no match). ``max_message_size``: a
    bigger incoming message closes with 1009. ``allowed_origins``: if given,
    the browser's ``Origin`` must be one of them (put ``None`` in to admit
    clients that send none), else 403. ``close_timeout``: how long a closing
    handshake may take before the connection is cut.

    permessage-deflate is never negotiated: wsproto inflates a frame with no
    cap on the result (a 65 KB frame can become 64 MiB in memory before any
    limit of ours could see it), so compression would defeat
    ``max_message_size``.

    Raises :class:`WebSocketHandshakeError` (an ``HTTPError``: 400, 403, or
    426 with ``Sec-WebSocket-Version: 13``) before anything is sent. After
    success the caller owns the WebSocket and must close it (``async with``).
    """
    if max_message_size < 1:
        raise ValueError("max_message_size must be >= 1")
    key = _check_handshake(request, allowed_origins)
    subprotocol = _choose_subprotocol(request, subprotocols)
    # Let wsproto follow the handshake too, so its state machine is where a
    # server's is after accepting. Hand it the Upgrade header we checked.
    handshake = WSConnection(ConnectionType.SERVER)
    headers = [(k, v) for k, v in request.headers.raw if k != b"upgrade"]
    headers.append((b"upgrade", b"websocket"))
    try:
        handshake.initiate_upgrade_connection(headers, request.target)
        list(handshake.events())
        # The bytes wsproto would send are dropped: the server writes the 101
        # itself (hijack records it, adds Date and Server).
        handshake.send(AcceptConnection(subprotocol=subprotocol))
    except (RemoteProtocolError, h11.ProtocolError, UnicodeError) as exc:
        raise WebSocketHandshakeError(400, f"bad WebSocket handshake: {exc}") from exc
    protocol = handshake.connection
    assert protocol is not None  # AcceptConnection made it
    response_headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", _accept_token(key)),
    ]
    if subprotocol is not None:
        response_headers.append(("Sec-WebSocket-Protocol", subprotocol))
    response_headers.extend(extra_headers)
    hijacked = await request.hijack(Response(101, response_headers))
    # Frames the client sent right behind its handshake came in with it.
    early = hijacked.take_buffered()
    if early:
        protocol.receive_data(early)
    return WebSocket(
        hijacked,
        hijacked.connection,
        protocol=protocol,
        subprotocol=subprotocol,
        max_message_size=max_message_size,
        close_timeout=close_timeout,
        path=request.path,
        query=request.query,
        headers=request.headers,
    )


# -- the WebSocket -----------------------------------------------------------


class WebSocket:
    """One server-side WebSocket connection.

    ``await ws.send(text_or_bytes)``, ``await ws.receive()`` (``str`` for a
    text message, ``bytes`` for binary), ``async for message in ws`` (ends
    quietly on a normal close: 1000, 1001, 1005), ``await ws.ping()``,
    ``await ws.close()``. One task may send while another receives. Every
    call on a closed WebSocket raises :class:`ConnectionClosed`.

    Attributes: ``connection`` (the :class:`hijack.Connection`),
    ``subprotocol``, and ``path``, ``query``, ``headers`` of the handshake
    request. Usually made by :func:`accept_websocket`; build one by hand over
    any stream whose handshake is done (tests do, over memory streams).
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: Connection,
        *,
        protocol: WSProtoConnection | None = None,
        subprotocol: str | None = None,
        max_message_size: int = MiB,
        close_timeout: float = 5.0,
        path: str = "/",
        query: str = "",
        headers: Headers | None = None,
    ) -> None:
        self.connection = connection
        self.subprotocol = subprotocol
        self.path = path
        self.query = query
        self.headers = headers if headers is not None else Headers([])
        self._stream = stream
        self._protocol = protocol or WSProtoConnection(ConnectionType.SERVER)
        self._max_message_size = max_message_size
        self._close_timeout = close_timeout
        self._send_lock = trio.Lock()
        self._messages: deque[str | bytes] = deque()
        self._fragments: list[str | bytes] = []
        self._fragments_size = 0
        self._pings: dict[bytes, trio.Event] = {}
        self._pending_pong: Pong | None = None
        # Set once: the close that ends this WebSocket (ours, theirs, 1006).
        self._close: tuple[int, str] | None = None
        # After a protocol failure wsproto's parser is dead: drain and drop.
        self._failed = False
        self._eof_sent = False
        self._transport_closed = False
        self._reading = False
        self._progress = trio.Event()
        # Frames that came in with the handshake are already in wsproto.
        self._handle_events()
        self._watcher: (
            tuple[contextlib.AbstractAsyncContextManager[trio.Nursery], trio.Nursery]
            | None
        ) = None

    def __repr__(self) -> str:
        state = "open" if self._close is None else f"closed {self._close[0]}"
        return f"<WebSocket connection={self.connection.id} {state}>"

    @property
    def closed(self) -> bool:
        """True once closing started (either side) or the connection broke."""
        return self._close is not None

    @property
    def close_code(self) -> int | None:
        return None if self._close is None else self._close[0]

    @property
    def close_reason(self) -> str | None:
        return None if self._close is None else self._close[1]

    # -- receiving -------------------------------------------------------------

    async def receive(self) -> str | bytes:
        """The next message. Raises :class:`ConnectionClosed` once the
        connection is closing and every message received before is taken.
        Cancelling it loses nothing."""
        while True:
            if self._messages:
                message = self._messages.popleft()
                self._notify()  # a ping() may wait for queue room
                return message
            if self._close is None and self.connection.shutdown_requested.is_set():
                await self.close(GOING_AWAY, "server shutting down")
            if self._close is not None:
                raise ConnectionClosed(*self._close)
            await self._read_step(receiving=True)

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.receive()
        except ConnectionClosed as exc:
            if exc.code in _QUIET:
                raise StopAsyncIteration from None
            raise

    def _notify(self) -> None:
        """Wake the tasks waiting for a reader's progress."""
        if self._progress.statistics().tasks_waiting:
            self._progress.set()
            self._progress = trio.Event()

    async def _read_step(self, *, receiving: bool) -> None:
        """Read the socket once, or wait while another task does."""
        queue_full = len(self._messages) >= MAX_QUEUE
        if self._reading or (not receiving and self._close is None and queue_full):
            await self._progress.wait()
            return
        self._reading = True
        try:
            await self._pump()
        finally:
            self._reading = False
            self._notify()

    async def _pump(self) -> None:
        # Replies owed from events handled earlier (frames that came with the
        # handshake, or a reply a cancelled reader did not finish) go first.
        await self._reply()
        if self._transport_closed:
            return
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            await self._close_transport("connection lost")
            return
        if self._failed:
            return  # draining after a protocol failure
        self._protocol.receive_data(bytes(data))
        self._handle_events()
        await self._reply()

    async def _reply(self) -> None:
        """Answer what the peer's frames call for (pong, close, EOF), unless
        a sender holds the lock: it answers when its write is done. Waiting
        for it here could deadlock a reader behind a sender that waits for
        the peer to read while the peer waits for us to read."""
        if self._send_lock.locked() or not self._owes_reply():
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionClosed):
                await self._flush_locked()

    def _handle_events(self) -> None:
        for event in self._protocol.events():
            if isinstance(event, TextMessage | BytesMessage):
                if self._close is None:
                    self._on_data(event.data, event.message_finished)
                if self._failed:
                    return
            elif isinstance(event, Ping):
                if self._close is None:
                    # Only the latest ping needs an answer (RFC 6455 5.5.3).
                    self._pending_pong = event.response()
            elif isinstance(event, Pong):
                self._on_pong(bytes(event.payload))
            elif isinstance(event, CloseConnection):
                if self._protocol.state in (
                    ConnectionState.OPEN,
                    ConnectionState.LOCAL_CLOSING,
                ):
                    # wsproto reports a frame it could not parse (1002, or
                    # 1007 for bad UTF-8) as a close without a state change.
                    self._fail(event.code, event.reason or "protocol error")
                elif self._close is None:
                    self._close = (event.code, event.reason or "")
                return

    def _on_data(self, data: str | bytes | bytearray, finished: bool) -> None:
        # Count as fragments arrive: never hold more than the limit.
        if isinstance(data, str):
            size = len(data) if data.isascii() else len(data.encode("utf-8"))
        else:
            size = len(data)
        self._fragments_size += size
        if self._fragments_size > self._max_message_size:
            self._fragments.clear()
            self._fail(MESSAGE_TOO_BIG, f"message over {self._max_message_size} bytes")
            return
        self._fragments.append(bytes(data) if isinstance(data, bytearray) else data)
        if finished:
            first = self._fragments[0]
            if isinstance(first, str):
                message: str | bytes = "".join(self._fragments)  # type: ignore[arg-type]
            else:
                message = b"".join(self._fragments)  # type: ignore[arg-type]
            self._messages.append(message)
            self._fragments = []
            self._fragments_size = 0

    def _on_pong(self, payload: bytes) -> None:
        if payload not in self._pings:
            return  # unsolicited pongs are allowed
        # A pong answers its ping and every earlier one.
        for key in list(self._pings):
            self._pings.pop(key).set()
            if key == payload:
                break

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (7.1.7): a close frame with ``code``, then
        drop whatever else the peer sends."""
        if self._close is None:
            self._close = (code, reason[:120])
        self._failed = True

    # -- sending ---------------------------------------------------------------

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send one message: ``str`` as text, bytes-like as binary.

        Waits while the peer does not read (backpressure). Cancelling it
        mid-write aborts the connection."""
        if isinstance(message, str):
            event: TextMessage | BytesMessage = TextMessage(data=message)
        else:
            event = BytesMessage(data=bytes(message))
        if self._close is None and self.connection.shutdown_requested.is_set():
            await self.close(GOING_AWAY, "server shutting down")
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            # Uncontended: take it without the lock's own checkpoint; the
            # write below is one. A scheduler pass less per message.
            lock.acquire_nowait()
        try:
            if self._close is not None:
                raise ConnectionClosed(*self._close)
            await self._write(self._protocol.send(event))
            with contextlib.suppress(ConnectionClosed):
                await self._flush_locked()  # replies a reader left to us
        finally:
            lock.release()

    async def ping(self, payload: bytes | None = None, *, wait: bool = True) -> None:
        """Send a ping (``payload``: up to 125 bytes, random by default) and,
        with ``wait``, return when its pong arrives. While waiting it reads
        the socket if no other task does (queueing up to ``MAX_QUEUE``
        messages for ``receive``). Raises :class:`ConnectionClosed` if the
        connection closes first. Put it under ``trio.move_on_after`` for a
        timeout."""
        if payload is None:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        payload = bytes(payload)
        if len(payload) > 125:
            raise ValueError("a ping payload is at most 125 bytes")
        if wait and payload in self._pings:
            raise ValueError(f"a ping with payload {payload!r} is already waiting")
        answered = trio.Event()
        try:
            async with self._send_lock:
                if self._close is not None:
                    raise ConnectionClosed(*self._close)
                if wait:
                    # Before writing: another task may read the pong at once.
                    self._pings[payload] = answered
                await self._write(self._protocol.send(Ping(payload=payload)))
                with contextlib.suppress(ConnectionClosed):
                    await self._flush_locked()  # replies a reader left to us
            while wait and not answered.is_set():
                if self._close is not None:
                    raise ConnectionClosed(*self._close)
                await self._read_step(receiving=False)
        finally:
            if self._pings.get(payload) is answered:
                del self._pings[payload]

    def _owes_reply(self) -> bool:
        state = self._protocol.state
        return not self._transport_closed and (
            self._pending_pong is not None
            or (
                self._close is not None
                and state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)
            )
            or (self._failed and not self._eof_sent)
            or state is ConnectionState.CLOSED
        )

    async def _flush_locked(self) -> None:
        """With the send lock held: send what is owed, in order. A pong for
        the latest ping; our close frame (to start the closing handshake or
        to answer the peer's); after a failure, EOF: the peer sees our close
        frame then EOF while we drain what it still sends (closing with
        unread input would reset the connection and could destroy the close
        frame). When both close frames went by, close the stream: the server
        closes TCP first (RFC 6455 7.1.1)."""
        while not self._transport_closed:
            state = self._protocol.state
            if self._pending_pong is not None:
                pong, self._pending_pong = self._pending_pong, None
                if state is ConnectionState.OPEN:
                    await self._write(self._protocol.send(pong))
            elif self._close is not None and state in (
                ConnectionState.OPEN,
                ConnectionState.REMOTE_CLOSING,
            ):
                code, reason = self._close
                event = CloseConnection(code=code, reason=reason or None)
                await self._write(self._protocol.send(event))
            elif self._failed and not self._eof_sent:
                self._eof_sent = True
                if isinstance(self._stream, trio.abc.HalfCloseableStream):
                    # TLS cannot half-close: close() cuts after draining.
                    with contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError
                    ):
                        await self._stream.send_eof()
            elif state is ConnectionState.CLOSED:
                await self._close_transport()
            else:
                return

    async def _write(self, data: bytes) -> None:
        """Write under the send lock; a failed write loses the connection."""
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._close_transport("connection lost")
            assert self._close is not None
            raise ConnectionClosed(*self._close) from None
        except trio.Cancelled:
            # Part of the frame may be on the wire: the framing is lost.
            await self._close_transport("send cancelled")
            raise

    # -- closing ---------------------------------------------------------------

    async def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Close: send a close frame, wait up to ``close_timeout`` for the
        peer's, close the stream. Idempotent, never raises ConnectionClosed;
        if closing already started (either side) it just finishes. Cancelled,
        it closes the stream at once."""
        if code not in _SENDABLE and not 3000 <= code <= 4999:
            raise ValueError(f"close code {code} cannot be sent")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        if self._close is None:
            self._close = (code, reason)
            self._fragments.clear()
        try:
            with trio.move_on_after(self._close_timeout):
                async with self._send_lock:
                    try:
                        await self._flush_locked()
                    except ConnectionClosed:
                        return
                while not self._transport_closed:
                    await self._read_step(receiving=True)
        finally:
            await self._close_transport()

    async def _close_transport(self, lost_reason: str = "") -> None:
        if self._close is None:
            self._close = (ABNORMAL_CLOSURE, lost_reason or "connection closed")
        if self._transport_closed:
            return
        self._transport_closed = True
        await trio.aclose_forcefully(self._stream)
        self._notify()

    async def aclose(self) -> None:
        """``close()`` with code 1000."""
        await self.close()

    async def _watch_shutdown(self) -> None:
        await self.connection.shutdown_requested.wait()
        await self.close(GOING_AWAY, "server shutting down")

    async def __aenter__(self) -> WebSocket:
        """Inside the block a background task answers the server's graceful
        shutdown with close 1001. On exit: close 1000, 1011 if the block
        raised, abort if it was cancelled. A :class:`ConnectionClosed`
        escaping the block is swallowed: the peer is gone, nothing to do."""
        if self._watcher is not None:
            raise RuntimeError("this WebSocket is already entered")
        manager = trio.open_nursery()
        nursery = await manager.__aenter__()
        nursery.start_soon(self._watch_shutdown)
        self._watcher = (manager, nursery)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._watcher is not None
        manager, nursery = self._watcher
        try:
            if exc is None or isinstance(exc, ConnectionClosed):
                await self.close()
            elif isinstance(exc, Exception):
                await self.close(INTERNAL_ERROR, "internal error")
            else:  # cancelled, KeyboardInterrupt...
                await self._close_transport("aborted")
        finally:
            nursery.cancel_scope.cancel()
            await manager.__aexit__(None, None, None)
            self._watcher = None
        return isinstance(exc, ConnectionClosed)


# -- handlers ----------------------------------------------------------------


def websocket_handler(app: App, **accept_options: Any) -> Handler:
    """Make a server handler from ``async def app(ws: WebSocket) -> None``.

    A bad handshake gets its error response (426 with
    ``Sec-WebSocket-Version``, 400, 403). Otherwise the app runs inside
    ``async with ws``: the socket is closed afterwards with 1000, or 1011
    (and the error logged) if the app raised. ``accept_options`` go to
    :func:`accept_websocket`.
    """

    async def handler(request: Request) -> Response | None:
        try:
            ws = await accept_websocket(request, **accept_options)
        except WebSocketHandshakeError as exc:
            return exc.response()
        try:
            async with ws:
                await app(ws)
        except Exception:
            logger.exception("WebSocket app %r failed on %r", app, request)
        return None

    return handler


async def _echo(ws: WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


def make_echo_handler(**accept_options: Any) -> Handler:
    """An echo server: at ``/`` a page that talks to itself over a WebSocket
    (plain GET), and the echo WebSocket (GET with ``Upgrade: websocket``).
    Other paths: 404."""
    echo = websocket_handler(_echo, **accept_options)
    page = ECHO_PAGE.encode("utf-8")

    async def handler(request: Request) -> Response | None:
        if request.path != "/":
            raise HTTPError(404)
        if is_websocket_request(request):
            return await echo(request)
        if request.method not in ("GET", "HEAD"):
            return Response(405, {"allow": "GET, HEAD"})
        return Response(200, {"content-type": "text/html; charset=utf-8"}, page)

    return handler
