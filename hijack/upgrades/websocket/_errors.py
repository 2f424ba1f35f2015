"""The two errors a WebSocket user sees: a refused handshake, a closed socket."""

from __future__ import annotations

from collections.abc import Iterable

from ... import HTTPError


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
