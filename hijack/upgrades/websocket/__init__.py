"""WebSocket (RFC 6455, RFC 7692) on a hijacked connection, on the Sans-I/O
protocol of `websockets`.

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

Modules, one concern each: ``_handshake`` (the opening handshake and
extension negotiation), ``_websocket`` (the message API and the reading
model), ``_keepalive`` (pings and the dead-peer rule), ``_protocol`` (the
`websockets` protocol objects, one RFC rule put back), ``_handlers`` (app
runner and echo server), ``_errors``.
"""

from ... import Handler
from .._echo_page import ECHO_PAGE
from ._errors import ConnectionClosed, WebSocketHandshakeError
from ._handlers import App, make_echo_handler, websocket_handler
from ._handshake import (
    Compression,
    accept_websocket,
    check_websocket_request,
    is_websocket_request,
)
from ._protocol import ClientProtocol, ServerProtocol
from ._websocket import PING_INTERVAL, PING_TIMEOUT, WebSocket

__all__ = [
    "ECHO_PAGE",
    "PING_INTERVAL",
    "PING_TIMEOUT",
    "App",
    "ClientProtocol",
    "Compression",
    "ConnectionClosed",
    "Handler",
    "ServerProtocol",
    "WebSocket",
    "WebSocketHandshakeError",
    "accept_websocket",
    "check_websocket_request",
    "is_websocket_request",
    "make_echo_handler",
    "websocket_handler",
]
