"""Linux ``splice(2)`` fast path for the relay: socket -> pipe -> socket.

Bytes never enter Python: the kernel moves pages from the source socket into
a pipe and from the pipe into the destination socket (there is no direct
socket-to-socket splice, hence the pipe).

A pipe costs two fds and up to its size in kernel memory, so a tunnel holds
one only while bytes are in flight: it takes a pipe from a :class:`PipePool`
when the source has data and gives it back as soon as the pipe is drained.
An idle tunnel holds no pipe. A pipe that still holds bytes (cancel, error)
is closed, never pooled: its bytes belong to a dead tunnel.

Trio stays in charge of the sockets: we wait with
``trio.lowlevel.wait_readable/wait_writable`` on the trio socket objects, so
closing the ``trio.SocketStream`` (``notify_closing``) wakes us with
``ClosedResourceError``, and we never close a socket ourselves.
"""

from __future__ import annotations

import fcntl
import os
import sys
import threading
from collections.abc import Callable

import trio

from ._replay import ReplayStream
from ._throttle import Throttle

__all__ = [
    "DEFAULT_PIPE_POOL",
    "Pipe",
    "PipePool",
    "PipeUnavailable",
    "splice_socket",
    "splice_stream",
]

#: Wanted pipe size (the default is 64 KiB); 1 MiB is the usual unprivileged
#: maximum (/proc/sys/fs/pipe-max-size). Fewer, larger splices: fewer trips.
PIPE_SIZE = 1 << 20

FLAGS = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)


def available() -> bool:
    """True where ``os.splice`` exists (Linux, Python >= 3.10)."""
    return sys.platform == "linux" and hasattr(os, "splice")


def splice_socket(stream: trio.abc.Stream) -> trio.SocketStream | None:
    """The plain socket stream to splice on, or None if there is none.

    A ``trio.SocketStream`` qualifies, and so does a
    :class:`~hijack.ReplayStream` (such as :class:`~hijack.Hijacked`) whose
    ``.stream`` is one. Anything else (TLS, memory streams, a subclass
    that may add behaviour) would be bypassed by splicing on the fd.
    """
    if isinstance(stream, ReplayStream):
        stream = stream.stream
    return stream if type(stream) is trio.SocketStream else None


class Pipe:
    """A non-blocking pipe: ``read_fd``, ``write_fd`` and its ``size``."""

    __slots__ = ("read_fd", "size", "write_fd")

    def __init__(self, size: int) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            self.size = fcntl.fcntl(self.write_fd, fcntl.F_SETPIPE_SZ, size)
        except OSError:
            # Over pipe-max-size or the user's pipe quota: keep the default.
            self.size = fcntl.fcntl(self.write_fd, fcntl.F_GETPIPE_SZ)

    def close(self) -> None:
        os.close(self.read_fd)
        os.close(self.write_fd)


class PipePool:
    """Empty pipes kept for reuse: at most ``max_idle`` (extras are closed).

    ``in_use`` counts pipes handed out and not yet returned; ``idle`` counts
    pooled ones (each holds 2 fds). Thread-safe: one pool may serve several
    Trio runs. ``close()`` closes the idle pipes (the pool stays usable).
    """

    def __init__(self, max_idle: int = 64, pipe_size: int = PIPE_SIZE) -> None:
        self.max_idle = max_idle
        self.pipe_size = pipe_size
        self.in_use = 0
        self._idle: list[Pipe] = []
        self._lock = threading.Lock()

    @property
    def idle(self) -> int:
        return len(self._idle)

    def acquire(self) -> Pipe:
        with self._lock:
            self.in_use += 1
            if self._idle:
                return self._idle.pop()
        try:
            return Pipe(self.pipe_size)
        except BaseException:
            with self._lock:
                self.in_use -= 1
            raise

    def release(self, pipe: Pipe) -> None:
        """Give back an EMPTY pipe (the caller knows it drained it)."""
        with self._lock:
            self.in_use -= 1
            if len(self._idle) < self.max_idle:
                self._idle.append(pipe)
                return
        pipe.close()

    def discard(self, pipe: Pipe) -> None:
        """Close a pipe that may still hold bytes: it must never be reused."""
        with self._lock:
            self.in_use -= 1
        pipe.close()

    def close(self) -> None:
        with self._lock:
            pipes, self._idle = self._idle, []
        for pipe in pipes:
            pipe.close()


