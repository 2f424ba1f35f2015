"""The WebSocket: hijack's message API over a `websockets` Sans-I/O protocol.

The protocol object (``websockets.protocol.Protocol``: a ``ServerProtocol``
after :func:`accept_websocket`, or a ``ClientProtocol`` for a client-side
WebSocket) parses and serializes frames (masking in C), inflates within
``max_message_size``, answers every ping with its pong and runs the closing
handshake. This module owns what a Sans-I/O layer cannot: the stream, the
tasks, timeouts, and assembling frames into ``str``/``bytes`` messages.

Reading model: there is no background reader. Whichever task waits on the
socket (``receive``, ``ping`` or ``close``) reads it for everyone, one at a
time; the replies the protocol owes (pongs, the close echo, EOF) are written
as frames are read. ``async with ws`` adds one background task that watches
the server's graceful shutdown and, if enabled, sends keepalive pings (see
``_keepalive``); neither reads the socket itself except through ``ping``.

Cancellation: cancelling ``receive`` loses nothing. Cancelling ``send`` (or
``ping``, ``close``) in the middle of a write may leave half a frame on the
wire, so the connection is then aborted (close code 1006).
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import struct
from collections import deque
from types import TracebackType
from typing import cast

import trio
from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import BINARY, CONT, PONG, TEXT, CloseCode, Frame, Opcode
from websockets.protocol import OPEN, SERVER, Protocol, Side, State

from ... import Connection, Headers, ReplayStream
from ._errors import ConnectionClosed
from ._keepalive import keep_alive
from ._protocol import ServerProtocol
from ._send_lock import SendLock

try:  # websockets' C helper, as its protocol uses when built
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a pure-Python install
    from websockets.utils import apply_mask

MiB = 1024 * 1024
RECEIVE_SIZE = 65536
# A read that fills its buffer means a big message is streaming in: the
# next read asks for 4x more, up to this. Fewer, bigger appends to the
# protocol's buffer, which copies on growth (measured with 1 MiB messages:
# 28% of the server's CPU in that append with 64 KiB reads).
MAX_RECEIVE_SIZE = 1024 * 1024
# How many complete messages ping() may queue for receive() while it reads
# the socket waiting for its pong and no task is receiving.
MAX_QUEUE = 32
# Replies (pongs, mostly) the reader may queue while a sender holds the
# lock because the peer does not read. Past this the reader waits for the
# sender, so a peer that floods pings and never reads cannot grow memory.
MAX_OWED = 64 * 1024
# Keepalive defaults, as in `websockets`: well under the idle timeouts of
# the middleboxes on the way (nginx 60 s, Cloudflare 100 s, AWS NLB 350 s).
PING_INTERVAL = 20.0
PING_TIMEOUT = 20.0

NORMAL_CLOSURE = 1000
GOING_AWAY = 1001
NO_STATUS = 1005
ABNORMAL_CLOSURE = 1006
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
# Codes an endpoint may put in a close frame (RFC 6455 7.4, IANA registry).
_SENDABLE = frozenset({1000, 1001, 1002, 1003, *range(1007, 1015)})
# Closes that end ``async for message in ws`` quietly.
_QUIET = frozenset({NORMAL_CLOSURE, GOING_AWAY, NO_STATUS})

# The protocol logs each connection's end at INFO; hijack's own log is
# "hijack.websocket", this child lets users quiet the protocol's part.
protocol_logger = logging.getLogger("hijack.websocket.protocol")
_Utf8Decoder = codecs.getincrementaldecoder("utf-8")


def _frame_head(first: int, payload: bytes | bytearray | memoryview) -> bytes:
    """An unmasked frame's header (RFC 6455 5.2) for a payload of 126
    bytes or more: ``first`` is FIN, RSV and opcode."""
    length = len(payload)
    if length < 65536:
        return struct.pack("!BBH", first, 126, length)
    return struct.pack("!BBQ", first, 127, length)


class WebSocket:
    """One WebSocket connection.

    ``await ws.send(text_or_bytes)``, ``await ws.receive()`` (``str`` for a
    text message, ``bytes`` for binary), ``async for message in ws`` (ends
    quietly on a normal close: 1000, 1001, 1005), ``await ws.ping()``,
    ``await ws.close()``. One task may send while another receives. Every
    call on a closed WebSocket raises :class:`ConnectionClosed`.

    Attributes: ``connection`` (the :class:`hijack.Connection`; a
    client-side WebSocket has none), ``subprotocol``, ``extensions`` (the negotiated
    ones, e.g. ``["permessage-deflate"]``) and ``path``, ``query``,
    ``headers`` of the handshake request. Usually made by
    :func:`accept_websocket`; build one by hand over any stream whose
    handshake is done, passing the protocol object in the OPEN state: a
    ``ServerProtocol`` (the default) or a ``ClientProtocol`` (both from this
    package: `websockets`' own, honouring a close between fragments) for
    the client side of a connection (same API; the client masks its frames
    and lets the server close TCP first).

    ``messages_received`` / ``messages_sent``: whole messages taken by
    ``receive()`` and sent by ``send()`` so far.

    ``ping_interval`` / ``ping_timeout`` (seconds, None to disable): inside
    ``async with ws``, a ping every ``ping_interval``; a pong missing after
    ``ping_timeout`` fails the connection with 1011.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        connection: Connection | None = None,
        *,
        protocol: Protocol | None = None,
        subprotocol: str | None = None,
        max_message_size: int = MiB,
        close_timeout: float = 5.0,
        ping_interval: float | None = PING_INTERVAL,
        ping_timeout: float | None = PING_TIMEOUT,
        path: str = "/",
        query: str = "",
        headers: Headers | None = None,
    ) -> None:
        if max_message_size < 1:
            raise ValueError("max_message_size must be >= 1")
        self._connection = connection
        self.subprotocol = subprotocol
        self.path = path
        self.query = query
        self.headers = headers if headers is not None else Headers([])
        self._stream = stream
        self.messages_received = 0
        self.messages_sent = 0
        if protocol is None:
            protocol = ServerProtocol(
                state=OPEN, max_size=max_message_size, logger=protocol_logger
            )
        if protocol.state is not OPEN:
            raise ValueError("the protocol must be OPEN: do the handshake first")
        self._protocol = protocol
        self.extensions = [str(extension.name) for extension in protocol.extensions]
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._shutdown = (
            connection.shutdown_requested if connection is not None else trio.Event()
        )
        self._send_lock = SendLock()
        self._messages: deque[str | bytes] = deque()
        # The message being assembled from fragments (RFC 6455 5.4).
        self._fragments: list[str | bytes] = []
        self._decoder: codecs.IncrementalDecoder | None = None
        self._pings: dict[bytes, trio.Event] = {}
        # Bytes the protocol owes the peer, in order; b"" means half-close.
        self._owed: deque[bytes] = deque()
        # Set once: the close that ends this WebSocket (ours, theirs, 1006).
        self._close: tuple[int, str] | None = None
        self._transport_closed = False
        self._reading = False
        self._progress = trio.Event()
        self._waiting = 0  # tasks in _wait_for_progress
        self._receive_size = RECEIVE_SIZE
        # Frames that came with the handshake may already be in the protocol.
        self._handle_events()
        # The fast path (see _ingest): whole unfragmented data frames are
        # parsed here, everything else by the protocol. It needs a protocol
        # without extensions (deflate decodes in the protocol) that logs no
        # frames, and it must know where the protocol's parser stands.
        extensions = protocol.extensions
        # permessage-deflate, the one extension the fast path applies itself
        # (through the extension object: its zlib streams stay the same).
        self._deflate = (
            extensions[0]
            if len(extensions) == 1 and type(extensions[0]) is PerMessageDeflate
            else None
        )
        self._fast = (
            (not extensions or self._deflate is not None)
            and not protocol.debug
            and getattr(protocol, "max_fragment_size", None) is None
            and hasattr(protocol, "current_size")
            and hasattr(protocol, "reader")
        )
        # The first header byte of a fast frame, under this mask, is 0x81
        # (text) or 0x82 (binary): FIN, no RSV bit but RSV1 with deflate.
        self._first_mask = 0xFF if self._deflate is None else 0xBF
        self._mask_bit = 0x80 if protocol.side is SERVER else 0
        self._max_fast: int | None = getattr(protocol, "max_message_size", None)
        # A server's frames are not masked: it writes its data frames itself.
        self._fast_send = self._fast and protocol.side is SERVER
        # Bytes of the frame the protocol is parsing that it has yet to
        # get; 0 at a frame boundary, -1 while the protocol parses
        # everything (no fast path, or where its parser stands is unknown).
        self._feed_left = 0 if self._fast and self._protocol_at_boundary() else -1
        # The start of a frame header cut by a read (at most 13 bytes).
        self._inbox = b""
        self._watcher: (
            tuple[contextlib.AbstractAsyncContextManager[trio.Nursery], trio.Nursery]
            | None
        ) = None

    def __repr__(self) -> str:
        state = "open" if self._close is None else f"closed {self._close[0]}"
        where = "client" if self._protocol.side is Side.CLIENT else "server"
        connection = self._connection
        ident = "" if connection is None else f" connection={connection.id}"
        return f"<WebSocket {where}{ident} {state}>"

    @property
    def connection(self) -> Connection:
        """The :class:`hijack.Connection` this WebSocket was accepted on.
        A client-side WebSocket has none: RuntimeError (typed as always
        there, since every server handler has one)."""
        if self._connection is None:
            raise RuntimeError("a client-side WebSocket has no hijack Connection")
        return self._connection

    @property
    def closed(self) -> bool:
        """True once closing started (either side) or the connection broke."""
        return self._close is not None

    @property
    def close_code(self) -> int | None:
        """The close code once closing started (ours or the peer's), else None."""
        return None if self._close is None else self._close[0]

    @property
    def close_reason(self) -> str | None:
        """The close reason once closing started, else None."""
        return None if self._close is None else self._close[1]

    # -- receiving -------------------------------------------------------------

    async def receive(self) -> str | bytes:
        """The next message. Raises :class:`ConnectionClosed` once the
        connection is closing and every message received before is taken.
        Cancelling it loses nothing."""
        while True:
            if self._messages:
                message = self._messages.popleft()
                self.messages_received += 1
                self._notify()  # a ping() may wait for queue room
                return message
            if self._close is None and self._shutdown.is_set():
                await self.close(GOING_AWAY, "server shutting down")
            if self._close is not None:
                raise ConnectionClosed(*self._close)
            if self._reading or self._owed:
                await self._read_step(receiving=True)
                continue
            # _read_step's common case, one coroutine less per message: no
            # other reader, no replies owed.
            self._reading = True
            try:
                await self._pump()
            finally:
                self._reading = False
                if self._waiting:
                    self._notify()

    def __aiter__(self) -> WebSocket:
        return self

    async def __anext__(self) -> str | bytes:
        try:
            return await self.receive()
        except ConnectionClosed as exc:
            if exc.code in _QUIET:
                raise StopAsyncIteration from None
            raise

    def _notify(self) -> None:
        """Wake the tasks waiting for a reader's progress."""
        if self._waiting:
            self._progress.set()
            self._progress = trio.Event()

    async def _wait_for_progress(self) -> None:
        self._waiting += 1
        try:
            await self._progress.wait()
        finally:
            self._waiting -= 1

    async def _read_step(self, *, receiving: bool) -> None:
        """Read the socket once, or wait while another task does."""
        queue_full = len(self._messages) >= MAX_QUEUE
        if self._reading or (not receiving and self._close is None and queue_full):
            await self._wait_for_progress()
            return
        self._reading = True
        try:
            if self._send_lock.locked() and sum(map(len, self._owed)) > MAX_OWED:
                async with self._send_lock:  # the sender writes what is owed
                    await self._flush_quietly()
            await self._pump()
        finally:
            self._reading = False
            self._notify()

    async def _pump(self) -> None:
        # Replies owed from frames handled earlier (frames that came with the
        # handshake, or a reply a cancelled reader did not finish) go first.
        if self._owed or self._close is not None:
            await self._reply()
            if self._transport_closed:
                return
        size = self._receive_size
        try:
            data = await self._stream.receive_some(size)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if len(data) == size:
            self._receive_size = min(4 * size, MAX_RECEIVE_SIZE)
        elif size != RECEIVE_SIZE and len(data) < RECEIVE_SIZE:
            self._receive_size = RECEIVE_SIZE
        if not data:
            await self._close_transport("connection lost")
            return
        self._ingest(data)
        if self._owed or self._close is not None:
            await self._reply()

    async def _reply(self) -> None:
        """Write what the peer's frames call for (pongs, the close echo,
        EOF), unless a sender holds the lock: it writes them once its own
        write is done. Waiting for it here could deadlock a reader behind a
        sender that waits for the peer to read while the peer waits for us to
        read."""
        if self._send_lock.locked() or not self._owes_reply():
            return
        async with self._send_lock:
            await self._flush_quietly()

    def _ingest(self, data: bytes | bytearray) -> None:
        """Take bytes read from the peer.

        The common frame, a whole unfragmented text or binary message with
        no reserved bits, is parsed here from the buffer (unmasked in C, as
        the protocol does) and becomes a message at once: no parser
        generator, frame object or event list per message. Every other
        frame (control frames, fragments, frames cut by a read, anything
        the protocol must judge or fail) goes to the protocol, whole or
        byte for byte as it arrives, in order; a fast frame is taken only
        while the protocol stands at a frame boundary, OPEN and outside a
        fragmented message, so both parse one stream.
        """
        if self._inbox:
            data = self._inbox + data
            self._inbox = b""
        protocol = self._protocol
        end = len(data)
        pos = 0
        while pos < end:
            left = self._feed_left
            if left:
                if left < 0 or protocol.state is not OPEN:
                    self._feed(data[pos:] if pos else data)
                    return
                stop = min(end, pos + left)
                self._feed(data[pos:stop] if pos or stop < end else data)
                self._feed_left = left - (stop - pos)
                pos = stop
                continue
            # A frame boundary: read the header (RFC 6455 5.2).
            if end - pos < 2:
                break
            first, second = data[pos], data[pos + 1]
            length = second & 0x7F
            head = 2
            if length == 126:
                head = 4
                if end - pos >= 4:
                    length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                head = 10
                if end - pos >= 10:
                    length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            if second & 0x80:
                head += 4
            if end - pos < head:
                break
            frame_end = pos + head + length
            kind = first & self._first_mask
            if (
                (kind == 0x82 or kind == 0x81)  # FIN, binary or text
                and second & 0x80 == self._mask_bit
                and frame_end <= end
                and self._close is None
                and protocol.current_size is None
                and protocol.state is OPEN
                and (self._max_fast is None or length <= self._max_fast)
            ):
                if self._mask_bit:
                    view = memoryview(data)
                    mask = bytes(view[pos + head - 4 : pos + head])
                    payload = apply_mask(view[pos + head : frame_end], mask)
                else:
                    payload = bytes(data[pos + head : frame_end])
                pos = frame_end
                if first & 0x40:  # compressed (permessage-deflate)
                    inflated = self._inflate(kind, payload)
                    if inflated is None:
                        self._feed_left = -1  # the protocol failed: it discards
                        continue
                    payload = inflated
                if kind == 0x82:
                    self._messages.append(payload)
                elif not self._take_text(payload):
                    self._feed_left = -1  # the protocol failed: it discards
            else:
                # The protocol parses this frame (and judges it).
                stop = min(end, frame_end)
                self._feed(data[pos:stop] if pos or stop < end else data)
                self._feed_left = frame_end - stop
                pos = stop
        if pos < end:
            self._inbox = bytes(data[pos:])

    def _inflate(self, kind: int, payload: bytes) -> bytes | None:
        """A whole compressed message's payload inflated by the protocol's
        deflate extension, or None if it failed the connection for it (as
        the protocol's parser does: 1002 for a bad stream, 1009 past the
        limit)."""
        assert self._deflate is not None
        opcode = Opcode.TEXT if kind == 0x81 else Opcode.BINARY
        protocol = self._protocol
        try:
            frame = self._deflate.decode(
                Frame(opcode, payload, True, True), max_size=self._max_fast
            )
        except ProtocolError as exc:
            protocol.fail(CloseCode.PROTOCOL_ERROR, str(exc))
        except PayloadTooBig as exc:
            exc.set_current_size(None)
            protocol.fail(CloseCode.MESSAGE_TOO_BIG, str(exc))
        except Exception:
            protocol.logger.error("parser failed", exc_info=True)
            protocol.fail(CloseCode.INTERNAL_ERROR)
        else:
            return bytes(frame.data)
        self._handle_events()  # the close frame goes out, _close is set
        return None

    def _take_text(self, payload: bytes) -> bool:
        """A whole text message from the fast path; False if it is not
        UTF-8 (the protocol then fails the connection with 1007)."""
        try:
            self._messages.append(payload.decode("utf-8"))
        except UnicodeDecodeError as exc:
            self._fail_utf8(exc)
            self._owed.extend(self._protocol.data_to_send())
            return False
        return True

    def _fail_utf8(self, exc: UnicodeDecodeError) -> None:
        self._fragments.clear()
        self._protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in text")
        self._close = (CloseCode.INVALID_DATA, f"invalid UTF-8: {exc.reason}")

    def _feed(self, data: bytes | bytearray) -> None:
        """Hand bytes to the protocol and take its events."""
        self._protocol.receive_data(data)
        self._handle_events()
        if self._feed_left < 0 and self._fast and self._protocol_at_boundary():
            self._feed_left = 0

    def _protocol_at_boundary(self) -> bool:
        """True if the protocol's parser waits for the first byte of a
        frame, with nothing buffered (its generator sits in ``at_eof``)."""
        protocol = self._protocol
        if protocol.state is not OPEN or protocol.reader.buffer:
            return False
        # The innermost generator the parser waits in (a server's parse()
        # delegates to Protocol.parse(), which waits in at_eof()).
        waiting_in = protocol.parser
        for _ in range(8):
            inner = getattr(waiting_in, "gi_yieldfrom", None)
            if inner is None:
                break
            waiting_in = inner
        return getattr(waiting_in, "__name__", None) == "at_eof"

    def _handle_events(self) -> None:
        protocol = self._protocol
        # Past the opening handshake the protocol's events are all frames.
        for frame in cast("list[Frame]", protocol.events_received()):
            opcode = frame.opcode
            if opcode is TEXT or opcode is BINARY or opcode is CONT:
                if self._close is None and not self._on_data(frame):
                    break  # the protocol failed: nothing after counts
            elif opcode is PONG:
                self._on_pong(bytes(frame.data))
            # Pings are answered by the protocol; a close moves its state.
        self._owed.extend(protocol.data_to_send())
        if self._close is None and protocol.state is not OPEN:
            self._close = self._protocol_close()

    def _protocol_close(self) -> tuple[int, str]:
        """The close that started the protocol's closing handshake."""
        protocol = self._protocol
        received, sent = protocol.close_rcvd, protocol.close_sent
        if received is not None and (sent is None or protocol.close_rcvd_then_sent):
            return received.code, received.reason
        if sent is not None:  # the protocol failed the connection
            return sent.code, sent.reason
        return ABNORMAL_CLOSURE, "connection lost"

    def _on_data(self, frame: Frame) -> bool:
        """Assemble a message; False if the protocol had to fail (bad UTF-8)."""
        if frame.opcode is not CONT:
            if frame.opcode is TEXT:
                self._decoder = _Utf8Decoder()
            else:
                self._decoder = None
        data = frame.data
        try:
            if self._decoder is not None:
                piece: str | bytes = self._decoder.decode(data, frame.fin)
            else:
                piece = data if isinstance(data, bytes) else bytes(data)
        except UnicodeDecodeError as exc:
            # Each frame is checked as it arrives (Autobahn 6.x: fail fast).
            self._fail_utf8(exc)
            return False
        if not frame.fin:
            self._fragments.append(piece)
        elif not self._fragments:
            self._messages.append(piece)
        else:
            self._fragments.append(piece)
            if isinstance(piece, str):
                message: str | bytes = "".join(self._fragments)  # type: ignore[arg-type]
            else:
                message = b"".join(self._fragments)  # type: ignore[arg-type]
            self._messages.append(message)
            self._fragments = []
        return True

    def _on_pong(self, payload: bytes) -> None:
        if payload not in self._pings:
            return  # unsolicited pongs are allowed
        # A pong answers its ping and every earlier one.
        for key in list(self._pings):
            self._pings.pop(key).set()
            if key == payload:
                break

    # -- sending ---------------------------------------------------------------

    async def send(self, message: str | bytes | bytearray | memoryview) -> None:
        """Send one message: ``str`` as text, bytes-like as binary.

        Waits while the peer does not read (backpressure). Cancelling it
        mid-write aborts the connection."""
        if self._close is None and self._shutdown.is_set():
            await self.close(GOING_AWAY, "server shutting down")
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            # Uncontended: take it without the lock's own checkpoint; the
            # write below is one. A scheduler pass less per message.
            lock.acquire_nowait()
        try:
            if self._close is not None:
                raise ConnectionClosed(*self._close)
            protocol = self._protocol
            if (
                self._fast_send
                and not isinstance(message, memoryview)
                and protocol.state is OPEN
                and not protocol.expect_continuation_frame
            ):
                # What the protocol would write (no extension, no mask),
                # header and payload in one buffer: one write.
                payload: bytes | bytearray | memoryview
                if isinstance(message, str):
                    first, payload = 0x81, message.encode()
                else:
                    first, payload = 0x82, message
                if self._deflate is not None:
                    opcode = Opcode.TEXT if first == 0x81 else Opcode.BINARY
                    payload = self._deflate.encode(Frame(opcode, payload)).data
                    first |= 0x40  # RSV1: compressed
                if len(payload) < 126:
                    frame = bytes((first, len(payload))) + payload
                else:
                    frame = _frame_head(first, payload) + payload
                if self._owed:
                    self._owed.append(frame)
                    await self._flush()
                else:
                    await self._write(frame)
                    # Replies a reader owed meanwhile (it left them to us).
                    if self._owed or self._close is not None:
                        await self._flush()
            else:
                if isinstance(message, str):
                    protocol.send_text(message.encode("utf-8"))
                else:
                    protocol.send_binary(message)
                await self._flush()
            self.messages_sent += 1
        finally:
            lock.release()

    async def ping(self, payload: bytes | None = None, *, wait: bool = True) -> None:
        """Send a ping (``payload``: up to 125 bytes, random by default) and,
        with ``wait``, return when its pong arrives. While waiting it reads
        the socket if no other task does (queueing up to ``MAX_QUEUE``
        messages for ``receive``). Raises :class:`ConnectionClosed` if the
        connection closes first. Put it under ``trio.move_on_after`` for a
        timeout."""
        if payload is None:
            payload = os.urandom(4)
            while payload in self._pings:
                payload = os.urandom(4)
        payload = bytes(payload)
        if len(payload) > 125:
            raise ValueError("a ping payload is at most 125 bytes")
        if wait and payload in self._pings:
            raise ValueError(f"a ping with payload {payload!r} is already waiting")
        answered = trio.Event()
        try:
            async with self._send_lock:
                if self._close is not None:
                    raise ConnectionClosed(*self._close)
                if wait:
                    # Before writing: another task may read the pong at once.
                    self._pings[payload] = answered
                self._protocol.send_ping(payload)
                await self._flush()
            while wait and not answered.is_set():
                if self._close is not None:
                    raise ConnectionClosed(*self._close)
                await self._read_step(receiving=False)
        finally:
            if self._pings.get(payload) is answered:
                del self._pings[payload]

    def _handshake_over(self) -> bool:
        """Both close frames went by (a server closes TCP first, RFC 6455
        7.1.1), or the peer's EOF came (the protocol is CLOSED)."""
        if self._close is None:  # still OPEN: the common case, made cheap
            return False
        protocol = self._protocol
        return protocol.state is State.CLOSED or (
            protocol.side is SERVER
            and protocol.close_sent is not None
            and protocol.close_rcvd is not None
        )

    def _owes_reply(self) -> bool:
        return not self._transport_closed and (
            bool(self._owed) or self._handshake_over()
        )

    async def _flush(self) -> None:
        """With the send lock held: write what the protocol produced and what
        readers left owed, in order. After a failure the protocol ends with
        EOF: the peer sees our close frame then EOF while we drain what it
        still sends (closing with unread input would reset the connection and
        could destroy the close frame). When the closing handshake is over,
        close the stream."""
        owed = self._owed
        owed.extend(self._protocol.data_to_send())
        while owed and not self._transport_closed:
            if owed[0]:
                data = owed.popleft()
                if owed and owed[0]:  # coalesce: one write, one syscall
                    chunks = [data]
                    while owed and owed[0]:
                        chunks.append(owed.popleft())
                    data = b"".join(chunks)
                await self._write(data)
            else:
                owed.popleft()
                stream = self._stream
                if isinstance(stream, trio.abc.HalfCloseableStream) and (
                    not isinstance(stream, ReplayStream) or stream.can_send_eof
                ):
                    # TLS cannot half-close: close() cuts after draining.
                    with contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError
                    ):
                        await stream.send_eof()
        if self._handshake_over():
            await self._close_transport()

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._flush()

    async def _write(self, data: bytes) -> None:
        """Write under the send lock; a failed write loses the connection."""
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            await self._close_transport("connection lost")
            assert self._close is not None
            raise ConnectionClosed(*self._close) from None
        except trio.Cancelled:
            # Part of the frame may be on the wire: the framing is lost.
            await self._close_transport("send cancelled")
            raise

    # -- closing ---------------------------------------------------------------

    async def close(self, code: int = NORMAL_CLOSURE, reason: str = "") -> None:
        """Close: send a close frame, wait up to ``close_timeout`` for the
        peer's, close the stream. Idempotent, never raises ConnectionClosed;
        if closing already started (either side) it just finishes. Cancelled,
        it closes the stream at once."""
        if code not in _SENDABLE and not 3000 <= code <= 4999:
            raise ValueError(f"close code {code} cannot be sent")
        if len(reason.encode("utf-8")) > 123:
            raise ValueError("a close reason is at most 123 bytes of UTF-8")
        if self._close is None:
            self._close = (code, reason)
            self._fragments.clear()
        try:
            with trio.move_on_after(self._close_timeout):
                async with self._send_lock:
                    if self._protocol.state is OPEN and not self._transport_closed:
                        # Ours starts the closing handshake (maybe an earlier
                        # close() was cancelled before it could send).
                        self._protocol.send_close(*self._close)
                    try:
                        await self._flush()
                    except ConnectionClosed:
                        return
                while not self._transport_closed:
                    await self._read_step(receiving=True)
        finally:
            await self._close_transport()

    async def fail(self, code: int = INTERNAL_ERROR, reason: str = "") -> None:
        """Fail the connection (RFC 6455 7.1.7): send a close frame with
        ``code`` if the closing handshake has not started, then close the
        stream without waiting for the peer's answer. For a peer that is
        gone or misbehaving; the keepalive uses it with 1011."""
        if code not in _SENDABLE and not 3000 <= code <= 4999:
            raise ValueError(f"close code {code} cannot be sent")
        if self._close is None:
            self._close = (code, reason[:120])
            self._fragments.clear()
        try:
            if self._protocol.state is OPEN and not self._transport_closed:
                self._protocol.fail(code, reason[:120])
            # Best effort, bounded: a dead peer's full buffers must not hold
            # the stream.
            with trio.move_on_after(self._close_timeout):
                async with self._send_lock:
                    await self._flush_quietly()
        finally:
            await self._close_transport()

    async def _close_transport(self, lost_reason: str = "") -> None:
        if self._close is None:
            self._close = (ABNORMAL_CLOSURE, lost_reason or "connection closed")
        if self._transport_closed:
            return
        self._transport_closed = True
        self._owed.clear()
        await trio.aclose_forcefully(self._stream)
        self._notify()

    async def aclose(self) -> None:
        """``close()`` with code 1000."""
        await self.close()

    async def _watch_shutdown(self) -> None:
        await self._shutdown.wait()
        await self.close(GOING_AWAY, "server shutting down")

    async def __aenter__(self) -> WebSocket:
        """Inside the block a background task answers the server's graceful
        shutdown with close 1001, and another sends the keepalive pings. On
        exit: close 1000, 1011 if the block raised, abort if it was
        cancelled. A :class:`ConnectionClosed` escaping the block is
        swallowed: the peer is gone, nothing to do."""
        if self._watcher is not None:
            raise RuntimeError("this WebSocket is already entered")
        manager = trio.open_nursery()
        nursery = await manager.__aenter__()
        nursery.start_soon(self._watch_shutdown)
        if self._ping_interval is not None:
            nursery.start_soon(
                keep_alive, self, self._ping_interval, self._ping_timeout
            )
        self._watcher = (manager, nursery)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._watcher is not None
        manager, nursery = self._watcher
        try:
            if exc is None or isinstance(exc, ConnectionClosed):
                await self.close()
            elif isinstance(exc, Exception):
                await self.close(INTERNAL_ERROR, "internal error")
            else:  # cancelled, KeyboardInterrupt...
                await self._close_transport("aborted")
        finally:
            nursery.cancel_scope.cancel()
            await manager.__aexit__(None, None, None)
            self._watcher = None
        return isinstance(exc, ConnectionClosed)
