"""Accepting from a plain listening socket: several connections per wake-up.

``trio.SocketListener.accept`` costs a scheduler pass per connection (its
socket layer yields after every successful call) and the server's capacity
semaphore one more, so a burst of 32 connections costs the accept task 64
passes. Here the accept task waits for the listening socket once, then
takes what the kernel has queued (up to :data:`ACCEPT_BATCH`) with plain
non-blocking ``accept()`` calls, and yields again.

Only for listeners that are exactly a ``trio.SocketListener`` (or hijack's
UNIX listener over one); any other listener is accepted from as trio's
``Listener`` contract says. The accepted connections are the same
``trio.SocketStream`` objects trio's listener makes: whoever holds one
later (a ``Hijacked``, the hub) sees no difference.
"""

from __future__ import annotations

import errno
import socket
import sys
from typing import Any

import trio

from ._config import Limits
from ._keepalive import set_tcp_keepalive
from ._listeners import UnixSocketListener

__all__ = ["ACCEPT_BATCH", "SocketAcceptor", "socket_acceptor"]

#: At most this many connections per wake-up: a burst cannot keep the
#: accept task from letting the connections' tasks run.
ACCEPT_BATCH = 32

# Errors that concern one connection that is gone already, not the listener
# (trio's SocketListener skips the same ones).
_SKIP_ERRNOS = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM}
# The listening socket was closed under us.
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK, errno.EINVAL}
# Linux gives an accepted TCP socket the listening socket's SO_KEEPALIVE
# and TCP_KEEPIDLE/INTVL/CNT: set once there, not four syscalls per client.
_ACCEPTED_INHERIT_KEEPALIVE = sys.platform.startswith("linux")


class SocketAcceptor:
    """Accepts connections from ``listening`` (a trio socket, listening,
    non-blocking) in batches. :meth:`close` when done (it leaves the
    listening socket open: that is its listener's).

    With ``limits``, where accepted sockets inherit them, the TCP keepalive
    settings are set on the listening socket once; then
    :attr:`keepalive_set` is True and the accepted sockets have them."""

    __slots__ = ("_count", "_listening", "_raw", "keepalive_set")

    def __init__(
        self, listening: trio.socket.SocketType, limits: Limits | None = None
    ) -> None:
        self._listening = listening
        self.keepalive_set = limits is not None and _ACCEPTED_INHERIT_KEEPALIVE
        if self.keepalive_set:
            set_tcp_keepalive(listening, limits)
        # A second stdlib object on the listening fd, for plain accept()
        # calls; detached (never closed) by close().
        self._raw = socket.socket(fileno=listening.fileno())
        self._raw.setblocking(False)
        self._count = 0

    async def accept(self) -> trio.SocketStream:
        """The next connection: at once if one is queued and this batch
        is not full, else after one wait for the listening socket.

        Raises ``OSError`` as ``accept()`` does (EMFILE and friends), and
        ``trio.ClosedResourceError`` if the listening socket was closed."""
        while True:
            if self._count < ACCEPT_BATCH:
                try:
                    accepted, _ = self._raw.accept()
                except BlockingIOError:
                    pass
                except OSError as exc:
                    if exc.errno in _CLOSED_ERRNOS:
                        raise trio.ClosedResourceError from exc
                    if exc.errno not in _SKIP_ERRNOS:
                        raise
                    continue
                else:
                    self._count += 1
                    return trio.SocketStream(trio.socket.from_stdlib_socket(accepted))
            self._count = 0
            await trio.lowlevel.wait_readable(self._listening)

    def close(self) -> None:
        self._raw.detach()


def socket_acceptor(
    listener: trio.abc.Listener[Any], limits: Limits | None = None
) -> SocketAcceptor | None:
    """A :class:`SocketAcceptor` for ``listener`` if it is exactly a
    ``trio.SocketListener`` (or a :class:`UnixSocketListener` over one),
    else None."""
    if isinstance(listener, UnixSocketListener):
        listener = listener.listener
    if type(listener) is not trio.SocketListener:
        return None
    return SocketAcceptor(listener.socket, limits)
