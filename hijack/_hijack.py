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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["HijackError", "Hijacked"]


class HijackError(RuntimeError):
    """Misuse of the hijack contract: a second hijack, a response or a body
    read after hijack, or a hijack after the handler returned."""


class Hijacked(trio.abc.HalfCloseableStream):
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

    __slots__ = (
        "_closed",
        "_detached",
        "_pending",
        "_receiving",
        "_sending",
        "buffered",
        "connection",
        "stream",
    )

    def __init__(
        self, stream: trio.abc.Stream, buffered: bytes, connection: Connection
    ) -> None:
        self.stream = stream
        self.buffered = buffered
        self.connection = connection
        self._pending = memoryview(buffered)
        self._receiving = False
        self._sending = False
        self._detached = False
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<Hijacked connection={self.connection.id} "
            f"buffered={len(self.buffered)}B closed={self._closed}>"
        )

    @property
    def closed(self) -> bool:
        return self._closed

    def take_buffered(self) -> bytes:
        """Return the read-ahead bytes not yet replayed and forget them.

        For code that reads ``stream`` directly (a relay that wants the raw
        socket): write these first, then read the transport.
        """
        pending = bytes(self._pending)
        self._pending = memoryview(b"")
        return pending

    def detach(self) -> None:
        """Hand ownership on: the server will not close this stream when the
        handler returns. The new owner must close it."""
        self._detached = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._send_guard():
            await self.stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        with self._send_guard():
            await self.stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        with self._send_guard():
            stream = self.stream
            if not isinstance(stream, trio.abc.HalfCloseableStream):
                # TLS has no portable half-close; say so instead of faking it.
                raise trio.BrokenResourceError(
                    f"{type(stream).__name__} cannot half-close; close it instead"
                )
            await stream.send_eof()

    @contextmanager
    def _send_guard(self) -> Iterator[None]:
        # The transport may not detect overlapping sends (a StapledStream
        # does not), so we do: one sender at a time, as trio requires.
        if self._sending:
            raise trio.BusyResourceError("another task is sending")
        if self._closed:
            raise trio.ClosedResourceError("hijacked stream is closed")
        self._sending = True
        try:
            yield
        finally:
            self._sending = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving")
        if self._closed:
            raise trio.ClosedResourceError("hijacked stream is closed")
        if self._pending:
            self._receiving = True
            try:
                await trio.lowlevel.checkpoint()
            finally:
                self._receiving = False
            if self._closed:
                raise trio.ClosedResourceError("hijacked stream is closed")
            end = len(self._pending) if max_bytes is None else max_bytes
            chunk = bytes(self._pending[:end])
            self._pending = self._pending[end:]
            return chunk
        self._receiving = True
        try:
            return await self.stream.receive_some(max_bytes)
        finally:
            self._receiving = False

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._pending = memoryview(b"")
        try:
            await self.stream.aclose()
        finally:
            self.connection.mark_hijacked_closed()

    async def release(self) -> None:
        """Called by the server when the handler returns: close unless
        detached."""
        if not self._detached and not self._closed:
            await trio.aclose_forcefully(self)

    def __del__(self) -> None:
        if not self._closed:
            warnings.warn(
                f"hijacked stream of connection {self.connection.id} was "
                "garbage collected without being closed",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
