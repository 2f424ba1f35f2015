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
from ._relay import RelayStats
from ._replay import ReplayStream

if TYPE_CHECKING:
    from ._connection import Connection
    from ._hub import Hub, HubTunnel, TunnelCallback

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
      hub: the server's relay :class:`~hijack.Hub` (Linux), or None.
    """

    __slots__ = ("_detached", "buffered", "connection", "hub")

    def __init__(
        self, stream: trio.abc.Stream, buffered: bytes, connection: Connection
    ) -> None:
        super().__init__(stream, buffered)
        self.buffered = buffered
        self.connection = connection
        self.hub: Hub | None = None  # set by the server's HTTP layer
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

    def can_hand_to_hub(self, upstream: trio.abc.Stream) -> bool:
        """True if :meth:`hand_to_hub` would take this stream and
        ``upstream``: the server runs a hub (Linux) and both are plain
        sockets (not TLS, not memory streams)."""
        return self.hub is not None and self.hub.can_take(self, upstream)

    def hand_to_hub(
        self,
        upstream: trio.abc.Stream,
        *,
        idle_timeout: float | None = None,
        stats: RelayStats | None = None,
        on_close: TunnelCallback | None = None,
    ) -> HubTunnel:
        """Relay this stream and ``upstream`` in the server's hub, and
        return at once: the handler may return and its task end.

        The same tunnel as ``await relay(self, upstream, ...)`` (buffered
        bytes first, half-close each way, ``idle_timeout``, ``stats``), at a
        fraction of the memory and set-up cost. From here on the hub owns
        both streams and closes them when the tunnel ends (EOF both ways, an
        error, the idle timeout, :meth:`HubTunnel.close`, or the end of the
        server's shutdown grace); the connection stays counted as an open
        hijacked connection until then. ``on_close(tunnel)`` is called once
        at the end (``tunnel.stats``, ``tunnel.reason``); it must not block.
        No task may be reading or writing either stream at hand-over.

        Raises ``ValueError`` and changes nothing when
        :meth:`can_hand_to_hub` is False: the caller still owns both streams
        (``await relay(...)`` works everywhere).
        """
        if self.hub is None:
            raise ValueError("no relay hub here (not Linux, or not from a Server)")
        tunnel = self.hub.add(
            self, upstream, idle_timeout=idle_timeout, stats=stats, on_close=on_close
        )
        self._detached = True
        # The tunnel owns the connection now: the server's registry holds it
        # (and closes it at the end of a shutdown grace); closing this
        # stream, the hub reports the connection closed.
        self.connection._hijack(tunnel)
        return tunnel

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
