"""Relay bytes both ways between two streams, with half-close and counters.

Two ways to move bytes, same behaviour:

* the copy loop: ``receive_some(256 KiB)`` then ``send_all``, for any trio
  stream (TLS, memory streams, a :class:`~hijack.Hijacked` over either);
* on Linux, when both ends are plain sockets, ``splice(2)`` through a pooled
  pipe (see ``_splice``): no bytes through Python, no per-chunk allocation.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio

from . import _splice
from ._closing import aclose_gracefully
from ._replay import ReplayStream, close_socket_now
from ._throttle import Throttle

__all__ = ["RelayStats", "relay"]

#: Large reads: per-chunk overhead (a trip through the scheduler, a bytes
#: object) dominates a copy loop, so read as much as the kernel has.
CHUNK = 256 * 1024


@dataclass(slots=True)
class RelayStats:
    """Bytes moved each way, and whether the relay ended on idle timeout."""

    a_to_b: int = 0
    b_to_a: int = 0
    timed_out: bool = False


async def relay(
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    *,
    idle_timeout: float | None = None,
    stats: RelayStats | None = None,
    splice: bool | None = None,
    pipe_pool: _splice.PipePool | None = None,
    throttle: tuple[Throttle | None, Throttle | None] | None = None,
) -> RelayStats:
    """Copy ``a -> b`` and ``b -> a`` until both directions reach EOF.

    A :class:`~hijack.Hijacked` (any :class:`~hijack.ReplayStream`) end has
    its buffered bytes sent first. EOF on one side is passed on with
    ``send_eof`` and the other direction keeps flowing until it ends too.

    A stream that cannot half-close (TLS: trio's ``SSLStream`` has no
    ``send_eof``; its only end-of-data signal is the close_notify sent by
    ``aclose``) is closed instead: its peer must learn that no more data
    comes, or a client waiting for EOF would hang forever. The cost: bytes
    still coming from that peer are dropped, which is what closing a TLS
    connection means anyway (and the other direction then ends too).

    ``idle_timeout``: when no byte moves either way for that long, both
    streams are closed and ``timed_out`` is True. An error either way (peer
    reset, broken pipe) ends the relay quietly; the stats say how far it got.

    ``splice``: None picks ``splice(2)`` when both ends are plain
    ``trio.SocketStream`` (or a Hijacked/ReplayStream over one) on Linux,
    else the copy loop; False forces the copy loop; True requires splice and raises
    ``ValueError`` if it cannot be used. ``pipe_pool`` (default: a shared,
    bounded pool) lends the pipes; a tunnel holds one per direction only
    while bytes are in flight.

    ``throttle``: bandwidth limits ``(a -> b, b -> a)``, either None for
    no limit (see :class:`~hijack.Throttle`); they hold on the splice path
    too. Without them the relay runs exactly as before.

    Resource handling: both streams are closed when the relay returns, on
    success, error, timeout, ``ValueError`` or cancellation (a cancel is
    re-raised after closing). ``stats`` (if given) is updated as bytes move,
    so a caller can log partial counts after a failure.
    """
    stats = stats if stats is not None else RelayStats()
    timeout = math.inf if idle_timeout is None else idle_timeout
    pool = pipe_pool if pipe_pool is not None else _splice.DEFAULT_PIPE_POOL
    sock_a, sock_b = _splice.splice_socket(a), _splice.splice_socket(b)
    try:
        can_splice = _splice.available() and sock_a is not None and sock_b is not None
        if splice and not can_splice:
            raise ValueError(
                "splice=True needs Linux os.splice and two plain trio.SocketStream"
                f" ends (or a ReplayStream over one), got {type(a).__name__} and"
                f" {type(b).__name__}"
            )
        use_splice = can_splice if splice is None else splice
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:
            state = _Relay(scope, timeout, stats, pool if use_splice else None)
            forward, backward = throttle or (None, None)
            try:
                async with trio.open_nursery() as nursery:
                    # One direction in a new task, the other in this one: a
                    # task less per tunnel (memory per idle tunnel counts).
                    nursery.start_soon(
                        state.pump, b, a, sock_b, sock_a, False, backward
                    )
                    await state.pump(a, b, sock_a, sock_b, True, forward)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                # The peer went away (or a stream we closed on EOF was still
                # being read): the relay is over, both get closed below.
                pass
        stats.timed_out = scope.cancelled_caught
    finally:
        # Plain sockets close at once; anything else (TLS) says goodbye.
        for stream in [s for s in (a, b) if not close_socket_now(s)]:
            await aclose_gracefully(stream)
    return stats


class _Relay:
    """What both directions share. A class with slots rather than closures:
    an idle tunnel keeps all of this alive, so every object counts."""

    __slots__ = ("pool", "scope", "stats", "timeout")

    def __init__(
        self,
        scope: trio.CancelScope,
        timeout: float,
        stats: RelayStats,
        pool: _splice.PipePool | None,
    ) -> None:
        self.scope = scope
        self.timeout = timeout
        self.stats = stats
        self.pool = pool  # None: the copy loop

    def moved_forward(self, n: int) -> None:
        # Any byte either way means "not idle": push the deadline.
        self.scope.deadline = trio.current_time() + self.timeout
        self.stats.a_to_b += n

    def moved_backward(self, n: int) -> None:
        self.scope.deadline = trio.current_time() + self.timeout
        self.stats.b_to_a += n

    async def pump(
        self,
        src: trio.abc.Stream,
        dst: trio.abc.Stream,
        src_sock: trio.SocketStream | None,
        dst_sock: trio.SocketStream | None,
        forward: bool,
        throttle: Throttle | None,
    ) -> None:
        moved = self.moved_forward if forward else self.moved_backward
        if self.pool is not None and src_sock is not None and dst_sock is not None:
            # Splicing reads the raw socket, so send what the HTTP layer had
            # read ahead first, in order.
            if isinstance(src, ReplayStream) and (early := src.take_buffered()):
                # Read-ahead bytes are not throttled: they are already here,
                # and at most a request head's worth.
                await dst_sock.send_all(early)
                moved(len(early))
            try:
                await _splice.splice_stream(
                    src_sock, dst_sock, self.pool, moved, throttle
                )
            except _splice.PipeUnavailable:
                # No fd (or pipe memory) for a pipe right now, and no byte in
                # flight: go on copying rather than cut a working tunnel.
                await _copy(src, dst, moved, throttle)
            else:
                # A plain socket half-closes without I/O: no checkpoint.
                try:
                    dst_sock.socket.shutdown(socket.SHUT_WR)
                except OSError as exc:
                    raise trio.BrokenResourceError(f"shutdown: {exc}") from exc
                return
        else:
            await _copy(src, dst, moved, throttle)
        await _send_eof_or_close(dst)


async def _copy(
    src: trio.abc.Stream,
    dst: trio.abc.Stream,
    moved: Callable[[int], None],
    throttle: Throttle | None = None,
) -> None:
    if throttle is None:
        while data := await src.receive_some(CHUNK):
            await dst.send_all(data)
            moved(len(data))
        return
    while data := await src.receive_some(min(CHUNK, await throttle.wait())):
        throttle.consume(len(data))
        await dst.send_all(data)
        moved(len(data))


async def _send_eof_or_close(dst: trio.abc.Stream) -> None:
    """Pass EOF on; close ``dst`` if it cannot half-close (see ``relay``)."""
    if isinstance(dst, trio.abc.HalfCloseableStream) and (
        not isinstance(dst, ReplayStream) or dst.can_send_eof  # not over TLS
    ):
        await dst.send_eof()
        return
    await dst.aclose()
