"""The hijacked stream: the transport plus every byte the HTTP layer read ahead.

Ownership rule (the contract every handler relies on):

* ``request.hijack()`` hands the transport to the handler. From then on the
  HTTP layer never reads, writes, times out or closes it on its own.
* The handler owns it until it returns. When the handler returns, the server
  closes the hijacked stream, unless the handler called :meth:`detach` to hand
  it on (to a task in another nursery, say); then that new owner must close
  it. Either way the server keeps the connection in its registry, counted as
  an open hijacked connection, until the stream is closed, and closes what is
  left after the shutdown grace period.
* A detached stream that is garbage collected without being closed emits a
  ``ResourceWarning``: a hijacked stream never leaks silently.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import trio

from ._closing import aclose_gracefully
from ._replay import ReplayStream

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["Hijacked"]


class Hijacked(ReplayStream):
    """A ``trio.abc.HalfCloseableStream`` that replays ``buffered`` first.

    Attributes:
      stream: the transport as the listener produced it (``trio.SocketStream``,
        ``trio.SSLStream``, a memory stream...). Reading it directly skips
        ``buffered``: use this object instead unless you handle ``buffered``.
      buffered: the bytes received from the client that the HTTP layer did
        not consume, in order (early frames of the new protocol, a TLS
        ClientHello after CONNECT, pipelined requests, unread body bytes).
      connection: the :class:`~hijack.Connection` it came from.
    """

    __slots__ = ("_detached", "buffered", "connection")

    def __init__(
        self, stream: trio.abc.Stream, buffered: bytes, connection: Connection
    ) -> None:
        super().__init__(stream, buffered)
        self.buffered = buffered
        self.connection = connection
        self._detached = False

    def __repr__(self) -> str:
        return (
            f"<Hijacked connection={self.connection.id} "
            f"buffered={len(self.buffered)}B closed={self.closed}>"
        )

    def detach(self) -> None:
        """Hand ownership on: the server will not close this stream when the
        handler returns. The new owner must close it."""
        self._detached = True

    async def aclose(self) -> None:
        """Close the stream (a TLS transport sends close_notify first) and
        tell the server the hijacked connection is over."""
        if self.closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            await super().aclose()
        finally:
            self.connection._mark_hijacked_closed()

    def close_socket_now(self) -> bool:
        """See :meth:`ReplayStream.close_socket_now`; also tells the server."""
        if self.closed:
            return True
        if not super().close_socket_now():
            return False
        self.connection._mark_hijacked_closed()
        return True

    async def _release(self) -> None:
        """The handler returned: close (TLS: with close_notify) unless
        detached."""
        if not self._detached and not self.closed:
            await aclose_gracefully(self)

    def __del__(self) -> None:
        if not self.closed:
            warnings.warn(
                f"hijacked stream of connection {self.connection.id} was "
                "garbage collected without being closed",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
