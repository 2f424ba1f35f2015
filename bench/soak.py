"""Soak test: mixed load on a hijack server in a subprocess; is it flat?

    python bench/soak.py [--seconds 120] [--concurrency 32] [--interval 5]

The server (this file run with ``--serve``) answers plain requests, an
``Upgrade: echo`` hijack, and, when those modules import, CONNECT tunnels
(``hijack.upgrades.connect.ConnectProxy``, to itself on loopback) and
WebSocket echo (``hijack.upgrades.websocket``). The parent drives requests,
echo upgrades, tunnels, WebSockets and bad input with bounded concurrency,
samples the server's RSS and open fds from /proc every few seconds, prints a
table and a verdict: "flat" or "growing", comparing the last third of the
samples after warm-up with the first third. Runs at most 10 minutes.
Everything is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

MAX_SECONDS = 600
GOOD = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"

# -- the server (subprocess) -----------------------------------------------------


def serve() -> None:
    from hijack import HTTPError, Limits, Request, Response, Server

    ws_handler = None
    try:
        from hijack.upgrades.websocket import websocket_handler

        async def ws_echo(ws: object) -> None:
            async for message in ws:  # type: ignore[attr-defined]
                await ws.send(message)  # type: ignore[attr-defined]

        ws_handler = websocket_handler(ws_echo)
    except ImportError:
        pass
    proxy = None
    try:
        from hijack.upgrades.connect import ConnectPolicy, ConnectProxy

        proxy = ConnectProxy(
            ConnectPolicy(allowed_ports=None, allow_private=True), idle_timeout=30
        )
    except ImportError:
        pass

    async def handler(request: Request) -> Response | None:
        if request.method == "CONNECT":
            if proxy is None:
                raise HTTPError(405)
            return await proxy(request)
        if request.path == "/ws" and ws_handler is not None:
            return await ws_handler(request)
        if request.path == "/echo":
            upgrade = Response(101, {"upgrade": "echo", "connection": "upgrade"})
            async with await request.hijack(upgrade) as stream:
                while data := await stream.receive_some():
                    await stream.send_all(data)
            return None
        if request.path == "/big":
            return Response(200, body=b"b" * 262_144)
        body = await request.read()
        return Response(200, {"content-type": "text/plain"}, b"ok %d" % len(body))

    async def main() -> None:
        limits = Limits(head_timeout=5, idle_timeout=10, body_timeout=10)
        server = Server(handler, limits=limits)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve_tcp, 0)
            features = f"connect={proxy is not None} websocket={ws_handler is not None}"
            port = listeners[0].socket.getsockname()[1]
            print(port, features, flush=True)
            await trio.to_thread.run_sync(sys.stdin.read)  # until the parent goes
            await server.shutdown(grace=1)

    trio.run(main)


# -- the load (parent) -----------------------------------------------------------------


@dataclass
class Stats:
    done: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = await stream.receive_some()
        if not chunk:
            raise EOFError(f"closed before {marker!r}: {data[:80]!r}")
        data += chunk
    return data


async def read_response(stream: trio.abc.ReceiveStream, extra: bytes = b"") -> bytes:
    """One response with Content-Length; returns its body."""
    data = extra
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some()
        if not chunk:
            raise EOFError("closed mid-head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 200 "):
        raise RuntimeError(head.split(b"\r\n")[0].decode())
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        chunk = await stream.receive_some()
        if not chunk:
            raise EOFError("closed mid-body")
        body += chunk
    return body


async def plain(port: int) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        for i in range(random.randint(1, 5)):
            if i % 2:
                payload = os.urandom(random.randint(0, 4096))
                await stream.send_all(
                    b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                    % len(payload)
                    + payload
                )
                assert await read_response(stream) == b"ok %d" % len(payload)
            else:
                await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                assert len(await read_response(stream)) == 262_144


async def echo(port: int) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\n\r\n")
        rest = (await read_until(stream, b"\r\n\r\n")).split(b"\r\n\r\n", 1)[1]
        for _ in range(random.randint(1, 20)):
            payload = os.urandom(random.randint(1, 8192))
            await stream.send_all(payload)
            while len(rest) < len(payload):
                rest += await stream.receive_some()
            assert rest[: len(payload)] == payload
            rest = rest[len(payload) :]
        await stream.send_eof()
        assert await stream.receive_some() == b""


async def tunnel(port: int) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
            % (port, port)
            + GOOD  # early data: replayed to the upstream
        )
        rest = (await read_until(stream, b"\r\n\r\n")).split(b"\r\n\r\n", 1)
        if not rest[0].startswith(b"HTTP/1.1 200"):
            raise RuntimeError(rest[0].split(b"\r\n")[0].decode())
        assert await read_response(stream, rest[1]) == b"ok 0"


async def websocket(port: int) -> None:
    from websockets.client import ClientProtocol
    from websockets.frames import BINARY, CLOSE, Frame
    from websockets.http11 import Response
    from websockets.uri import parse_uri

    ws = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:

        async def flush() -> None:
            for data in ws.data_to_send():
                if data:
                    await stream.send_all(data)

        events: list[object] = []

        async def next_event() -> object:
            while not events:
                data = await stream.receive_some()
                if data:
                    ws.receive_data(data)
                else:
                    ws.receive_eof()
                events.extend(ws.events_received())
                await flush()
                if not data and not events:
                    raise EOFError("closed")
            return events.pop(0)

        ws.send_request(ws.connect())
        await flush()
        response = await next_event()
        if not isinstance(response, Response) or ws.handshake_exc is not None:
            raise RuntimeError("websocket refused")
        for _ in range(random.randint(1, 10)):
            payload = os.urandom(random.randint(1, 4096))
            ws.send_binary(payload)
            await flush()
            event = await next_event()
            assert isinstance(event, Frame) and event.opcode is BINARY
            assert event.data == payload
        ws.send_close(1000)
        await flush()
        while True:
            event = await next_event()
            if isinstance(event, Frame) and event.opcode is CLOSE:
                break


BAD = [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40_000 + b"\r\n\r\n",
    b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET / HTTP/1.1\r\nHo",  # then vanish
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf",
]


async def bad(port: int) -> None:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        raw = random.choice(BAD)
        await stream.send_all(raw)
        if raw.endswith((b"Ho", b"half")):
            return  # the client vanishes mid-request
        try:
            while await stream.receive_some():
                pass
        except trio.BrokenResourceError:
            pass  # a reset after the error answer: fine for the soak


ACTIONS: dict[str, tuple[Callable[[int], Awaitable[None]], int]] = {
    "plain": (plain, 40),
    "echo": (echo, 15),
    "tunnel": (tunnel, 15),
    "websocket": (websocket, 15),
    "bad": (bad, 15),
}


def sample(pid: int) -> tuple[float, int]:
    """(RSS in MiB, open fds) of process ``pid``."""
    with open(f"/proc/{pid}/status") as status:
        rss_kib = next(
            int(line.split()[1]) for line in status if line.startswith("VmRSS")
        )
    return rss_kib / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def verdict(values: list[float], tolerance: float) -> str:
    third = max(1, len(values) // 3)
    first, last = statistics.mean(values[:third]), statistics.mean(values[-third:])
    trend = "growing" if last - first > tolerance else "flat"
    return f"{trend} (first third {first:.1f}, last third {last:.1f})"


async def soak(seconds: float, concurrency: int, interval: float) -> int:
    process = await trio.lowlevel.open_process(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stdin is not None
    line = (await read_until(process.stdout, b"\n")).decode()
    port = int(line.split()[0])
    print(f"server pid {process.pid} port {port} {line.split(' ', 1)[1].strip()}")
    features = line.split(" ", 1)[1]
    actions = {
        name: action
        for name, action in ACTIONS.items()
        if (name != "tunnel" or "connect=True" in features)
        and (name != "websocket" or "websocket=True" in features)
    }
    names = list(actions)
    weights = [actions[n][1] for n in names]
    stats = Stats()
    samples: list[tuple[float, float, int, int]] = []
    start = time.monotonic()
    limiter = trio.CapacityLimiter(concurrency)

    async def worker() -> None:
        while time.monotonic() - start < seconds:
            name = random.choices(names, weights)[0]
            async with limiter:
                try:
                    with trio.fail_after(30):
                        await actions[name][0](port)
                    stats.done[name] += 1
                except Exception as exc:
                    stats.failed[f"{name}: {type(exc).__name__} {exc}"[:90]] += 1

    async def sampler() -> None:
        print(f"{'t (s)':>7} {'RSS MiB':>8} {'fds':>5} {'ops':>8}")
        while True:
            rss, fds = sample(process.pid)
            elapsed = time.monotonic() - start
            ops = sum(stats.done.values())
            samples.append((elapsed, rss, fds, ops))
            print(f"{elapsed:7.0f} {rss:8.1f} {fds:5d} {ops:8d}", flush=True)
            if elapsed >= seconds:
                return
            await trio.sleep(min(interval, seconds - elapsed + 0.01))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(sampler)
        for _ in range(concurrency):
            nursery.start_soon(worker)
    # Let the server close what the last clients left, then sample at rest.
    await trio.sleep(1)
    rss, fds = sample(process.pid)
    await process.stdin.aclose()
    with trio.move_on_after(10):
        await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()

    print(f"\nat rest after the load: RSS {rss:.1f} MiB, {fds} fds")
    print(
        "done:",
        ", ".join(f"{k}={v}" for k, v in sorted(stats.done.items())),
        f"({sum(stats.done.values()) / seconds:.0f}/s)",
    )
    for what, count in stats.failed.most_common(10):
        print(f"failed x{count}: {what}")
    kept = samples[max(1, len(samples) // 5) :]  # drop the warm-up fifth
    if len(kept) < 3:
        print("verdict: too few samples (run longer)")
        return 1
    rss_verdict = verdict([s[1] for s in kept], tolerance=5.0)
    fd_verdict = verdict([float(s[2]) for s in kept], tolerance=10.0)
    print(f"verdict: RSS {rss_verdict}; fds {fd_verdict}")
    print(f"server exit code: {process.returncode}")
    growing = "growing" in rss_verdict + fd_verdict
    return 1 if growing or process.returncode != 0 else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--interval", type=float, default=5)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if not 1 <= args.concurrency <= 1000:
        parser.error("--concurrency must be in [1, 1000]")
    sys.exit(trio.run(soak, args.seconds, args.concurrency, args.interval))


if __name__ == "__main__":
    main()
