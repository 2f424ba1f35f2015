"""Upstream servers the proxies tunnel to, and the raw echo ceiling.

Standard library only, so they cost the same whichever proxy is measured:

* ``sink``: the throughput target. A client sends one line, ``U <n>`` (it
  will upload n bytes; we read and drop them, then answer ``K``) or
  ``D <n>`` (we send n bytes, then half-close). One thread per connection:
  only a handful of streams, and ``recv_into``/``sendall`` on 1 MiB buffers
  release the GIL.
* ``echo``: echoes what it reads, holds idle connections for as long as the
  client keeps them (setup, idle and scale rows). One selector thread.
* ``echo-upgrade``: the same, but the first read of a connection (an HTTP
  Upgrade request) gets a canned ``101`` instead of an echo: the ceiling for
  the hijacked echo row (no HTTP framework at all).

Run: ``python upstreams.py KIND PORT``. Stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import resource
import selectors
import socket
import sys
import threading

CHUNK = 1 << 20
UPGRADE_ANSWER = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
)


def raise_fd_limit() -> int:
    """Soft fd limit up to the hard one; returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def listen(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(4096)
    return sock


def _sink_one(conn: socket.socket) -> None:
    with conn:
        line = b""
        while not line.endswith(b"\n"):
            byte = conn.recv(1)
            if not byte:
                return
            line += byte
        kind, count = line.split()
        remaining = int(count)
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        if kind == b"U":
            while remaining > 0:
                n = conn.recv_into(view, min(CHUNK, remaining))
                if n == 0:
                    return  # the client gave up (time bound)
                remaining -= n
            conn.sendall(b"K")
        else:
            try:
                while remaining > 0:
                    n = min(CHUNK, remaining)
                    conn.sendall(view[:n])
                    remaining -= n
                conn.shutdown(socket.SHUT_WR)
                conn.recv(1)  # wait for the client to close
            except OSError:
                return


def serve_sink(port: int) -> None:
    server = listen(port)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=_sink_one, args=(conn,), daemon=True).start()


def serve_echo(port: int, upgrade: bool) -> None:
    server = listen(port)
    server.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ, None)
    fresh: set[socket.socket] = set()
    while True:
        for key, _ in sel.select():
            if key.data is None:
                for _ in range(256):  # accept a burst, bounded
                    try:
                        conn, _ = server.accept()
                    except BlockingIOError:
                        break
                    except OSError:
                        break  # out of fds: the client will see it refused
                    conn.setblocking(False)
                    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    sel.register(conn, selectors.EVENT_READ, True)
                    if upgrade:
                        fresh.add(conn)
                continue
            registered = key.fileobj
            assert isinstance(registered, socket.socket)
            conn = registered
            try:
                data = conn.recv(65536)
                if data:
                    if conn in fresh:
                        fresh.discard(conn)
                        data = UPGRADE_ANSWER
                    # Small messages on loopback: the send buffer takes them.
                    conn.sendall(data)
                    continue
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                print(f"echo: dropping a connection: {exc}", file=sys.stderr)
            sel.unregister(conn)
            fresh.discard(conn)
            conn.close()


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    raise_fd_limit()
    try:
        if kind == "sink":
            serve_sink(port)
        elif kind in ("echo", "echo-upgrade"):
            serve_echo(port, upgrade=kind == "echo-upgrade")
        else:
            raise SystemExit(f"unknown upstream {kind!r}")
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
