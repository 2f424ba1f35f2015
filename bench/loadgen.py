"""Load generators: blocking sockets, one OS process per worker.

Every server gets exactly the same client code. A worker holds several
connections and drives them in lockstep (send on each, then read each
answer), so 32 connections stay busy with a few processes and little client
CPU. Workers line up on a shared ``start`` time (``time.monotonic`` is one
clock for every process on Linux), warm up, then count during the same
window. Every loop is bounded by a count and by a deadline, and every socket
has a timeout: nothing waits forever.
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

HOST = "127.0.0.1"
SOCKET_TIMEOUT = 10.0
CHUNK = 1 << 20
MAX_OPS = 50_000_000  # a count bound far above any real rate


@dataclass
class Window:
    """When workers measure: warm up from ``start`` for ``warmup`` seconds,
    then count for ``duration`` seconds."""

    start: float
    warmup: float
    duration: float

    @property
    def begin(self) -> float:
        return self.start + self.warmup

    @property
    def end(self) -> float:
        return self.begin + self.duration


def run_workers(fn: Callable[..., Any], args: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run ``fn(*a)`` for each ``a`` in its own process; their results."""
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(len(args)) as pool:
        return pool.starmap(fn, args)


def _sleep_until(t: float) -> None:
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=SOCKET_TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_head(sock: socket.socket) -> tuple[int, bytes]:
    """Read an HTTP response head; (status, bytes after the head)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response head: {data!r}")
        data += chunk
        if len(data) > 65536:
            raise ConnectionError("response head too long")
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(None, 2)[1]), rest


def recv_exact(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:])
        if n == 0:
            raise ConnectionError("closed mid-message")
        got += n


def open_tunnel(proxy_port: int, target_port: int) -> socket.socket:
    """A CONNECT tunnel through the proxy to 127.0.0.1:target_port."""
    sock = connect(proxy_port)
    target = f"{HOST}:{target_port}".encode()
    sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n")
    status, rest = read_head(sock)
    if status != 200 or rest:
        sock.close()
        raise ConnectionError(f"CONNECT answered {status}, early bytes {rest!r}")
    return sock


# -- tunnel throughput -------------------------------------------------------


def stream_transfer(
    proxy_port: int | None, sink_port: int, upload: bool, size: int, start: float,
    time_limit: float,
) -> tuple[int, float, float]:  # fmt: skip
    """Move ``size`` bytes up or down one stream (through the proxy, or
    straight to the sink when ``proxy_port`` is None). Returns (bytes moved,
    start, end); an upload ends when the sink confirms it got every byte."""
    if proxy_port is None:
        sock = connect(sink_port)
    else:
        sock = open_tunnel(proxy_port, sink_port)
    with sock:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        moved = 0
        _sleep_until(start)
        t0 = time.monotonic()
        deadline = t0 + time_limit
        sock.sendall(b"%s %d\n" % (b"U" if upload else b"D", size))
        if upload:
            while moved < size and time.monotonic() < deadline:
                n = min(CHUNK, size - moved)
                sock.sendall(view[:n])
                moved += n
            if moved == size and sock.recv(1) != b"K":
                raise ConnectionError("sink did not confirm the upload")
        else:
            while moved < size and time.monotonic() < deadline:
                n = sock.recv_into(view)
                if n == 0:
                    break
                moved += n
        return moved, t0, time.monotonic()


def throughput(
    proxy_port: int | None, sink_port: int, streams: int, upload: bool,
    total: int, time_limit: float,
) -> tuple[float, int]:  # fmt: skip
    """Aggregate MB/s (10^6 bytes) over ``streams`` parallel streams moving
    ``total`` bytes together; also the bytes actually moved."""
    start = time.monotonic() + 0.3
    per = total // streams
    args = [(proxy_port, sink_port, upload, per, start, time_limit)] * streams
    results = run_workers(stream_transfer, args)
    moved = sum(r[0] for r in results)
    elapsed = max(r[2] for r in results) - min(r[1] for r in results)
    return moved / elapsed / 1e6, moved


# -- tunnel setup ------------------------------------------------------------


def setup_worker(
    proxy_port: int, echo_port: int, inflight: int, window: Window
) -> tuple[int, int]:
    """Open ``inflight`` tunnels at once, one 4-byte round trip each, close;
    repeat. Returns (tunnels completed in the window, failures)."""
    target = f"{HOST}:{echo_port}".encode()
    request = b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n"

    def open_batch(socks: list[socket.socket]) -> None:
        # Each step on every socket before the next step: ``inflight``
        # tunnels are in flight at once.
        for _ in range(inflight):
            socks.append(connect(proxy_port))
        for s in socks:
            s.sendall(request)
        for s in socks:
            status, rest = read_head(s)
            if status != 200 or rest:
                raise ConnectionError(f"CONNECT answered {status}")

    return tunnel_batches(inflight, window, open_batch)


def tunnel_batches(
    inflight: int, window: Window, open_batch: Callable[[list[socket.socket]], None]
) -> tuple[int, int]:
    """Repeat until the window ends: ``open_batch`` opens ``inflight``
    tunnels into the list it is given, then one 4-byte round trip on each,
    then all are closed. Returns (tunnels completed in the window, failed
    batches). Any proxy's set-up row (CONNECT, SOCKS5) counts this way."""
    done = failures = 0
    _sleep_until(window.start)
    for _ in range(MAX_OPS):
        now = time.monotonic()
        if now >= window.end:
            break
        socks: list[socket.socket] = []
        ok = False
        try:
            open_batch(socks)
            for s in socks:
                s.sendall(b"ping")
            buf = memoryview(bytearray(4))
            for s in socks:
                recv_exact(s, buf)
            ok = True
        except (OSError, ConnectionError, ValueError):
            failures += 1
        finally:
            for s in socks:
                s.close()
        if ok and now >= window.begin and time.monotonic() <= window.end:
            done += inflight
    return done, failures


