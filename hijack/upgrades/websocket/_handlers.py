"""Server handlers built on :func:`accept_websocket`: an app runner and the
echo server of ``hijack echo``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ... import Handler, HTTPError, Request, Response
from .._echo_page import ECHO_PAGE
from ._errors import WebSocketHandshakeError
from ._handshake import accept_websocket, is_websocket_request
from ._websocket import WebSocket

logger = logging.getLogger("hijack.websocket")

App = Callable[[WebSocket], Awaitable[None]]


def websocket_handler(
    app: App,
    *,
    on_close: Callable[[WebSocket], None] | None = None,
    **accept_options: Any,
) -> Handler:
    """Make a server handler from ``async def app(ws: WebSocket) -> None``.

    A bad handshake gets its error response (426 with
    ``Sec-WebSocket-Version``, 400, 403). Otherwise the app runs inside
    ``async with ws``: the socket is closed afterwards with 1000, or 1011
    (and the error logged) if the app raised. ``on_close(ws)`` is called
    after that (metrics read ``ws.messages_received`` / ``messages_sent``).
    ``accept_options`` go to :func:`accept_websocket`.
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
        finally:
            if on_close is not None:
                on_close(ws)
        return None

    # It serves WebSockets over HTTP/2 too: a Server(http2=True) may
    # advertise Extended CONNECT (RFC 8441) for it.
    handler.serves_extended_connect = True  # type: ignore[attr-defined]
    return handler


async def _echo(ws: WebSocket) -> None:
    async for message in ws:
        await ws.send(message)


def make_echo_handler(
    *, on_close: Callable[[WebSocket], None] | None = None, **accept_options: Any
) -> Handler:
    """An echo server: at ``/`` a page that talks to itself over a WebSocket
    (plain GET), and the echo WebSocket (GET with ``Upgrade: websocket``).
    Other paths: 404. ``accept_options`` go to :func:`accept_websocket`."""
    echo = websocket_handler(_echo, on_close=on_close, **accept_options)
    page = ECHO_PAGE.encode("utf-8")

    async def handler(request: Request) -> Response | None:
        if request.path != "/":
            raise HTTPError(404)
        if is_websocket_request(request):
            return await echo(request)
        if request.method not in ("GET", "HEAD"):
            return Response(405, {"allow": "GET, HEAD"})
        return Response(200, {"content-type": "text/html; charset=utf-8"}, page)

    handler.serves_extended_connect = True  # type: ignore[attr-defined]
    return handler
