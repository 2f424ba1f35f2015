"""A stream that yields some bytes already received before reading its
transport (hyper's ``Rewind``). The base of :class:`~hijack.Hijacked`, and
what a client gets back after a tunnel handshake."""

from __future__ import annotations

import errno

import trio

from ._errors import UsageError
from ._plain_socket import plain_socket, receive, send_now

__all__ = ["ReplayStream", "close_socket_now"]


class ReplayStream(trio.abc.HalfCloseableStream):
    """``stream``, reading ``prefix`` first. Closing it closes ``stream``.

    It enforces trio's stream rules itself (one sender and one receiver at a
    time, errors after close), since a transport such as a ``StapledStream``
    may not detect overlapping sends.

    Scheduler passes: every call checks for cancellation, and a receive
    always yields once. On a plain socket a ``send_all`` the kernel takes
    at once does not yield again right after a call that yielded (the
    receive before it): an echo or a request/answer loop costs one pass
    per round trip instead of two, and any loop of calls on this stream
    still yields at least every other call.
    """

    __slots__ = (
        "_closed",
        "_pending",
        "_receiving",
        "_sending",
        "_sent",
        "_socket",
        "_yielded",
        "stream",
    )

    def __init__(self, stream: trio.abc.Stream, prefix: bytes = b"") -> None:
        self.stream = stream
        # A plain socket transport is driven directly (see send_all):
        # the hot path of every hijacked protocol.
        self._socket = plain_socket(stream)
        # The last call on this stream yielded: the next send need not.
        self._yielded = False
        # The last socket call was a send: the peer has to answer before
        # there is anything to read (see _plain_socket.receive).
        self._sent = False
        self._pending = memoryview(prefix)
        self._receiving = False
        self._sending = False
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`aclose` (or ``close_socket_now``) was called."""
        return self._closed

    @property
    def can_send_eof(self) -> bool:
        """True if the transport can half-close (a plain socket can; TLS
        cannot: :meth:`send_eof` raises :class:`~hijack.UsageError` there)."""
        return isinstance(self.stream, trio.abc.HalfCloseableStream)

    def take_buffered(self) -> bytes:
        """Return the prefix bytes not yet replayed and forget them.

        For code that reads ``stream`` directly (a relay that wants the raw
        socket): write these first, then read the transport.
        """
        pending = bytes(self._pending)
        self._pending = memoryview(b"")
        return pending

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` on the transport (trio's ``SendStream`` contract)."""
        self._start_sending()
        try:
            sock = self._socket
            if sock is None or not data:
                await self.stream.send_all(data)
                return
            # The plain socket, driven here (one coroutine per send).
            if sock.did_shutdown_SHUT_WR:
                raise trio.ClosedResourceError("can't send data after sending EOF")
            await trio.lowlevel.checkpoint_if_cancelled()
            try:
                with memoryview(data) as view:
                    sent = send_now(sock, view)
                    if sent == len(view):
                        self._sent = True
                        if self._yielded:
                            self._yielded = False
                        else:
                            await trio.lowlevel.cancel_shielded_checkpoint()
                        return
                    self._yielded = False
                    while sent < len(view):  # the send buffer is full: wait
                        sent += await sock.send(view[sent:])
            except OSError as exc:
                raise _stream_error(exc) from exc
        finally:
            self._sending = False

    async def wait_send_all_might_not_block(self) -> None:
        """See ``trio.abc.SendStream``."""
        self._start_sending()
        try:
            await self.stream.wait_send_all_might_not_block()
        finally:
            self._sending = False

    async def send_eof(self) -> None:
        """Half-close: the peer reads EOF, we can still receive. Raises
        :class:`~hijack.UsageError` if the transport cannot (TLS)."""
        self._start_sending()
        try:
            stream = self.stream
            if not isinstance(stream, trio.abc.HalfCloseableStream):
                # TLS has no portable half-close (a close_notify ends both
                # directions in TLS 1.2 and in Python's ssl): say so instead
                # of faking it. Nothing was sent; the stream still works.
                raise UsageError(
                    f"{type(stream).__name__} cannot half-close; close it instead"
                )
            await stream.send_eof()
        finally:
            self._sending = False

    def _start_sending(self) -> None:
        # Plain try/finally at each call site, not a context manager: this is
        # on the hot path of every hijacked write.
        if self._sending:
            raise trio.BusyResourceError("another task is sending")
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        self._sending = True

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        """The replayed prefix first, then the transport's bytes."""
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving")
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        self._receiving = True
        try:
            if not self._pending:
                if self._socket is not None:
                    wait_first, self._sent = self._sent, False
                    size = RECEIVE_SIZE if max_bytes is None else max_bytes
                    try:
                        data = await receive(self._socket, size, wait_first=wait_first)
                    except OSError as exc:
                        raise _stream_error(exc) from exc
                    self._yielded = True  # a socket receive yields once
                    return data
                return await self.stream.receive_some(max_bytes)
            await trio.lowlevel.checkpoint()
        finally:
            self._receiving = False
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")
        end = len(self._pending) if max_bytes is None else max_bytes
        chunk = bytes(self._pending[:end])
        self._pending = self._pending[end:]
        return chunk

    async def aclose(self) -> None:
        """Close the transport (idempotent)."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        self._pending = memoryview(b"")
        await self.stream.aclose()

    def close_socket_now(self) -> bool:
        """Close at once, without awaiting, if the transport is a plain
        socket (closing one needs no I/O); False if it is not (TLS must say
        goodbye: use ``aclose``). For the relay's cleanup, where every
        checkpoint is set-up cost of a short-lived tunnel."""
        if not isinstance(self.stream, trio.SocketStream):
            return False
        self._closed = True
        self._pending = memoryview(b"")
        self.stream.socket.close()
        return True


def close_socket_now(stream: trio.abc.Stream) -> bool:
    """Close ``stream`` at once if it is a plain socket (or a ReplayStream
    over one): no I/O, no checkpoint. False (nothing done) for anything
    else, such as TLS, which must say goodbye with ``aclose``."""
    if isinstance(stream, ReplayStream):
        return stream.close_socket_now()
    if isinstance(stream, trio.SocketStream):
        stream.socket.close()
        return True
    return False


# Driving a trio socket directly does what trio.SocketStream does (send
# everything, map OSError to the stream errors) without its per-call context
# managers, which cost a measurable share of a small echo. Conflict and
# closed-state checks are ReplayStream's own.
_CLOSED_ERRNOS = {errno.EBADF, errno.ENOTSOCK}
RECEIVE_SIZE = 65536


def _stream_error(exc: OSError) -> Exception:
    if exc.errno in _CLOSED_ERRNOS:
        return trio.ClosedResourceError("this socket was already closed")
    return trio.BrokenResourceError(f"socket connection broken: {exc}")
