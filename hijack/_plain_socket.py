"""Reads and writes on a plain socket without trio's stream layers.

``trio.SocketStream.send_all`` and ``receive_some`` wrap every call in a
conflict detector, an error-translating context manager and trio's
``_nonblocking_helper`` (an async context manager), and ``send_all`` always
yields to the scheduler, even when the kernel took every byte at once. On a
keep-alive request or a small echo these layers are a measurable share of
the server's CPU (see ``bench/ANALYSIS.md``). The owner of the socket (the
HTTP layer, a :class:`~hijack._replay.ReplayStream`) checks conflicts and
closed state itself, and decides where its scheduler passes go.

Only for sockets trio made non-blocking: ``os.read`` / ``os.write`` on their
file descriptor are ``recv`` / ``send`` without flags (Python ignores
SIGPIPE, so a write to a closed peer raises ``BrokenPipeError``).
"""

from __future__ import annotations

import os

import trio

__all__ = ["find_socket", "plain_socket", "receive", "receive_now", "send_now"]


def plain_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket of ``stream`` if it is exactly a ``trio.SocketStream``
    (not TLS, not a memory stream, not a subclass with its own rules)."""
    if type(stream) is trio.SocketStream:
        return stream.socket
    return None


def send_now(sock: trio.socket.SocketType, data: bytes | memoryview) -> int:
    """Send what the kernel takes without waiting: the count sent (0 if the
    send buffer is full). Not a checkpoint. Raises ``OSError`` (the peer is
    gone: ``BrokenPipeError``, ``ConnectionResetError``; closed here:
    ``EBADF``)."""
    try:
        return os.write(sock.fileno(), data)
    except BlockingIOError:
        return 0


def receive_now(sock: trio.socket.SocketType, max_bytes: int) -> bytes | None:
    """Up to ``max_bytes`` already there (b"" at EOF), or None if none
    yet. Not a checkpoint. Raises ``OSError`` as ``send_now``."""
    try:
        return os.read(sock.fileno(), max_bytes)
    except BlockingIOError:
        return None


async def receive(
    sock: trio.socket.SocketType, max_bytes: int, *, wait_first: bool = False
) -> bytes:
    """Up to ``max_bytes`` (b"" at EOF), waiting until some arrive. Exactly
    one scheduler pass, whether the bytes were there or had to be awaited
    (trio's ``sock.recv`` does the same, through more layers). Raises
    ``OSError`` as ``send_now``.

    ``wait_first``: the caller just answered the peer, so nothing is likely
    to be there yet: wait for readiness before the first ``recv`` instead
    of trying one that fails with EAGAIN (a syscall per request or round
    trip saved). If bytes did arrive meanwhile, the wait ends at once."""
    if not wait_first:
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            data = os.read(sock.fileno(), max_bytes)
        except BlockingIOError:
            pass
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
    # wait_readable is a checkpoint of its own: a pending cancellation is
    # delivered as it blocks, before any byte is taken.
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return os.read(sock.fileno(), max_bytes)
        except BlockingIOError:  # pragma: no cover - a spurious wake-up
            pass


def find_socket(stream: trio.abc.Stream) -> trio.socket.SocketType | None:
    """The socket under ``stream`` (looking through TLS), or None."""
    while True:
        if isinstance(stream, trio.SocketStream):
            return stream.socket
        if isinstance(stream, trio.SSLStream):
            stream = stream.transport_stream
            continue
        return None
