"""One HTTP/2 connection's streams as trio byte streams, either side.

h2 (python-hyper's sans-I/O library) keeps the protocol state; this module
owns what it cannot: the transport, one writer at a time, and per stream a
receive buffer and the waits on flow control. The server loop (``_h2.py``)
and the test kit's HTTP/2 client (``testing.py``) are both built on it, so
the stream a handler hijacks and the stream a test holds are the same code.

Flow control is the backpressure (RFC 9113 5.2):

* Receiving: a stream's window is given back only as its reader consumes
  (``receive``), so a stream never buffers more than the window it
  advertised (``stream_window``). The connection's window is given back as
  DATA arrives: the per-stream windows already bound memory, and one slow
  stream must not stall the others.
* Sending: ``send`` waits until the peer's window (the stream's and the
  connection's) has room; a peer that opens none within ``write_timeout``
  gets its stream reset (CANCEL) and the sender a ``ClientDisconnected``.
  Every write goes out before ``send`` returns, so h2's outgoing buffer
  holds at most one frame per sender.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import math
import operator
from collections import deque
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import hyperframe.frame
import trio

from ._errors import ClientDisconnected

__all__ = ["H2Stream", "H2Wire", "StreamIO", "StreamState"]

RECEIVE_SIZE = 65536
#: How much more the peer may send on the whole connection than it has been
#: told to stop sending (given back as DATA arrives, see the module doc).
CONNECTION_WINDOW = 16 * 1024 * 1024

_STREAM_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


class StreamState(enum.Enum):
    """Where a stream is. OPEN: HTTP (a handler or a client reads and
    writes it as a request/response). HIJACKED: ``hijack()`` handed it to its
    owner; it stays counted until the owner closes it. CLOSED: both sides
    ended it, or one reset it."""

    OPEN = "open"
    HIJACKED = "hijacked"
    CLOSED = "closed"


class _Connection(h2.connection.H2Connection):
    """h2's connection with two RFC 9113 rules put back:

    * a stream over ``MAX_CONCURRENT_STREAMS`` is a stream error the loop
      answers (REFUSED_STREAM, 5.1.2), not a connection error that would
      kill every other stream (h2's choice);
    * a GOAWAY received lets the streams already open finish (6.8): h2
      closes its whole state machine on one, dropping their frames.
    """

    def _receive_goaway_frame(
        self, frame: hyperframe.frame.GoAwayFrame
    ) -> tuple[list[hyperframe.frame.Frame], list[h2.events.Event]]:
        event = h2.events.ConnectionTerminated()
        event.error_code = h2.errors._error_code_from_int(frame.error_code)
        event.last_stream_id = frame.last_stream_id
        event.additional_data = frame.additional_data or None
        return [], [event]

    @property
    def open_inbound_streams(self) -> int:
        super().open_inbound_streams  # noqa: B018 - h2 prunes closed streams here
        return 0


class H2Stream:
    """One stream: what was received and not read yet, and who waits.

    ``inbound`` holds ``(bytes, flow-controlled length)`` pairs: the window
    of a chunk is given back when the reader takes it."""

    __slots__ = (
        "_readable",
        "_writable",
        "end_received",
        "end_sent",
        "error",
        "id",
        "inbound",
        "inbound_size",
        "scope",
        "state",
        "unacked",
        "window",
        "wire",
    )

    def __init__(self, wire: H2Wire, stream_id: int) -> None:
        self.wire = wire
        self.id = stream_id
        self.state = StreamState.OPEN
        self.inbound: deque[tuple[bytes, int]] = deque()
        self.inbound_size = 0
        self.end_received = False
        self.end_sent = False
        #: Why the stream cannot be used any more (a reset, the connection
        #: gone); None while it can.
        self.error: str | None = None
        #: The handler's cancel scope (server side), cancelled on a reset.
        self.scope: trio.CancelScope | None = None
        self.unacked = 0
        #: The receive window this stream keeps open (given back in halves).
        self.window = wire.stream_window
        self._readable = trio.Event()
        self._writable = trio.Event()

    def __repr__(self) -> str:
        return f"<H2Stream {self.id} {self.state.value}>"

    @property
    def done(self) -> bool:
        """Both directions ended (or the stream was reset)."""
        return self.error is not None or (self.end_received and self.end_sent)

    def wake_readers(self) -> None:
        self._readable.set()
        self._readable = trio.Event()

    def wake_writers(self) -> None:
        self._writable.set()
        self._writable = trio.Event()

    def _feed(self, data: bytes, flow: int) -> None:
        self.inbound.append((data, flow))
        self.inbound_size += len(data)
        self.wake_readers()

    def fail(self, error: str) -> None:
        if self.error is None:
            self.error = error
        self.wake_readers()
        self.wake_writers()

    async def receive(self, max_bytes: int | None, deadline: float = math.inf) -> bytes:
        """The next bytes received (at most ``max_bytes``), b"" at the end of
        the peer's side; ``ClientDisconnected`` on a reset, ``trio.TooSlowError``
        past ``deadline``. Gives the window of what it returns back."""
        while not self.inbound:
            if self.end_received:
                await trio.lowlevel.checkpoint()
                return b""
            if self.error is not None:
                raise ClientDisconnected(self.error)
            event = self._readable
            with trio.move_on_at(deadline):
                await event.wait()
            if not event.is_set():
                raise trio.TooSlowError
        data, flow = self.inbound[0]
        if max_bytes is not None and max_bytes < len(data):
            # Give back the window of what is taken; the rest keeps its share.
            taken = min(flow, max_bytes)
            self.inbound[0] = (data[max_bytes:], flow - taken)
            data, flow = data[:max_bytes], taken
        else:
            self.inbound.popleft()
        self.inbound_size -= len(data)
        await self.wire.give_back(self, flow)
        return data

    def take_all(self) -> bytes:
        """Everything received and not read yet (its window given back with
        the next ``give_back``)."""
        data = b"".join(chunk for chunk, _ in self.inbound)
        self.unacked += sum(flow for _, flow in self.inbound)
        self.inbound.clear()
        self.inbound_size = 0
        return data

    async def wait_writable(self, deadline: float) -> bool:
        """Wait for the peer to open its window; False past ``deadline``."""
        event = self._writable
        with trio.move_on_at(deadline):
            await event.wait()
        return event.is_set()


class StreamIO(trio.abc.HalfCloseableStream):
    """A stream's bytes as a trio ``HalfCloseableStream``: ``receive_some``
    yields DATA (the window given back as it is read), ``send_all`` waits
    for the peer's window, ``send_eof`` is END_STREAM, ``aclose`` ends the
    stream (END_STREAM; then RST_STREAM NO_ERROR if the peer is still
    sending, as closing a socket with unread input resets it) or, when
    cancelled, resets it (CANCEL)."""

    def __init__(self, stream: H2Stream) -> None:
        self._stream = stream
        stream.wire.on_owned(stream, True)
        self._closed = False
        self._eof_sent = False
        self._receiving = False
        self._sending = False
        # Calls blocked in this stream: aclose() ends them.
        self._waiters: set[trio.CancelScope] = set()

    @property
    def h2_stream(self) -> H2Stream:
        return self._stream

    @contextlib.contextmanager
    def _closable(self, sending: bool) -> Iterator[None]:
        """Run a blocking call, one sender and one receiver at a time; a
        concurrent ``aclose`` turns it into ``ClosedResourceError`` (trio's
        contract for a closed stream)."""
        busy = "_sending" if sending else "_receiving"
        if getattr(self, busy):
            raise trio.BusyResourceError(f"another task is {busy[1:]}")
        setattr(self, busy, True)
        try:
            with self._cancelled_by_close():
                yield
        finally:
            setattr(self, busy, False)

    @contextlib.contextmanager
    def _cancelled_by_close(self) -> Iterator[None]:
        scope = trio.CancelScope()
        self._waiters.add(scope)
        try:
            with scope:
                yield
        finally:
            self._waiters.discard(scope)
        if scope.cancelled_caught:
            raise trio.ClosedResourceError("the stream was closed")

    def _check_open(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("stream is closed")

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None:
            max_bytes = operator.index(max_bytes)
            if max_bytes < 1:
                raise ValueError("max_bytes must be >= 1")
        self._check_open()
        stream = self._stream
        with self._closable(sending=False):
            try:
                return await stream.receive(max_bytes)
            except ClientDisconnected as exc:
                raise trio.BrokenResourceError(str(exc)) from None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._check_open()
        if self._eof_sent:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        with self._closable(sending=True):
            try:
                await self._stream.wire.send(self._stream, bytes(data), end=False)
            except ClientDisconnected as exc:
                raise trio.BrokenResourceError(str(exc)) from None

    async def wait_send_all_might_not_block(self) -> None:
        self._check_open()
        stream = self._stream
        with self._closable(sending=True):
            while (
                stream.error is None and stream.wire.window(stream) <= 0
            ):  # pragma: no cover - only with a closed window
                await stream.wait_writable(math.inf)
            await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        self._check_open()
        if self._eof_sent:
            await trio.lowlevel.checkpoint()
            return
        self._eof_sent = True
        with self._closable(sending=True):
            try:
                await self._stream.wire.send(self._stream, b"", end=True)
            except ClientDisconnected as exc:
                raise trio.BrokenResourceError(str(exc)) from None

    async def aclose(self) -> None:
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        for scope in self._waiters:
            scope.cancel()
        stream = self._stream
        stream.wire.on_owned(stream, False)
        try:
            await stream.wire.finish(stream)
        except BaseException:
            stream.wire.reset(stream, h2.errors.ErrorCodes.CANCEL)
            stream.wire.flush_soon()
            raise
        await trio.lowlevel.checkpoint()  # trio: aclose is a checkpoint


class H2Wire:
    """The transport and h2's state for one connection, either side.

    Subclasses handle what opens streams (``on_event`` gets every h2 event
    this class does not consume itself: requests, responses, GOAWAY...)."""

    def __init__(
        self,
        transport: trio.abc.Stream,
        *,
        client_side: bool,
        write_timeout: float | None,
        stream_window: int = 65535,
    ) -> None:
        self.transport = transport
        config = h2.config.H2Configuration(
            client_side=client_side,
            header_encoding=None,
            validate_inbound_headers=True,
            normalize_inbound_headers=True,
        )
        self.h2 = _Connection(config=config)
        self.streams: dict[int, H2Stream] = {}
        self.write_timeout = math.inf if write_timeout is None else write_timeout
        self.stream_window = stream_window
        self.broken = False
        self._write_lock = trio.StrictFIFOLock()
        self._connection_unacked = 0
        self._flush_wanted = trio.Event()
        self._raw = b""

    def queue_goaway(self, last_stream_id: int, code: int) -> None:
        """A GOAWAY that h2 does not see: h2 closes its state machine when it
        sends one, while a graceful GOAWAY lets the open streams finish."""
        frame = hyperframe.frame.GoAwayFrame(0)
        frame.last_stream_id = last_stream_id
        frame.error_code = code
        self._raw += frame.serialize()

    async def run_flusher(self) -> None:
        """Send what was queued by code that could not wait (a reset from a
        cancelled close): run in the connection's nursery."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted = trio.Event()
            try:
                await self.flush()
            except ClientDisconnected:
                return

    def flush_soon(self) -> None:
        self._flush_wanted.set()

    # -- writing -------------------------------------------------------------

    async def flush(self) -> None:
        """Send what h2 has queued, within ``write_timeout``; a failure marks
        the connection broken and raises ``ClientDisconnected``."""
        if self.broken:
            raise ClientDisconnected("the connection is gone")
        async with self._write_lock:
            data = self._raw + self.h2.data_to_send()
            self._raw = b""
            if not data:
                return
            # Shielded: a write cut in the middle would leave half a frame
            # and break every stream; write_timeout bounds it instead.
            deadline = trio.current_time() + self.write_timeout
            with trio.CancelScope(deadline=deadline, shield=True) as scope:
                try:
                    await self.transport.send_all(data)
                except _STREAM_GONE as exc:
                    self._break("the peer closed the connection")
                    raise ClientDisconnected("the peer closed the connection") from exc
            if scope.cancelled_caught:
                self._break("the peer read nothing for write_timeout")
                raise ClientDisconnected("the peer read nothing for write_timeout")

    def _break(self, why: str) -> None:
        self.broken = True
        for stream in self.streams.values():
            stream.fail(why)

    def window(self, stream: H2Stream) -> int:
        try:
            return self.h2.local_flow_control_window(stream.id)
        except h2.exceptions.StreamClosedError:
            return 0

    async def send(self, stream: H2Stream, data: bytes, *, end: bool) -> None:
        """Send ``data`` (then END_STREAM if ``end``) as the peer's window
        allows; ``ClientDisconnected`` if the stream or connection is gone or
        the window stays shut for ``write_timeout``."""
        view = memoryview(data)
        stalled_since: float | None = None
        while True:
            if stream.error is not None:
                raise ClientDisconnected(stream.error)
            if not view:
                if end:
                    stream.end_sent = True
                    self._send_frame(lambda: self.h2.end_stream(stream.id), stream)
                    await self.flush()
                    self._maybe_done(stream)
                else:
                    await trio.lowlevel.checkpoint()
                return
            room = min(self.window(stream), self.h2.max_outbound_frame_size)
            if room <= 0:
                # Counted from when the window shut, not from the last
                # WINDOW_UPDATE: one for another stream (or of the connection)
                # must not keep this one waiting for ever.
                if stalled_since is None:
                    stalled_since = trio.current_time()
                    await self.flush()  # what is queued (a head) goes out now
                    continue  # the window may have opened meanwhile
                deadline = stalled_since + self.write_timeout
                if not await stream.wait_writable(deadline):
                    self.reset(stream, h2.errors.ErrorCodes.CANCEL)
                    await self.flush()
                    raise ClientDisconnected(
                        "the peer opened no flow-control window for write_timeout"
                    )
                continue
            stalled_since = None
            chunk, view = view[:room], view[room:]
            last = end and not view
            if last:
                stream.end_sent = True
            self._send_frame(
                functools.partial(self.h2.send_data, stream.id, chunk, end_stream=last),
                stream,
            )
            await self.flush()
            if last:
                self._maybe_done(stream)
                return

    def _send_frame(self, queue: Any, stream: H2Stream) -> None:
        try:
            queue()
        except h2.exceptions.StreamClosedError:
            stream.fail("the stream was closed")
            raise ClientDisconnected("the stream was closed") from None
        except h2.exceptions.ProtocolError as exc:
            stream.fail(str(exc))
            raise ClientDisconnected(f"the stream cannot send: {exc}") from None

    def reset(self, stream: H2Stream, code: int) -> None:
        """Reset ``stream`` (queued; the next flush sends it)."""
        if stream.error is None and not stream.done:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.reset_stream(stream.id, code)
        stream.fail("the stream was reset")
        self._forget(stream)

    async def finish(self, stream: H2Stream) -> None:
        """The stream's local owner closed it: END_STREAM if not sent, and
        if the peer is still sending, RST_STREAM NO_ERROR (nobody will read
        what it sends: as closing a socket with unread input resets it)."""
        if stream.error is None and not stream.end_sent:
            await self.send(stream, b"", end=True)
        if stream.error is None and not stream.end_received:
            self.reset(stream, h2.errors.ErrorCodes.NO_ERROR)
            with contextlib.suppress(ClientDisconnected):
                await self.flush()
        else:
            self.discard(stream)

    def discard(self, stream: H2Stream) -> None:
        """Nobody reads ``stream`` any more: give back its window, drop what
        comes (the stream is CLOSED for its users, still in the table);
        forget it once the peer ended its side."""
        stream.take_all()
        self._give_back_now(stream)
        stream.state = StreamState.CLOSED
        if stream.done or stream.end_received or stream.error is not None:
            self._forget(stream)
        else:
            stream.scope = None
            self.on_discarding(stream)

    def on_discarding(self, stream: H2Stream) -> None:
        """Hook: ``stream`` is kept only to discard what the peer sends."""

    def _maybe_done(self, stream: H2Stream) -> None:
        if stream.done and stream.state is not StreamState.OPEN:
            self._forget(stream)

    def _forget(self, stream: H2Stream) -> None:
        stream.state = StreamState.CLOSED
        if self.streams.pop(stream.id, None) is not None:
            self.on_stream_closed(stream)

    def on_stream_closed(self, stream: H2Stream) -> None:
        """Hook: ``stream`` left the table."""

    def on_owned(self, stream: H2Stream, owned: bool) -> None:
        """Hook: a :class:`StreamIO` took ``stream`` over (``owned``), or
        its owner closed it."""

    # -- reading -------------------------------------------------------------

    async def give_back(self, stream: H2Stream, flow: int) -> None:
        """``flow`` bytes of ``stream`` were consumed: reopen its window
        once half of it is used (one WINDOW_UPDATE per half window)."""
        stream.unacked += flow
        if stream.unacked >= stream.window // 2:
            self._give_back_now(stream)
            # A failure reaches the reader with its next receive.
            with contextlib.suppress(ClientDisconnected):
                await self.flush()
        else:
            await trio.lowlevel.checkpoint()

    def widen(self, stream: H2Stream, window: int) -> None:
        """Keep ``window`` bytes open for ``stream`` from now on (a tunnel
        needs more than a request body: one window per round trip is its
        bandwidth). Queued; the next flush sends it."""
        if window > stream.window and not stream.end_received and not stream.error:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.increment_flow_control_window(
                    window - stream.window, stream_id=stream.id
                )
                stream.window = window

    def _give_back_now(self, stream: H2Stream) -> None:
        n, stream.unacked = stream.unacked, 0
        if n and not stream.end_received and stream.error is None:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.h2.increment_flow_control_window(n, stream_id=stream.id)

    def on_event(self, event: h2.events.Event) -> None:
        """Hook: an event this class does not handle itself (a request, a
        response head, GOAWAY...), in order with the stream events, so a
        stream exists before its first DATA is fed."""

    def receive_events(self, data: bytes) -> None:
        """Feed ``data`` to h2 and handle its events in order. Raises h2's
        ``ProtocolError`` (h2 queued the GOAWAY)."""
        others = self
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                self._on_data(event)
            elif isinstance(event, h2.events.StreamEnded):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.end_received = True
                    stream.wake_readers()
                    if stream.state is not StreamState.OPEN or stream.done:
                        self._maybe_done(stream)
            elif isinstance(event, h2.events.StreamReset):
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    stream.fail(f"the peer reset the stream ({event.error_code!r})")
                    if stream.scope is not None and stream.state is StreamState.OPEN:
                        stream.scope.cancel()
                    self._forget(stream)
                others.on_event(event)
            elif isinstance(event, h2.events.WindowUpdated):
                if event.stream_id:
                    stream = self.streams.get(event.stream_id)
                    if stream is not None:
                        stream.wake_writers()
                else:
                    for stream in list(self.streams.values()):
                        stream.wake_writers()
            elif isinstance(event, h2.events.RemoteSettingsChanged):
                for stream in list(self.streams.values()):
                    stream.wake_writers()
                others.on_event(event)
            else:
                others.on_event(event)

    def _on_data(self, event: h2.events.DataReceived) -> None:
        flow = event.flow_controlled_length or 0
        # The connection's window comes back at once (see the module doc).
        self._connection_unacked += flow
        if self._connection_unacked >= CONNECTION_WINDOW // 4:
            self.h2.increment_flow_control_window(self._connection_unacked)
            self._connection_unacked = 0
        stream = self.streams.get(event.stream_id)
        data = event.data or b""
        if stream is None or stream.state is StreamState.CLOSED:
            # Nobody reads it: the stream's window comes back too.
            if stream is not None and not stream.end_received and flow:
                with contextlib.suppress(h2.exceptions.ProtocolError):
                    self.h2.increment_flow_control_window(flow, stream_id=stream.id)
            if stream is not None:
                self.on_discarded(stream, len(data))
            return
        stream._feed(data, flow)

    def on_discarded(self, stream: H2Stream, size: int) -> None:
        """Hook: ``size`` bytes arrived for a stream nobody reads."""

    def fail_all(self, why: str) -> None:
        for stream in list(self.streams.values()):
            stream.fail(why)
            if stream.scope is not None and stream.state is StreamState.OPEN:
                stream.scope.cancel()
