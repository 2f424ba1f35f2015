"""WebSocket echo rows: hijack against `websockets` (asyncio and Trio
flavours) and trio-websocket, with and without permessage-deflate, plus a
ceiling server that shows the load generator is not the limit.

Rows (wired into ``bench/run.py`` as ``--rows ws``): 32 connections, 64-byte
and 1 MiB binary messages, echo round trips per second and server CPU per
round trip. "WebSocket echo": the client offers no extension. "WebSocket
echo, deflate": the client offers ``permessage-deflate;
client_no_context_takeover`` (so it can send one precompressed frame again
and again: the client's CPU stays out of the figure) and inflates each
answer with one zlib stream per connection. Every server is configured
alike: 4 MiB message limit, no keepalive pings, compression on for the
deflate row (each library's default settings) and off otherwise.
"Memory per idle connection": RSS growth of the server for 500 open
connections that each echoed one message, with and without deflate.

Servers run here too: ``python websocket_echo.py serve KIND PORT [deflate]``, under
``bench/.venv``'s interpreter (``KIND``: hijack, websockets-asyncio,
websockets-trio, trio-websocket, ceiling).

The ceiling is a single-threaded selectors WebSocket echo with no framework
(it unmasks with `websockets`' C helper and sends the frame back, RSV1 and
all; with deflate it returns the client's compressed payload as is, which
the client inflates like any other answer): what the load generator can do
when the server costs next to nothing.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import hashlib
import os
import socket
import struct
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from loadgen import Window
from procs import BENCH, BENCH_PY, free_port
from websockets.speedups import apply_mask  # C, as every server here uses

if TYPE_CHECKING:
    from run import Bench

MIB = 1 << 20
MAX_MESSAGE = 4 * MIB
SIZES = ((64, "64 B"), (MIB, "1 MiB"))
CONNECTIONS = 32
WORKERS = 4
IDLE_CONNECTIONS = 500
HIJACK = "hijack"
PEERS = {
    "websockets (asyncio)": "websockets-asyncio",
    "websockets.trio": "websockets-trio",
    "trio-websocket": "trio-websocket",
}
CEILING = "ceiling: bare selectors WebSocket echo"
DEFLATE_OFFER = "permessage-deflate; client_no_context_takeover"
ROW = "WebSocket echo"
ROW_DEFLATE = "WebSocket echo, deflate"
# (row, peer, hijack / peer at least, workload): issue 8's figures against
# `websockets` asyncio, and the earlier 1.2x against trio-websocket.
TARGETS = [
    (row, peer, ratio, f"{label} messages, 32 connections")
    for row in (ROW, ROW_DEFLATE)
    for (_, label), ratio, peer in (
        (SIZES[0], 1.2, "websockets (asyncio)"),
        (SIZES[1], 1.0, "websockets (asyncio)"),
        (SIZES[0], 1.2, "trio-websocket"),
        (SIZES[1], 1.2, "trio-websocket"),
    )
]


# -- servers (run under bench/.venv) -----------------------------------------


def serve_hijack(port: int, deflate: bool) -> None:
    import trio

    import hijack
    from hijack.upgrades.websocket import make_echo_handler

    handler = make_echo_handler(
        max_message_size=MAX_MESSAGE,
        compression="deflate" if deflate else None,
        ping_interval=None,
    )
    server = hijack.Server(handler, limits=hijack.Limits(max_connections=50_000))
    trio.run(server.serve_tcp, port)


def serve_websockets_asyncio(port: int, deflate: bool) -> None:
    import asyncio

    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async def run() -> None:
        async with serve(
            echo, "127.0.0.1", port, max_size=MAX_MESSAGE, backlog=4096,
            compression="deflate" if deflate else None, ping_interval=None,
        ) as server:  # fmt: skip
            await server.serve_forever()

    asyncio.run(run())


def serve_websockets_trio(port: int, deflate: bool) -> None:
    import trio
    from websockets.exceptions import ConnectionClosed
    from websockets.trio.server import ServerConnection, serve

    async def echo(ws: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    trio.run(
        lambda: serve(
            echo,
            port,
            host="127.0.0.1",
            max_size=MAX_MESSAGE,
            backlog=4096,
            compression="deflate" if deflate else None,
            ping_interval=None,
        )
    )


def serve_trio_websocket(port: int, deflate: bool) -> None:
    # trio-websocket has no compression option: it never negotiates
    # permessage-deflate, so its deflate row runs uncompressed (noted).
    import trio
    from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

    async def echo(request: WebSocketRequest) -> None:
        ws = await request.accept()
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.send_message(await ws.get_message())

    trio.run(
        lambda: serve_websocket(
            echo, "127.0.0.1", port, ssl_context=None, max_message_size=MAX_MESSAGE
        )
    )


def _accept_key(request: bytes) -> bytes:
    for line in request.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"sec-websocket-key":
            digest = hashlib.sha1(
                value.strip() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
            ).digest()
            return base64.b64encode(digest)
    raise ConnectionError("no Sec-WebSocket-Key")


class _CeilingConnection:
    """One connection of the ceiling: bytes in, whole frames echoed out.
    Reads land in one preallocated buffer (no concatenation), answers go
    out as a queue of buffers sent without copies."""

    def __init__(self, conn: socket.socket, deflate: bool) -> None:
        self.conn = conn
        self.deflate = deflate
        self.buffer = bytearray(MIB + 64)  # the biggest message here + header
        self.view = memoryview(self.buffer)
        self.fill = 0
        self.outbox: collections.deque[memoryview] = collections.deque()
        self.open = False  # handshake answered

    def receive(self) -> bool:
        """Read what is there and answer whole frames; False at the end."""
        n = self.conn.recv_into(self.view[self.fill :])
        if not n:
            return False
        self.fill += n
        buffer, pos = self.buffer, 0
        if not self.open:
            head_end = buffer.find(b"\r\n\r\n", 0, self.fill)
            if head_end < 0:
                return True
            head = bytes(buffer[:head_end])
            extension = b""
            if self.deflate and b"permessage-deflate" in head:
                extension = (
                    b"Sec-WebSocket-Extensions: " + DEFLATE_OFFER.encode() + b"\r\n"
                )
            self.send(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Accept: "
                + _accept_key(head) + b"\r\n" + extension + b"\r\n"
            )  # fmt: skip
            self.open = True
            pos = head_end + 4
        while self.fill - pos >= 2:
            first, length, offset = buffer[pos], buffer[pos + 1] & 0x7F, pos + 2
            if length == 126:
                if self.fill - pos < 4:
                    break
                length, offset = struct.unpack_from("!H", buffer, pos + 2)[0], pos + 4
            elif length == 127:
                if self.fill - pos < 10:
                    break
                length, offset = struct.unpack_from("!Q", buffer, pos + 2)[0], pos + 10
            if offset + 4 + length - pos > len(buffer):
                raise ConnectionError("frame bigger than the ceiling's buffer")
            end = offset + 4 + length
            if self.fill < end:
                break
            if first & 0x0F == 0x8:  # close: answer it and stop
                self.send(b"\x88\x00")
                return False
            mask = bytes(buffer[offset : offset + 4])
            if length < 126:
                self.send(struct.pack("!BB", first, length))
            elif length < 65536:
                self.send(struct.pack("!BBH", first, 126, length))
            else:
                self.send(struct.pack("!BBQ", first, 127, length))
            self.send(apply_mask(self.view[offset + 4 : end], mask))
            pos = end
        if pos:  # keep the unfinished frame at the front
            rest = self.fill - pos
            buffer[:rest] = self.view[pos : self.fill]
            self.fill = rest
        return True

    def send(self, data: bytes) -> None:
        self.outbox.append(memoryview(data))

    def flush(self) -> bool:
        """Send what the socket takes; True if something is left."""
        outbox = self.outbox
        while outbox:
            try:
                sent = self.conn.send(outbox[0])
            except BlockingIOError:
                return True
            if sent < len(outbox[0]):
                outbox[0] = outbox[0][sent:]
            else:
                outbox.popleft()
        return False


def serve_ceiling(port: int, deflate: bool) -> None:
    """One thread, one selector, non-blocking sockets, output buffers."""
    import selectors

    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(4096)
    server.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(server, selectors.EVENT_READ, None)
    read, both = selectors.EVENT_READ, selectors.EVENT_READ | selectors.EVENT_WRITE
    while True:
        for key, events in selector.select():
            if key.data is None:
                with contextlib.suppress(BlockingIOError):
                    conn, _ = server.accept()
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    selector.register(conn, read, _CeilingConnection(conn, deflate))
                continue
            peer: _CeilingConnection = key.data
            alive = True
            try:
                if events & selectors.EVENT_READ:
                    alive = peer.receive()
                pending = peer.flush()
            except (BlockingIOError, InterruptedError):
                continue
            except (OSError, ConnectionError):
                alive, pending = False, False
            if not alive:
                selector.unregister(peer.conn)
                peer.conn.close()
            else:
                selector.modify(peer.conn, both if pending else read, peer)


SERVERS: dict[str, Callable[[int, bool], None]] = {
    "hijack": serve_hijack,
    "websockets-asyncio": serve_websockets_asyncio,
    "websockets-trio": serve_websockets_trio,
    "trio-websocket": serve_trio_websocket,
    "ceiling": serve_ceiling,
}


def server_argv(kind: str, port: int, deflate: bool) -> list[str]:
    argv = [str(BENCH_PY), str(BENCH / "websocket_echo.py"), "serve", kind, str(port)]
    return [*argv, "deflate"] if deflate else argv


# -- the load generator's deflate client (standard library only) -------------


def open_deflate(port: int) -> tuple[socket.socket, bool]:
    """A WebSocket that offers permessage-deflate; whether it was accepted."""
    sock = loadgen.connect(port)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Extensions: " + DEFLATE_OFFER.encode() + b"\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if int(head.split(None, 2)[1]) != 101 or rest:
        raise ConnectionError(f"handshake answered {head[:40]!r}, {rest!r}")
    return sock, b"permessage-deflate" in head.lower()


def deflate_frame(payload: bytes) -> bytes:
    """One masked binary frame, RSV1 set, the payload deflated on its own
    (no context takeover: the same bytes are valid every time)."""
    compressor = zlib.compressobj(wbits=-15)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    frame = bytearray(loadgen.ws_frame(data[:-4]))
    frame[0] |= 0x40
    return bytes(frame)


def read_message(sock: socket.socket, inflater: Any, view: memoryview) -> bytes:
    """One server data message (inflated if RSV1 is set); pings skipped."""
    head = memoryview(bytearray(10))
    for _ in range(16):
        loadgen.recv_exact(sock, head[:2])
        first, length = head[0], head[1] & 0x7F
        if length == 126:
            loadgen.recv_exact(sock, head[2:4])
            length = struct.unpack("!H", head[2:4])[0]
        elif length == 127:
            loadgen.recv_exact(sock, head[2:10])
            length = struct.unpack("!Q", head[2:10])[0]
        if length > len(view):
            raise ConnectionError(f"frame of {length} bytes is too big")
        loadgen.recv_exact(sock, view[:length])
        if first & 0x0F in (1, 2):
            if not first & 0x80:
                raise ConnectionError("fragmented reply: not expected here")
            if first & 0x40:
                data: bytes = inflater.decompress(
                    bytes(view[:length]) + b"\x00\x00\xff\xff"
                )
                return data
            return bytes(view[:length])
    raise ConnectionError("too many control frames")


def deflate_worker(port: int, conns: int, size: int, window: Window) -> tuple[int, int]:
    """Like ``loadgen.echo_worker`` with deflate offered. Returns (round
    trips in the window, failures)."""
    opened = [open_deflate(port) for _ in range(conns)]
    socks = [sock for sock, _ in opened]
    inflaters = [zlib.decompressobj(wbits=-15) for _ in socks]
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    # A server that declines deflate gets plain frames (RSV1 would be 1002).
    compressed, plain = deflate_frame(payload), loadgen.ws_frame(payload)
    messages = [compressed if negotiated else plain for _, negotiated in opened]
    view = memoryview(bytearray(size + 1024))
    done = failures = 0
    loadgen._sleep_until(window.start)
    try:
        for _ in range(loadgen.MAX_OPS):
            if time.monotonic() >= window.end:
                break
            for s, message in zip(socks, messages, strict=True):
                s.sendall(message)
            for s, inflater in zip(socks, inflaters, strict=True):
                if read_message(s, inflater, view) != payload:
                    raise ConnectionError("the echo differs")
                if window.begin <= time.monotonic() <= window.end:
                    done += 1
    except (OSError, ConnectionError, zlib.error):
        failures += 1
    finally:
        for s in socks:
            s.close()
    return done, failures


def deflate_rate(port: int, size: int, window: Window) -> tuple[float, int]:
    args = [(port, CONNECTIONS // WORKERS, size, window)] * WORKERS
    results = loadgen.run_workers(deflate_worker, args)
    return sum(r[0] for r in results) / window.duration, sum(r[1] for r in results)


def negotiates_deflate(port: int) -> bool:
    sock, negotiated = open_deflate(port)
    sock.close()
    return negotiated


def idle_memory_kib(port: int, pid: int, deflate: bool) -> float:
    """RSS growth per connection for IDLE_CONNECTIONS open connections that
    each echoed one 64-byte message (so compressors exist), in KiB."""
    from procs import rss_kib

    before = rss_kib(pid)
    socks = []
    message = deflate_frame(b"x" * 64) if deflate else loadgen.ws_frame(b"x" * 64)
    view = memoryview(bytearray(1024))
    try:
        for _ in range(IDLE_CONNECTIONS):
            sock = open_deflate(port)[0] if deflate else loadgen.open_websocket(port)
            socks.append(sock)
            sock.sendall(message)
            read_message(sock, zlib.decompressobj(wbits=-15), view)
        time.sleep(0.5)
        return (rss_kib(pid) - before) / IDLE_CONNECTIONS
    finally:
        for sock in socks:
            sock.close()


# -- the rows ----------------------------------------------------------------


Background = Callable[..., Callable[[], tuple[float, int]]]


def row_ws(b: Bench, background: Background) -> None:
    """Both rows, rounds interleaved: every server once per round, hijack
    and peers back to back, the deflate row after the plain one.
    ``background``: run.py's ``_background`` (a load run in a thread)."""
    names = [(HIJACK, "hijack"), *PEERS.items(), (CEILING, "ceiling")]
    for deflate in (False, True):
        row = ROW_DEFLATE if deflate else ROW
        port = free_port()
        subjects = [(name, server_argv(k, port, deflate)) for name, k in names]
        for name, argv in b.cfg.rounds * subjects:
            with b.guard(row, name), b.server(row, name, argv, port) as proc:
                for size, label in SIZES:
                    window = b.cfg.window()
                    if deflate:
                        job = background(deflate_rate, port, size, window)
                    else:
                        job = background(
                            loadgen.echo_rate, port, "ws", CONNECTIONS, WORKERS,
                            size, window,
                        )  # fmt: skip
                    cpu = b.observe(proc, f"{row} {label}", window)
                    rate, failures = job()
                    proc.wait_profile()
                    notes = [f"{failures} failed workers" if failures else ""]
                    if deflate and not negotiates_deflate(port):
                        notes.append("does not negotiate deflate: uncompressed")
                    ops = rate * window.duration
                    b.add(row, f"{label} messages, 32 connections", name, rate,
                          "round trips/s", "; ".join(n for n in notes if n),
                          cpu=cpu / ops if ops else None)  # fmt: skip
    idle_row(b)


def idle_row(b: Bench) -> None:
    row = "WebSocket memory per idle connection"
    port = free_port()
    subjects = [
        (HIJACK, "hijack", False),
        (f"{HIJACK}, deflate", "hijack", True),
        ("websockets (asyncio), deflate", "websockets-asyncio", True),
    ]
    for name, kind, deflate in subjects:
        argv = server_argv(kind, port, deflate)
        with b.guard(row, name), b.server(row, name, argv, port) as proc:
            kib = idle_memory_kib(port, proc.pid, deflate)
            b.add(row, f"{IDLE_CONNECTIONS} connections, one 64 B echo each", name,
                  kib, "KiB/connection", lower_is_better=True)  # fmt: skip


def main() -> None:
    if sys.argv[1:2] != ["serve"]:
        raise SystemExit("usage: websocket_echo.py serve KIND PORT [deflate]")
    kind, port = sys.argv[2], int(sys.argv[3])
    deflate = sys.argv[4:5] == ["deflate"]
    with contextlib.suppress(KeyboardInterrupt):
        SERVERS[kind](port, deflate)


if __name__ == "__main__":
    main()
