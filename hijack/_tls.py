"""TLS on the server side: wrapping a connection, and recording its SNI.

On the server side ``SSLObject.server_hostname`` (and so trio's
``SSLStream.server_hostname``) is only what was passed to the constructor,
never the name the client asked for. The only place the client's SNI shows
is the context's ``sni_callback``, called during the handshake. The server
installs a recorder there that chains to the callback the user had
installed (its answer, a switched context or an alert, is kept), and tells
which connection is handshaking through a context variable: the callback
runs synchronously inside ``do_handshake``, in the connection's own task.
"""

from __future__ import annotations

import contextvars
import math
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["handshake", "wrap_server_side"]

SNICallback = Callable[[ssl.SSLObject, str, ssl.SSLContext], int | None]

_HANDSHAKING: contextvars.ContextVar[Connection | None] = contextvars.ContextVar(
    "hijack_tls_handshaking", default=None
)


class _SNIRecorder:
    """The context's ``sni_callback``: record, then ask the user's one."""

    __slots__ = ("inner",)

    def __init__(self, inner: SNICallback | None) -> None:
        self.inner = inner

    def __call__(
        self, ssl_object: ssl.SSLObject, server_name: str, ctx: ssl.SSLContext
    ) -> int | None:
        # (typeshed says str; without SNI it is None at run time)
        connection = _HANDSHAKING.get()
        if connection is not None:
            connection._server_name = server_name or None
        if self.inner is not None:
            return self.inner(ssl_object, server_name, ctx)
        return None


def wrap_server_side(
    stream: trio.abc.Stream, ssl_context: ssl.SSLContext
) -> trio.SSLStream[trio.abc.Stream]:
    """``stream`` as the server side of a TLS connection.

    ``https_compatible=False``: standard TLS, so that after a hijack a clean
    close sends close_notify and a peer's close_notify (EOF) is told apart
    from a cut connection (``BrokenResourceError``). HTTP itself does not
    need the https-compatible leniency: a client that leaves without
    close_notify is a ``BrokenResourceError`` the HTTP layer treats as the
    client leaving, since HTTP framing tells a complete request from a cut
    one (RFC 9112 9.8).

    Checked at every connection, so a callback the user sets later is
    chained too."""
    current = ssl_context.sni_callback
    if not isinstance(current, _SNIRecorder):
        ssl_context.sni_callback = _SNIRecorder(current)
    return trio.SSLStream(stream, ssl_context, server_side=True, https_compatible=False)


async def handshake(
    stream: trio.SSLStream[trio.abc.Stream],
    connection: Connection,
    timeout: float | None,
) -> bool:
    """Run the handshake within ``timeout``; False if it took longer."""
    token = _HANDSHAKING.set(connection)
    try:
        with trio.move_on_after(math.inf if timeout is None else timeout) as scope:
            await stream.do_handshake()
    finally:
        _HANDSHAKING.reset(token)
    return not scope.cancelled_caught
