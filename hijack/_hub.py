"""The relay hub: one task moves the bytes of every plain-socket tunnel (Linux).

Why: :func:`~hijack.relay` gives each tunnel two trio tasks, their frames and
a cancel scope: 13.9 KiB of RSS per idle tunnel and about thirty scheduler
passes to open and close one (bench/ANALYSIS.md). A tunnel handed to a
:class:`Hub` costs its two sockets, a :class:`HubTunnel` and two small flow
objects; no task, no frame, no cancel scope.

How it works:

* One epoll instance, edge-triggered. Each socket is registered once, at
  hand-over, for ``EPOLLIN | EPOLLOUT | EPOLLET`` and never modified: moving
  bytes costs no ``epoll_ctl``. The hub task waits on the epoll fd with
  ``trio.lowlevel.wait_readable`` (an epoll fd is pollable), then collects
  the ready sockets with ``epoll.poll(0)``.
* Edge-triggered means: after an edge, act until the kernel says EAGAIN.
  A *flow* (one direction of a tunnel) splices its source into a pooled pipe
  and the pipe into its destination (``_splice``), and stops on EAGAIN: on its
  source (wait for the next ``EPOLLIN``) or on its destination (wait for
  ``EPOLLOUT``).
* Backpressure: a flow whose destination is full keeps its bytes in its pipe
  and does not read its source until the destination drains (the ``EPOLLIN``
  edges of the source are ignored meanwhile). A pipe is borrowed only while
  bytes are in it, so an idle tunnel holds none.
* Fairness: a flow moves at most :data:`TURN_BYTES` per turn, then waits in
  the ready list; the hub passes a trio checkpoint between rounds, so other
  tasks and other tunnels run.
* Idle timeout: a heap of ``(deadline, seq, tunnel)``, at most one entry per
  tunnel. Moving bytes only updates ``tunnel.deadline``; an entry that pops
  early is pushed again with the newer deadline (lazy deletion). Entries of
  closed tunnels are swept out once they are half the heap, so a closed
  tunnel is not kept alive until its deadline (at 1,000 tunnels a second and
  a 300 s timeout that would be 300,000 dead tunnels).
* Errors stay per tunnel: a failing syscall (reset, broken pipe) closes that
  tunnel only; an unexpected exception is logged and closes that tunnel only.

Small messages are copied, bulk is spliced: a flow starts with
``os.read``/``os.write`` (64 KiB reads), switches to splicing when a read
fills up and back when a splice brings less than 16 KiB. For a request of a
few hundred bytes a pipe and two splices cost more than a read and a write
(interactive traffic through two hops: 52 -> 42 us of CPU per request); for
bulk data splicing keeps bytes out of Python. Out of pipes (EMFILE, pipe
quota), a flow copies too, the same fallback the task relay has.

Per-tunnel rate limits: :class:`HubTunnel` has a ``limiter`` seam (see
:class:`Limiter`): before each read, a flow asks it how many bytes it may
move now; zero parks the flow until the limiter's ``resume_at``.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import select
import socket
from collections.abc import Callable
from typing import Protocol

import trio

from . import _splice
from ._relay import RelayStats
from ._replay import ReplayStream, close_socket_now

__all__ = ["Hub", "HubTunnel", "Limiter", "available"]

logger = logging.getLogger("hijack.hub")

#: A flow moves at most this much per turn before others get theirs.
TURN_BYTES = 4 << 20
#: Copy fallback read size (no pipe could be made).
COPY_CHUNK = 256 * 1024
#: Reads while copying small messages; a full one means bulk data: splice
#: again. A splice under a quarter of it switches to copying.
SMALL_READ = 64 * 1024
#: A rate-limited flow sleeps at least this long (a limiter answering "now"
#: must not make the hub spin).
MIN_PARK = 0.001
#: Ready sockets collected per ``epoll.poll``; more stay ready for the next.
MAX_EVENTS = 1024

_EPOLL = getattr(select, "epoll", None)
_REGISTER = (
    getattr(select, "EPOLLIN", 0)
    | getattr(select, "EPOLLOUT", 0)
    | getattr(select, "EPOLLRDHUP", 0)
    | getattr(select, "EPOLLET", 0)
)
_ERRORS = getattr(select, "EPOLLERR", 0) | getattr(select, "EPOLLHUP", 0)
_READ = getattr(select, "EPOLLIN", 0) | getattr(select, "EPOLLRDHUP", 0) | _ERRORS
_WRITE = getattr(select, "EPOLLOUT", 0) | _ERRORS
_HANGUP = getattr(select, "EPOLLRDHUP", 0) | _ERRORS
_SOCKET_ERROR = getattr(select, "EPOLLERR", 0)

TunnelCallback = Callable[["HubTunnel"], None]


def available() -> bool:
    """True where a hub can run: Linux with ``select.epoll`` and ``os.splice``."""
    return _EPOLL is not None and _splice.available()


class Limiter(Protocol):
    """A per-tunnel rate limit the hub consults (the seam for bandwidth
    limits on the splice path).

    ``allowance(now)``: how many bytes the tunnel may move now (0: none);
    ``consume(n, now)``: ``n`` bytes were moved; ``resume_at(now)``: when to
    ask again after an allowance of 0 (trio clock). One limiter may be shared
    by several tunnels (a per-client limit)."""

    def allowance(self, now: float) -> int: ...

    def consume(self, n: int, now: float) -> None: ...

    def resume_at(self, now: float) -> float: ...


class _Flow:
    """One direction of a tunnel: ``src`` -> ``dst`` (fds)."""

    __slots__ = (
        "buf",
        "copying",
        "done",
        "dst",
        "dst_sock",
        "eof",
        "forward",
        "hangup",
        "in_pipe",
        "parked",
        "pipe",
        "queued",
        "src",
        "tunnel",
        "waiting",
    )

    def __init__(
        self,
        tunnel: HubTunnel,
        src: int,
        dst_sock: trio.socket.SocketType,
        early: bytes,
        forward: bool,
    ) -> None:
        self.tunnel = tunnel
        self.src = src
        self.dst = dst_sock.fileno()
        self.dst_sock = dst_sock
        self.forward = forward
        self.pipe: _splice.Pipe | None = None
        self.in_pipe = 0  # bytes in the pipe not yet written to dst
        self.buf = early  # bytes read (or replayed) not yet written to dst
        self.eof = False  # src said EOF; dst gets it once buf/pipe are flushed
        self.done = False  # EOF passed on
        # dst said EAGAIN (or replayed bytes wait): act on its EPOLLOUT edge.
        self.waiting = bool(early)
        self.queued = False  # in the hub's ready list
        self.parked = False  # rate-limited: waits for a timer, not an edge
        # Small messages are read and written, bulk is spliced; a tunnel starts
        # copying (a handshake, a request) and splices once a read fills up.
        self.copying = True
        # epoll said the source's peer shut down (or the socket failed):
        # its EOF must be read, even after a short read.
        self.hangup = False

    def pump(self, now: float) -> bool:
        """Move bytes until EAGAIN, EOF or the turn's budget. True when the
        budget ran out (more may be ready). Raises OSError when broken."""
        tunnel = self.tunnel
        moved = 0
        drained = False
        try:
            while True:
                if self.buf:
                    try:
                        n = os.write(self.dst, self.buf)
                    except BlockingIOError:
                        self.waiting = True
                        return False
                    self.buf = self.buf[n:]
                    moved += n
                    continue
                if self.in_pipe:
                    pipe = self.pipe
                    assert pipe is not None
                    n = _splice_nb(pipe.read_fd, self.dst, self.in_pipe)
                    if n < 0:
                        self.waiting = True
                        return False
                    self.in_pipe -= n
                    moved += n
                    if self.in_pipe:
                        continue
                    # Drained: give the pipe back at once (idle holds none).
                    self.pipe = None
                    tunnel.pool.release(pipe)
                if self.eof:
                    self.done = True
                    # The other way ended first: the tunnel closes right
                    # after this, and close() sends the FIN (nothing unread
                    # is left on dst: its EOF was read), one syscall less.
                    other = tunnel.ba if self.forward else tunnel.ab
                    if not other.done:
                        self.dst_sock.shutdown(socket.SHUT_WR)
                    return False
                if drained:
                    # A short read emptied the source and what it gave is
                    # written: wait for the next EPOLLIN edge (epoll reports
                    # one for every arrival), not for a read saying EAGAIN.
                    return False
                if moved >= TURN_BYTES:
                    return True
                limit = TURN_BYTES
                if tunnel.limiter is not None:
                    limit = tunnel.limiter.allowance(now)
                    if limit <= 0:
                        if not self.parked:
                            self.parked = True
                            until = tunnel.limiter.resume_at(now)
                            tunnel.hub.park(self, max(until, now + MIN_PARK))
                        return False
                drained = self._read(limit, now)
                if not (self.in_pipe or self.buf or self.eof):
                    return False  # src drained: wait for EPOLLIN
        finally:
            if moved:
                tunnel.moved(moved, self.forward, now)

    def _read(self, limit: int, now: float) -> bool:
        """Fill the pipe (or ``buf``) from ``src``; sets ``eof`` on EOF.
        A limiter is charged for what was read. True when a copy's short
        read left the source empty (see :meth:`_copy`)."""
        tunnel = self.tunnel
        if self.copying:
            return self._copy(min(limit, SMALL_READ), now)
        pool = tunnel.pool
        try:
            pipe = pool.acquire()
        except OSError:  # EMFILE, ENFILE, ENOMEM: copy through Python
            return self._copy(min(limit, COPY_CHUNK), now)
        try:
            n = _splice_nb(self.src, pipe.write_fd, min(limit, pipe.size))
        except BaseException:
            pool.release(pipe)  # nothing went in
            raise
        if n <= 0:
            pool.release(pipe)
            self.eof = n == 0
            return False
        self.pipe = pipe
        self.in_pipe = n
        # Small messages (interactive traffic) are cheaper copied than
        # spliced: no pipe, and a plain write of a few bytes.
        self.copying = n < SMALL_READ // 4
        if tunnel.limiter is not None:
            tunnel.limiter.consume(n, now)
        return False

    def _copy(self, size: int, now: float) -> bool:
        """Read up to ``size`` bytes into ``buf``; back to splicing when a
        read fills it (bulk data). True when the read was short and the
        peer has not hung up: the socket's queue is empty now, and any byte
        that arrives later raises a new edge (Linux's edge-triggered epoll
        reports every arrival; nginx relies on the same rule). After a
        hang-up the EOF is read at once, as no edge would follow."""
        try:
            data = os.read(self.src, size)
        except BlockingIOError:
            return False
        self.buf = data
        self.eof = not data
        if len(data) >= SMALL_READ:
            self.copying = False
        if data and self.tunnel.limiter is not None:
            self.tunnel.limiter.consume(len(data), now)
        return 0 < len(data) < size and not self.hangup

    def drop_pipe(self) -> None:
        pipe, self.pipe = self.pipe, None
        if pipe is not None:
            # Bytes still in it belong to a dead tunnel: never reuse it.
            if self.in_pipe:
                self.tunnel.pool.discard(pipe)
            else:
                self.tunnel.pool.release(pipe)
        self.in_pipe = 0
        self.buf = b""


def _splice_nb(fd_in: int, fd_out: int, count: int) -> int:
    """One non-blocking splice: bytes moved, or -1 on EAGAIN."""
    try:
        return os.splice(fd_in, fd_out, count, flags=_splice.FLAGS)
    except BlockingIOError:
        return -1


class HubTunnel(trio.abc.AsyncResource):
    """A tunnel the hub runs: what its owner can see and do.

    ``stats`` (a :class:`~hijack.RelayStats`) is updated as bytes move;
    ``closed`` and ``reason`` (``"eof"``: both directions ended,
    ``"idle-timeout"``, ``"error"``: a peer reset or broken pipe,
    ``"closed"``: :meth:`close` or the hub stopping) say how it ended.
    ``await wait_closed()`` waits for the end; ``close()`` (or ``aclose()``)
    cuts it now.
    ``limiter``: an optional :class:`Limiter` (set it right after hand-over).
    """

    __slots__ = (
        "_closed_event",
        "a",
        "ab",
        "b",
        "ba",
        "closed",
        "deadline",
        "hub",
        "limiter",
        "on_close",
        "pool",
        "reason",
        "stats",
        "timeout",
    )

    def __init__(
        self,
        hub: Hub,
        a: trio.abc.Stream,
        b: trio.abc.Stream,
        stats: RelayStats,
        timeout: float,
        pool: _splice.PipePool,
        on_close: TunnelCallback | None,
    ) -> None:
        self.hub = hub
        self.a = a
        self.b = b
        self.stats = stats
        self.timeout = timeout
        self.deadline = math.inf
        self.pool = pool
        self.on_close = on_close
        self.limiter: Limiter | None = None
        self.closed = False
        self.reason = ""
        self._closed_event: trio.Event | None = None
        # Filled by Hub.add once the sockets are checked.
        self.ab: _Flow
        self.ba: _Flow

    def __repr__(self) -> str:
        state = f"closed ({self.reason})" if self.closed else "open"
        return (
            f"<HubTunnel {state} a_to_b={self.stats.a_to_b} b_to_a={self.stats.b_to_a}>"
        )

    def moved(self, n: int, forward: bool, now: float) -> None:
        if forward:
            self.stats.a_to_b += n
        else:
            self.stats.b_to_a += n
        self.deadline = now + self.timeout

    async def wait_closed(self) -> None:
        """Return once the tunnel has ended (at once if it has)."""
        if self.closed:
            await trio.lowlevel.checkpoint()
            return
        if self._closed_event is None:
            self._closed_event = trio.Event()
        await self._closed_event.wait()

    async def aclose(self) -> None:
        """:meth:`close`, as an AsyncResource (the server's registry closes
        the owners of hijacked connections this way)."""
        self.close()
        await trio.lowlevel.checkpoint()

    def close(self, reason: str = "closed") -> None:
        """End the tunnel now: both sockets closed, ``on_close`` called.
        Idempotent; needs no I/O, so it never blocks."""
        if self.closed:
            return
        self.closed = True
        self.reason = reason
        self.stats.timed_out = reason == "idle-timeout"
        self.hub.forget(self)
        for flow in (self.ab, self.ba):
            flow.drop_pipe()
        # Closing an fd removes it from the epoll set (we never dup it).
        for stream in (self.a, self.b):
            try:
                close_socket_now(stream)
            except Exception:
                logger.exception("closing %r failed", stream)
        if self._closed_event is not None:
            self._closed_event.set()
        if self.on_close is not None:
            try:
                self.on_close(self)
            except Exception:
                logger.exception("on_close callback of %r failed", self)


class Hub:
    """One task, one epoll instance, every plain-socket tunnel handed to it.

    Run it with ``await nursery.start(hub.serve)``; a
    :class:`~hijack.Server` runs one of its own on Linux (see
    :meth:`~hijack.Hijacked.hand_to_hub`). ``pipe_pool`` (default: the pool
    the task relay shares) lends the pipes.

    Resource handling: the epoll fd is opened by the constructor and closed
    when :meth:`serve` returns; every tunnel still open then is closed
    (reason ``"closed"``). A tunnel owns both its sockets from :meth:`add`
    on: the hub closes them when the tunnel ends, nobody else may.
    """

    def __init__(self, pipe_pool: _splice.PipePool | None = None) -> None:
        if _EPOLL is None or not _splice.available():
            raise RuntimeError("the relay hub needs Linux epoll and os.splice")
        self.pool = pipe_pool if pipe_pool is not None else _splice.DEFAULT_PIPE_POOL
        self._epoll = _EPOLL()
        self._fds: dict[int, HubTunnel] = {}
        self._open = 0
        self._heap: list[tuple[float, int, HubTunnel | _Flow]] = []
        self._dead_entries = 0  # heap entries of closed tunnels
        self._seq = itertools.count()
        self._ready: list[_Flow] = []
        self._wait_scope: trio.CancelScope | None = None
        self._serving = False
        self._stopped = False

    @property
    def open_tunnels(self) -> int:
        """Tunnels handed over and not ended yet."""
        return self._open

    def can_take(self, a: trio.abc.Stream, b: trio.abc.Stream) -> bool:
        """True if :meth:`add` would accept these two ends: both plain
        ``trio.SocketStream`` (or a ReplayStream/Hijacked over one), open,
        and the hub is serving."""
        if not self._serving or self._stopped:
            return False
        for stream in (a, b):
            sock = _splice.splice_socket(stream)
            if sock is None or sock.socket.fileno() < 0:
                return False
            if isinstance(stream, ReplayStream) and stream.closed:
                return False
        return True

    def add(
        self,
        a: trio.abc.Stream,
        b: trio.abc.Stream,
        *,
        idle_timeout: float | None = None,
        stats: RelayStats | None = None,
        on_close: TunnelCallback | None = None,
        pipe_pool: _splice.PipePool | None = None,
    ) -> HubTunnel:
        """Hand ``a`` and ``b`` to the hub; returns at once.

        Same contract as :func:`~hijack.relay`: read-ahead bytes of a
        ReplayStream end go first, EOF is passed on each way (half-close),
        ``idle_timeout`` closes a tunnel with no byte either way for that
        long, ``stats`` counts as bytes move. ``on_close(tunnel)`` is called
        once when it ends (from the hub task, or from whoever closed it); it
        must not block (it is not async) and its exceptions are logged.

        Raises ``ValueError`` (touching nothing: the caller still owns both
        ends) when :meth:`can_take` is False.
        """
        if not self.can_take(a, b):
            raise ValueError(
                "the hub takes two open plain trio.SocketStream ends (or a"
                f" ReplayStream over one) while serving; got {type(a).__name__}"
                f" and {type(b).__name__}"
            )
        sock_a, sock_b = _splice.splice_socket(a), _splice.splice_socket(b)
        assert sock_a is not None and sock_b is not None
        timeout = math.inf if idle_timeout is None else idle_timeout
        tunnel = HubTunnel(
            self,
            a,
            b,
            stats if stats is not None else RelayStats(),
            timeout,
            pipe_pool if pipe_pool is not None else self.pool,
            on_close,
        )
        fd_a, fd_b = sock_a.socket.fileno(), sock_b.socket.fileno()
        # Registering reports the current state as a first edge: writable
        # (replayed bytes go out), and readable if data already waits. The
        # batch of events it causes is handled after this call returns.
        self._epoll.register(fd_a, _REGISTER)
        try:
            self._epoll.register(fd_b, _REGISTER)
        except BaseException:
            self._epoll.unregister(fd_a)
            raise
        early_a = a.take_buffered() if isinstance(a, ReplayStream) else b""
        early_b = b.take_buffered() if isinstance(b, ReplayStream) else b""
        tunnel.ab = _Flow(tunnel, fd_a, sock_b.socket, early_a, True)
        tunnel.ba = _Flow(tunnel, fd_b, sock_a.socket, early_b, False)
        self._fds[fd_a] = self._fds[fd_b] = tunnel
        self._open += 1
        if timeout < math.inf:
            tunnel.deadline = trio.current_time() + timeout
            self._schedule(tunnel.deadline, tunnel)
        return tunnel

    async def relay(
        self,
        a: trio.abc.Stream,
        b: trio.abc.Stream,
        *,
        idle_timeout: float | None = None,
        stats: RelayStats | None = None,
        pipe_pool: _splice.PipePool | None = None,
    ) -> RelayStats:
        """:func:`~hijack.relay` through the hub: hand over, wait for the end.

        Resource handling as :func:`~hijack.relay`: both streams are closed
        on return, on ``ValueError`` (the hub cannot take them) and on
        cancellation (which closes the tunnel, then is re-raised)."""
        try:
            tunnel = self.add(
                a, b, idle_timeout=idle_timeout, stats=stats, pipe_pool=pipe_pool
            )
        except ValueError:
            for stream in (a, b):
                await trio.aclose_forcefully(stream)
            raise
        try:
            await tunnel.wait_closed()
        finally:
            tunnel.close()
        return tunnel.stats

    def close_all(self, reason: str = "closed") -> None:
        """Close every open tunnel now (the end of a shutdown grace)."""
        for tunnel in list(dict.fromkeys(self._fds.values())):
            tunnel.close(reason)

    def forget(self, tunnel: HubTunnel) -> None:
        """Called by a closing tunnel: drop it from the fd map."""
        for flow in (tunnel.ab, tunnel.ba):
            if self._fds.get(flow.src) is tunnel:
                del self._fds[flow.src]
        self._open -= 1
        if tunnel.timeout < math.inf:
            self._dead_entries += 1
            if self._dead_entries > 64 and 2 * self._dead_entries > len(self._heap):
                self._sweep()

    def _sweep(self) -> None:
        """Drop the heap entries of closed tunnels (and their flows)."""
        self._heap = [
            entry
            for entry in self._heap
            if not (entry[2].tunnel if isinstance(entry[2], _Flow) else entry[2]).closed
        ]
        heapq.heapify(self._heap)
        self._dead_entries = 0

    def park(self, flow: _Flow, until: float) -> None:
        """A rate-limited flow waits until ``until`` before reading again."""
        self._schedule(until, flow)

    def _schedule(self, when: float, item: HubTunnel | _Flow) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), item))
        scope = self._wait_scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when

    # -- the task --------------------------------------------------------

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Move bytes until cancelled. Closes every tunnel and the epoll fd
        on return."""
        if self._serving or self._stopped:
            raise RuntimeError("a Hub serves once")
        self._serving = True
        epoll = self._epoll
        try:
            task_status.started()
            while True:
                if self._ready:
                    await trio.lowlevel.checkpoint()
                else:
                    deadline = self._heap[0][0] if self._heap else math.inf
                    with trio.CancelScope(deadline=deadline) as scope:
                        self._wait_scope = scope
                        await trio.lowlevel.wait_readable(epoll.fileno())
                    self._wait_scope = None
                now = trio.current_time()
                self._dispatch(epoll.poll(0, MAX_EVENTS), now)
                self._run_ready(now)
                self._expire(now)
        finally:
            self._wait_scope = None
            self._stopped = True
            self.close_all()
            epoll.close()

    def _dispatch(self, events: list[tuple[int, int]], now: float) -> None:
        fds = self._fds
        for fd, mask in events:
            tunnel = fds.get(fd)
            if tunnel is None:
                continue  # closed earlier in this batch
            if fd == tunnel.ab.src:
                reading, writing = tunnel.ab, tunnel.ba
            else:
                reading, writing = tunnel.ba, tunnel.ab
            if mask & _WRITE and writing.waiting:
                writing.waiting = False
                self._turn(writing, now)
            if mask & _HANGUP:
                reading.hangup = True
            if mask & _READ and not (reading.waiting or reading.eof or reading.parked):
                self._turn(reading, now)
            if mask & _SOCKET_ERROR and not tunnel.closed:
                # A reset (or another socket error): readable bytes were
                # passed on above; the tunnel is over, as in relay().
                tunnel.close("error")

    def _turn(self, flow: _Flow, now: float) -> None:
        tunnel = flow.tunnel
        if tunnel.closed or flow.done:
            return
        try:
            more = flow.pump(now)
        except OSError as exc:
            logger.debug("%r ended: %r", tunnel, exc)
            tunnel.close("error")
            return
        except Exception:
            logger.exception("%r failed", tunnel)
            tunnel.close("error")
            return
        if more and not flow.queued:
            flow.queued = True
            self._ready.append(flow)
        elif tunnel.ab.done and tunnel.ba.done:
            tunnel.close("eof")

    def _run_ready(self, now: float) -> None:
        ready, self._ready = self._ready, []
        for flow in ready:
            flow.queued = False
            self._turn(flow, now)

    def _expire(self, now: float) -> None:
        # self._heap each time: closing a tunnel may sweep it into a new list.
        while self._heap and self._heap[0][0] <= now:
            _, _, item = heapq.heappop(self._heap)
            if isinstance(item, _Flow):  # a rate-limited flow may read again
                item.parked = False
                if not item.waiting:
                    self._turn(item, now)
                continue
            if item.closed:
                self._dead_entries = max(0, self._dead_entries - 1)
                continue
            if item.deadline > now:  # bytes moved since: look again later
                self._schedule(item.deadline, item)
            else:
                item.close("idle-timeout")
