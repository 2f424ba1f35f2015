"""One CONNECT tunnel through hijack to the sink (bench/upstreams.py),
over an HTTP/2 stream or over HTTP/1.1, from the same trio client so both
pay the same client costs but the framing: the ``CONNECT over HTTP/2`` row
of bench/h2_rows.py.

``python h2_tunnel.py PROXY_PORT SINK_PORT BYTES h2|h1 up|down SECONDS``
prints ``MOVED ELAPSED`` (bytes and seconds, the tunnel set up before the
clock starts).

``python h2_tunnel.py hold PROXY_PORT ECHO_PORT COUNT h2|h1`` opens COUNT
tunnels to the echo upstream (h2: all on one connection; h1: one
connection each), sends 4 bytes through each and reads them back, prints
``ready N``, then holds them until its stdin closes.

The HTTP/2 client is the test kit's (``hijack._h2_client``, the same
stream code as the server's)."""

from __future__ import annotations

import sys
import time

import trio

from hijack._h2_client import open_h2_client

CHUNK = 65536


async def transfer(
    stream: trio.abc.Stream, size: int, up: bool, limit: float
) -> tuple[int, float]:
    moved = 0
    t0 = time.monotonic()
    deadline = t0 + limit
    await stream.send_all(b"%s %d\n" % (b"U" if up else b"D", size))
    if up:
        block = b"x" * CHUNK
        while moved < size and time.monotonic() < deadline:
            n = min(CHUNK, size - moved)
            await stream.send_all(block[:n])
            moved += n
        if moved == size and await stream.receive_some(1) != b"K":
            raise ConnectionError("sink did not confirm the upload")
    else:
        while moved < size and time.monotonic() < deadline:
            data = await stream.receive_some(CHUNK)
            if not data:
                break
            moved += len(data)
    return moved, time.monotonic() - t0


async def hold(proxy_port: int, echo_port: int, count: int, framing: str) -> None:
    target = f"127.0.0.1:{echo_port}"
    streams: list[trio.abc.Stream] = []

    async def ping(stream: trio.abc.Stream) -> None:
        await stream.send_all(b"ping")
        got = b""
        while len(got) < 4:
            got += await stream.receive_some(4 - len(got))

    async def wait_for_stdin_eof() -> None:
        await trio.to_thread.run_sync(sys.stdin.read)

    if framing == "h2":
        transport = await trio.open_tcp_stream("127.0.0.1", proxy_port)
        async with open_h2_client(transport) as h2c:
            for _ in range(count):
                _, tunnel = await h2c.tunnel(target)
                assert tunnel is not None
                await ping(tunnel)
                streams.append(tunnel)
            print("ready", len(streams), flush=True)
            await wait_for_stdin_eof()
            for stream in streams:
                await stream.aclose()
        return
    for _ in range(count):
        sock = await trio.open_tcp_stream("127.0.0.1", proxy_port)
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
        await sock.send_all(request.encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += await sock.receive_some(1)
        await ping(sock)
        streams.append(sock)
    print("ready", len(streams), flush=True)
    await wait_for_stdin_eof()
    for stream in streams:
        await stream.aclose()


async def main() -> None:
    if sys.argv[1] == "hold":
        proxy, echo, count = map(int, sys.argv[2:5])
        await hold(proxy, echo, count, sys.argv[5])
        return
    proxy_port, sink_port, size = map(int, sys.argv[1:4])
    framing, direction, limit = sys.argv[4], sys.argv[5], float(sys.argv[6])
    target = f"127.0.0.1:{sink_port}"
    transport = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    if framing == "h2":
        async with open_h2_client(transport) as h2c:
            response, tunnel = await h2c.tunnel(target)
            if tunnel is None:
                raise ConnectionError(f"CONNECT answered {response.status}")
            moved, elapsed = await transfer(tunnel, size, direction == "up", limit)
            await tunnel.aclose()
    else:
        async with transport:
            request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"
            await transport.send_all(request.encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += await transport.receive_some(1)
            if b" 200 " not in head.split(b"\r\n")[0] + b" ":
                raise ConnectionError(f"CONNECT answered {head!r}")
            moved, elapsed = await transfer(transport, size, direction == "up", limit)
    print(moved, elapsed)


if __name__ == "__main__":
    trio.run(main)