#: The pool ``relay`` uses unless given another one.
DEFAULT_PIPE_POOL = PipePool()


def _fd(stream: trio.SocketStream) -> int:
    fd = stream.socket.fileno()
    if fd == -1:
        raise trio.ClosedResourceError("socket was closed")
    return fd


def _splice(fd_in: int, fd_out: int, count: int) -> int:
    """One non-blocking splice: bytes moved, or -1 on EAGAIN. Any other error
    means the tunnel is broken (as trio's streams report it).

    EAGAIN is a return value, not an exception, so that no exception (and
    its traceback, ~1 KiB) stays alive while an idle tunnel waits."""
    try:
        return os.splice(fd_in, fd_out, count, flags=FLAGS)
    except BlockingIOError:
        return -1
    except OSError as exc:
        raise trio.BrokenResourceError(f"splice: {exc}") from exc


class PipeUnavailable(Exception):
    """No pipe could be made (out of fds or pipe memory). ``splice_stream``
    raises it only while no byte is in flight: the caller may go on with a
    copy loop."""


async def splice_stream(
    src: trio.SocketStream,
    dst: trio.SocketStream,
    pool: PipePool,
    on_moved: Callable[[int], None],
    throttle: Throttle | None = None,
) -> None:
    """Move bytes ``src -> dst`` until EOF on ``src``; ``on_moved(n)`` after
    each ``n`` bytes written to ``dst``.

    Returns at EOF with every byte delivered; it neither sends EOF nor closes
    anything (the caller owns both sockets). ``throttle`` caps what each
    splice from ``src`` may take; while it allows nothing, no pipe is held
    and no byte is read (the kernel's buffers push back on the sender).
    Errors raise
    ``trio.BrokenResourceError`` (peer reset, EPIPE) or
    ``trio.ClosedResourceError`` (a socket closed under us). On cancel or
    error a pipe still holding bytes is closed, not pooled.
    """
    pipe: Pipe | None = None
    pending = 0  # bytes in the pipe not yet written to dst
    try:
        while True:
            if pipe is None:
                try:
                    pipe = pool.acquire()
                except OSError as exc:  # EMFILE, ENFILE, ENOMEM
                    raise PipeUnavailable(f"no pipe for splice: {exc}") from exc
            count = pipe.size
            if throttle is not None:
                now = trio.current_time()
                count = min(count, throttle.allowance(now))
                if not count:
                    pool.release(pipe)
                    pipe = None
                    await trio.sleep(throttle.delay(now))
                    continue
            # The pipe is empty here: EAGAIN can only mean "src has no data".
            pending = _splice(_fd(src), pipe.write_fd, count)
            if pending < 0:
                pending = 0
                # Give the empty pipe back before waiting: idle holds no pipe.
                pool.release(pipe)
                pipe = None
                await trio.lowlevel.wait_readable(src.socket)
                continue
            if pending == 0:
                return  # EOF from src, and the pipe is empty
            if throttle is not None:
                throttle.consume(pending)
            # Drain completely before reading more: bytes keep their order and
            # a partially written pipe is never mixed with new data.
            while pending:
                n = _splice(pipe.read_fd, _fd(dst), pending)
                if n < 0:
                    await trio.lowlevel.wait_writable(dst.socket)
                    continue
                pending -= n
                on_moved(n)
            # Drained: give the pipe back before yielding. Pipes in use are
            # then bounded by the tunnels blocked mid-drain, not by every
            # tunnel that moved bytes in this scheduler pass (a burst on 500
            # tunnels held 800+ pipes and hit EMFILE near 9,000 tunnels).
            pool.release(pipe)
            pipe = None
            # A busy tunnel never blocks above: yield so others run, and so a
            # cancel (idle timeout, shutdown) gets through.
            await trio.lowlevel.checkpoint()
    finally:
        if pipe is not None:
            if pending:
                pool.discard(pipe)
            else:
                pool.release(pipe)
