"""The client side of a WebSocket: the opening handshake, then the same
:class:`~hijack.upgrades.websocket.WebSocket` as the server side, over
``websockets``' Sans-I/O client protocol (hijack's
:class:`~hijack.upgrades.websocket.ClientProtocol`: it masks frames, checks
``Sec-WebSocket-Accept`` and lets the server close TCP first).

``hijack forward --mode websocket`` uses it to reach a
:class:`~hijack.upgrades.wsbridge.WebSocketBridge`.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Iterable

import trio
from websockets.exceptions import InvalidStatus, InvalidURI
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .. import ReplayStream
from ..upgrades.websocket import ClientProtocol, WebSocket

__all__ = ["WebSocketRefused", "connect_websocket"]

# The server's answer head must fit in this (it is a few hundred bytes).
MAX_HEAD = 64 * 1024


class WebSocketRefused(Exception):
    """The server did not accept the WebSocket. ``status`` is the HTTP status
    it answered (0 when it did not answer with a valid handshake), ``reason``
    says why, ``body`` is the start of its answer's body."""

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        super().__init__(f"WebSocket refused: {status} {reason}" if status else reason)


async def connect_websocket(
    url: str,
    *,
    subprotocols: Iterable[str] = (),
    extra_headers: Iterable[tuple[str, str]] = (),
    auth: tuple[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = 1024 * 1024,
    close_timeout: float = 5.0,
    ping_interval: float | None = None,
) -> WebSocket:
    """Open a WebSocket to ``url`` (``ws://`` or ``wss://``) and return it.

    ``subprotocols``: offered in this order; the server's choice is
    ``ws.subprotocol``. ``auth``: sent as ``Authorization: Basic`` (a bridge
    behind a proxy that wants it). ``ssl_context`` (``wss://``): default
    ``ssl.create_default_context()``, which honours ``SSL_CERT_FILE``. No
    compression is offered: tunnelled bytes are mostly compressed or
    encrypted already. ``ping_interval``: keepalive pings inside
    ``async with ws`` (None: none).

    Raises ``ValueError`` for a URL that is not ``ws://`` or ``wss://``,
    ``OSError`` if the server cannot be reached (``ssl.SSLError`` if its
    certificate is not trusted), :class:`WebSocketRefused` if it answers
    anything but a valid ``101`` or the connection breaks first. No timeout
    of its own: wrap it in ``trio.fail_after``. The caller owns the
    WebSocket (``async with``); on error or cancel the connection is closed.
    """
    try:
        uri = parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(f"not a ws:// or wss:// URL: {url!r}") from exc
    protocol = ClientProtocol(
        uri,
        subprotocols=[Subprotocol(s) for s in subprotocols] or None,
        max_size=max_message_size,
    )
    request = protocol.connect()
    for name, value in extra_headers:
        request.headers[name] = value
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        request.headers["Authorization"] = f"Basic {token}"
    protocol.send_request(request)

    stream: trio.abc.Stream = await trio.open_tcp_stream(uri.host, uri.port)
    try:
        if uri.secure:
            context = ssl_context or ssl.create_default_context()
            stream = trio.SSLStream(stream, context, server_hostname=uri.host)
        try:
            for data in protocol.data_to_send():
                await stream.send_all(data)
            rest = await _read_answer(stream, protocol)
        except trio.BrokenResourceError as exc:
            # trio wraps what broke: a certificate error says more as itself.
            if isinstance(exc.__cause__, ssl.SSLError):
                raise exc.__cause__ from None
            why = exc.__cause__ or exc
            raise WebSocketRefused(
                0, f"connection lost in the handshake: {why}"
            ) from exc
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return WebSocket(
        ReplayStream(stream, rest) if rest else stream,
        protocol=protocol,
        subprotocol=protocol.subprotocol,
        max_message_size=max_message_size,
        close_timeout=close_timeout,
        ping_interval=ping_interval,
        path=uri.path,
        query=uri.query or "",
    )


async def _read_answer(stream: trio.abc.Stream, protocol: ClientProtocol) -> bytes:
    """Feed the protocol the answer's head; return the bytes behind it.

    Only the head goes in: frames that came in the same packet as a 101 stay
    out of the protocol's event list, for the WebSocket to read first."""
    buffer = b""
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        if len(buffer) > MAX_HEAD:
            raise WebSocketRefused(0, "the server's answer head is too long")
        data = await stream.receive_some()
        if not data:
            raise WebSocketRefused(0, "the server closed the connection mid-answer")
        buffer += data
    head, rest = buffer[: end + 4], buffer[end + 4 :]
    protocol.receive_data(head)
    if protocol.state is State.OPEN:
        protocol.events_received()  # the Response, nothing else yet
        return rest
    # Refused: the body (if any) follows the head.
    protocol.receive_data(rest)
    while not protocol.events_received() and protocol.handshake_exc is None:
        data = await stream.receive_some()
        if not data:
            protocol.receive_eof()
            break
        protocol.receive_data(data)
    raise _refusal(protocol)


def _refusal(protocol: ClientProtocol) -> WebSocketRefused:
    exc = protocol.handshake_exc
    if isinstance(exc, InvalidStatus):
        response: Response = exc.response
        body = bytes(response.body or b"")[:1024]
        return WebSocketRefused(response.status_code, response.reason_phrase, body)
    return WebSocketRefused(0, f"bad answer from the server: {exc}")