def tunnel_setup(
    proxy_port: int, echo_port: int, concurrency: int, workers: int, window: Window
) -> tuple[float, int]:
    """Tunnels per second with ``concurrency`` in flight; and failures."""
    args = [(proxy_port, echo_port, concurrency // workers, window)] * workers
    results = run_workers(setup_worker, args)
    return sum(r[0] for r in results) / window.duration, sum(r[1] for r in results)


# -- echo round trips (hijacked echo and WebSocket) --------------------------

UPGRADE_REQUEST = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
)


def open_upgraded(port: int) -> socket.socket:
    sock = connect(port)
    sock.sendall(UPGRADE_REQUEST)
    status, rest = read_head(sock)
    if status != 101 or rest:
        raise ConnectionError(f"upgrade answered {status}, early bytes {rest!r}")
    return sock


def open_websocket(port: int) -> socket.socket:
    sock = connect(port)
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\n\r\n"
    )
    status, rest = read_head(sock)
    if status != 101 or rest:
        raise ConnectionError(f"WebSocket handshake answered {status}, {rest!r}")
    return sock


def ws_frame(payload: bytes, mask: bytes = b"\x12\x34\x56\x78") -> bytes:
    """A masked binary frame (clients must mask). Built once per run: the
    same bytes are sent every time, so masking costs the client nothing."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    repeat = mask * (n // 4 + 1)
    masked = (
        int.from_bytes(payload, "big") ^ int.from_bytes(repeat[:n], "big")
    ).to_bytes(n, "big")
    return head + mask + masked


def read_ws_message(sock: socket.socket, view: memoryview) -> int:
    """Read one unmasked server data frame into ``view``; its length.
    Control frames (a ping) are skipped: no server here sends one."""
    head = memoryview(bytearray(10))
    for _ in range(16):
        recv_exact(sock, head[:2])
        opcode, length = head[0] & 0x0F, head[1] & 0x7F
        if length == 126:
            recv_exact(sock, head[2:4])
            length = struct.unpack("!H", head[2:4])[0]
        elif length == 127:
            recv_exact(sock, head[2:10])
            length = struct.unpack("!Q", head[2:10])[0]
        if length > len(view):
            raise ConnectionError(f"frame of {length} bytes is too big")
        recv_exact(sock, view[:length])
        if opcode in (1, 2):
            if not head[0] & 0x80:
                raise ConnectionError("fragmented reply: not expected here")
            return length
    raise ConnectionError("too many control frames")


def echo_worker(
    port: int, kind: str, conns: int, size: int, window: Window
) -> tuple[int, int]:
    """Round trips of ``size``-byte messages over ``conns`` connections in
    lockstep. ``kind``: "raw" (after an Upgrade) or "ws". Returns (round
    trips in the window, failures)."""
    opener = open_websocket if kind == "ws" else open_upgraded
    socks = [opener(port) for _ in range(conns)]
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    message = ws_frame(payload) if kind == "ws" else payload
    view = memoryview(bytearray(size))
    done = failures = 0
    _sleep_until(window.start)
    try:
        for _ in range(MAX_OPS):
            now = time.monotonic()
            if now >= window.end:
                break
            for s in socks:
                s.sendall(message)
            for s in socks:
                if kind == "ws":
                    if read_ws_message(s, view) != size:
                        raise ConnectionError("echo of the wrong size")
                else:
                    recv_exact(s, view)
                # Count each answer that lands in the window (a lockstep
                # round of big messages can be longer than the window).
                if window.begin <= time.monotonic() <= window.end:
                    done += 1
        if bytes(view[:16]) != payload[:16]:
            raise ConnectionError("echo changed the bytes")
    except (OSError, ConnectionError):
        failures += 1
    finally:
        for s in socks:
            s.close()
    return done, failures


def echo_rate(
    port: int, kind: str, conns: int, workers: int, size: int, window: Window
) -> tuple[float, int]:
    """Round trips per second over ``conns`` connections; and failures."""
    args = [(port, kind, conns // workers, size, window)] * workers
    results = run_workers(echo_worker, args)
    return sum(r[0] for r in results) / window.duration, sum(r[1] for r in results)


# -- many open tunnels (idle, scale) -----------------------------------------


class TunnelHolder:
    """Opens tunnels in lockstep batches and keeps them open (in the calling
    process). ``open(n)`` returns how many of the n opened and passed one
    round trip; the first failure stops the batch."""

    def __init__(self, proxy_port: int, echo_port: int, batch: int = 200) -> None:
        self.proxy_port = proxy_port
        self.echo_port = echo_port
        self.batch = batch
        self.socks: list[socket.socket] = []
        self.error = ""

    def open(self, count: int, deadline: float) -> int:
        opened = 0
        target = f"{HOST}:{self.echo_port}".encode()
        request = b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n"
        buf = memoryview(bytearray(1))
        while opened < count and time.monotonic() < deadline:
            batch: list[socket.socket] = []
            try:
                for _ in range(min(self.batch, count - opened)):
                    batch.append(connect(self.proxy_port))
                for s in batch:
                    s.sendall(request)
                for s in batch:
                    status, rest = read_head(s)
                    if status != 200 or rest:
                        raise ConnectionError(f"CONNECT answered {status}")
                for s in batch:
                    s.sendall(b"x")
                for s in batch:
                    recv_exact(s, buf)
            except (OSError, ConnectionError, ValueError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                for s in batch:
                    s.close()
                return opened
            self.socks.extend(batch)
            opened += len(batch)
        return opened

    def check_all(self) -> int:
        """One round trip through every open tunnel; how many answered."""
        buf = memoryview(bytearray(1))
        ok = 0
        for s in self.socks:
            try:
                s.sendall(b"y")
                recv_exact(s, buf)
                ok += 1
            except (OSError, ConnectionError):
                pass
        return ok

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.socks = []
