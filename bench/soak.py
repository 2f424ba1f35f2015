"""Soak test: mixed load on a hijack server in a subprocess; is it flat?

    python bench/soak.py [--seconds 120] [--concurrency 32] [--interval 5]
                         [--per-kind 1500]

The server (this file run with ``--serve``) answers plain requests, an
``Upgrade: echo`` hijack, and, when those modules import, CONNECT tunnels
(``hijack.upgrades.connect.ConnectProxy``, to itself on loopback) and
WebSocket echo (``hijack.upgrades.websocket``). The parent drives requests,
echo upgrades, tunnels, WebSockets and bad input with bounded concurrency,
samples the server's RSS and open fds from /proc every few seconds, prints a
table and a verdict: "flat" or "growing", from the least-squares slope of RSS
over the run after warm-up (flat: under 100 KiB a minute). Then, on the same
server, each kind of operation alone (every bad-input kind on its own) in a
few batches: the RSS growth per operation of each kind, so a leak names the
input that causes it. Runs at most an hour (`make soak SECONDS=600` is the
long mode). Everything is on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import itertools
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

MAX_SECONDS = 3600
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
    from websockets.frames import Frame, Opcode
    from websockets.http11 import Response
    from websockets.uri import parse_uri

    ws = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/ws"), max_size=None)
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
                await flush()  # pongs, the close reply
                if not data and not events:
                    raise EOFError("closed")
            return events.pop(0)

        ws.send_request(ws.connect())
        await flush()
        response = await next_event()
        if not isinstance(response, Response) or response.status_code != 101:
            raise RuntimeError("websocket refused")
        for _ in range(random.randint(1, 10)):
            payload = os.urandom(random.randint(1, 4096))
            ws.send_binary(payload)
            await flush()
            event = await next_event()
            assert isinstance(event, Frame) and event.opcode is Opcode.BINARY
            assert event.data == payload
        ws.send_close(1000)
        await flush()
        while True:
            event = await next_event()
            if isinstance(event, Frame) and event.opcode is Opcode.CLOSE:
                break


BAD = {
    "tls-on-plain-port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "length-and-chunked": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "huge-head": b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 40_000 + b"\r\n\r\n",
    "http2-version": b"GET / HTTP/2.0\r\nHost: x\r\n\r\n",
    "bad-chunk": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"\r\nzz\r\n",
    "half-head": b"GET / HTTP/1.1\r\nHo",  # then vanish
    "half-body": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nhalf",
}
VANISH = {"half-head", "half-body"}  # the client goes mid-request


async def bad(port: int, kind: str | None = None) -> None:
    kind = kind or random.choice(list(BAD))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(BAD[kind])
        if kind in VANISH:
            return
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


RSS_SLOPE_LIMIT = 100 / 1024  # MiB a minute: the bar for "flat"
FD_SLOPE_LIMIT = 1.0  # fds a minute
WARM_UP_SECONDS = 30


def verdict(
    minutes: list[float], values: list[float], limit: float, unit: str
) -> tuple[bool, str]:
    """(flat?, text): the least-squares slope of ``values`` over time. A
    slope uses every sample, so one burst at either end cannot decide it the
    way comparing two averages can."""
    slope = statistics.linear_regression(minutes, values).slope
    flat = slope < limit
    return flat, f"{'flat' if flat else 'growing'} ({slope:+.3f} {unit}/minute)"


async def growth_per_kind(
    port: int, pid: int, count: int, concurrency: int
) -> dict[str, float]:
    """RSS growth in bytes per operation, each kind alone: the median of three
    batches (a leak grows every batch alike; the allocator grows in steps)."""
    kinds: dict[str, Callable[[int], Awaitable[None]]] = {
        name: action for name, (action, _) in ACTIONS.items() if name != "bad"
    }
    for kind in BAD:
        kinds[f"bad: {kind}"] = functools.partial(bad, kind=kind)
    limiter = trio.CapacityLimiter(concurrency)
    results: dict[str, float] = {}
    for name, action in kinds.items():

        async def one(action: Callable[[int], Awaitable[None]] = action) -> None:
            async with limiter:
                with contextlib.suppress(Exception), trio.move_on_after(30):
                    await action(port)

        sizes = []
        batch = max(1, count // 3)
        for _ in range(4):  # the first batch warms this kind up
            async with trio.open_nursery() as nursery:
                for _ in range(batch):
                    nursery.start_soon(one)
            sizes.append(sample(pid)[0] * 1024 * 1024)
        growth = [b - a for a, b in itertools.pairwise(sizes)]
        results[name] = statistics.median(growth) / batch
        print(f"{name:>24}: {results[name]:+8.1f} bytes/op  (batches of {batch})")
    return results


async def soak(seconds: float, concurrency: int, interval: float, per_kind: int) -> int:
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
    if per_kind:
        print(f"\nRSS growth per operation, each kind alone ({per_kind} ops each):")
        await growth_per_kind(port, process.pid, per_kind, concurrency)
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
    # Warm-up (pools, caches, arenas filling) is the first fifth, at least
    # WARM_UP_SECONDS; a slope needs a minute after it to mean anything.
    warm_up = max(seconds / 5, WARM_UP_SECONDS)
    kept = [s for s in samples if s[0] >= warm_up]
    if len(kept) < 3 or kept[-1][0] - kept[0][0] < 60:
        print("verdict: too short to judge a slope (use --seconds 120 or more)")
        return 1
    minutes = [s[0] / 60 for s in kept]
    rss_flat, rss_text = verdict(minutes, [s[1] for s in kept], RSS_SLOPE_LIMIT, "MiB")
    fd_flat, fd_text = verdict(
        minutes, [float(s[2]) for s in kept], FD_SLOPE_LIMIT, "fds"
    )
    print(f"verdict: RSS {rss_text}; fds {fd_text}")
    print(f"server exit code: {process.returncode}")
    return 0 if rss_flat and fd_flat and process.returncode == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--interval", type=float, default=5)
    parser.add_argument(
        "--per-kind", type=int, default=1500, help="ops of each kind alone (0: skip)"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    if not 0 < args.seconds <= MAX_SECONDS:
        parser.error(f"--seconds must be in (0, {MAX_SECONDS}]")
    if not 1 <= args.concurrency <= 1000:
        parser.error("--concurrency must be in [1, 1000]")
    sys.exit(
        trio.run(soak, args.seconds, args.concurrency, args.interval, args.per_kind)
    )


if __name__ == "__main__":
    main()
