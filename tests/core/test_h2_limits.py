"""HTTP/2's known attacks, each sent by a hostile client that writes raw
frames (hyperframe, HPACK from hpack): the limit holds, the connection ends
with the right GOAWAY (or only the stream is reset), other connections are
still served, and nothing is left behind (leak check: tasks and fds)."""

from __future__ import annotations

import contextlib
import functools
import gc
import tracemalloc
from collections.abc import Iterator
from typing import Any

import h2.settings
import pytest
import trio
import trio.testing
from hpack import Encoder
from hyperframe.frame import (
    ContinuationFrame,
    Frame,
    HeadersFrame,
    PingFrame,
    PriorityFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from hijack import Limits, Request, Response, Server
from hijack._h2_client import open_h2_client
from hijack._h2_meter import PREFACE
from hijack.testing import MemoryListener, TestClient, open_test_client

from ..leakcheck import leak_fixture

no_leaks = leak_fixture()
pytestmark = pytest.mark.usefixtures("no_leaks")

ENHANCE_YOUR_CALM = 0xB
CANCEL = 0x8
GOAWAY, RST_STREAM = 0x7, 0x3


async def hello(request: Request) -> Response:
    return Response(200, body=b"hello")


def request_block(encoder: Encoder, path: str = "/") -> bytes:
    return encoder.encode(
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", path.encode()),
            (b":authority", b"t"),
        ]
    )


def headers(stream_id: int, block: bytes, *, end_headers: bool = True) -> bytes:
    frame = HeadersFrame(stream_id, block)
    frame.flags.add("END_STREAM")
    if end_headers:
        frame.flags.add("END_HEADERS")
    return frame.serialize()


def serialize(*frames: Frame) -> bytes:
    return b"".join(frame.serialize() for frame in frames)


async def open_hostile(listener: MemoryListener) -> trio.abc.Stream:
    stream = await listener.connect()
    await stream.send_all(PREFACE + SettingsFrame(0).serialize())
    return stream


async def frames_until_close(stream: trio.abc.Stream) -> list[tuple[int, int, bytes]]:
    """Every frame the server sends until it closes: (type, stream id,
    payload)."""
    data = b""
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(65536):
            data += chunk
    frames = []
    while len(data) >= 9:
        length = int.from_bytes(data[:3], "big")
        kind, stream_id = data[3], int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
        frames.append((kind, stream_id, data[9 : 9 + length]))
        data = data[9 + length :]
    return frames


def goaway_code(frames: list[tuple[int, int, bytes]]) -> int | None:
    for kind, _, payload in frames:
        if kind == GOAWAY:
            return int.from_bytes(payload[4:8], "big")
    return None


async def send_ignoring_close(stream: trio.abc.Stream, data: bytes) -> None:
    """A flood keeps sending after the server gave up: that is fine."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(data)


@contextlib.contextmanager
def memory_comes_back() -> Iterator[None]:
    """What hijack, h2, hpack and hyperframe allocate during the block is
    freed by its end (the connection closed), give or take 200 KB."""
    tracemalloc.start()
    try:
        gc.collect()
        before = tracemalloc.take_snapshot()
        yield
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ours = ("/hijack/", "/h2/", "/hpack/", "/hyperframe/")
    grown = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.size_diff > 0
        and any(part in stat.traceback[0].filename for part in ours)
    )
    assert grown < 200_000, f"{grown} bytes still held"


async def assert_others_served(client: TestClient) -> None:
    async with client.http2() as h2c:
        assert (await h2c.request("GET", "/")).body == b"hello"


async def test_rapid_reset_ends_the_connection_with_enhance_your_calm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """CVE-2023-44487: open a stream, reset it, again, as fast as possible."""
    started = 0

    async def counting(request: Request) -> Response:
        nonlocal started
        started += 1
        return await hello(request)

    limits = Limits(h2_max_resets_per_second=10)  # a budget of 100 at once
    async with open_test_client(counting, http2=True, limits=limits) as client:
        encoder = Encoder()
        flood = b"".join(
            headers(n, request_block(encoder)) + RstStreamFrame(n, CANCEL).serialize()
            for n in range(1, 2001, 2)
        )
        with memory_comes_back():
            stream = await open_hostile(client.listener)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_ignoring_close, stream, flood)
                frames = await frames_until_close(stream)
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
        assert goaway_code(frames) == ENHANCE_YOUR_CALM
        assert started <= 110  # not the 1000 streams sent
        started = 0
        await assert_others_served(client)


async def test_refused_streams_spend_the_reset_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Streams over the concurrency limit are refused alone; a client that
    keeps opening them anyway is a rapid reset by other means."""
    release = trio.Event()

    async def slow(request: Request) -> Response:
        await release.wait()
        return Response(200)

    limits = Limits(h2_max_concurrent_streams=2, h2_max_resets_per_second=5)
    async with open_test_client(slow, http2=True, limits=limits) as client:
        stream = await open_hostile(client.listener)
        encoder = Encoder()
        await stream.send_all(
            b"".join(headers(n, request_block(encoder)) for n in range(1, 400, 2))
        )
        frames = await frames_until_close(stream)
        refused = [f for f in frames if f[0] == RST_STREAM]
        assert 40 <= len(refused) <= 60  # the burst, then GOAWAY
        assert goaway_code(frames) == ENHANCE_YOUR_CALM
        await stream.aclose()
        release.set()


async def test_continuation_flood_is_cut_at_max_head_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """CVE-2024-27316: a header block that never ends, CONTINUATION after
    CONTINUATION."""
    limits = Limits(max_head_size=16 * 1024)
    async with open_test_client(hello, http2=True, limits=limits) as client:
        first = HeadersFrame(1, request_block(Encoder()))  # no END_HEADERS
        flood = first.serialize() + b"".join(
            ContinuationFrame(1, b"\x00" * 4096).serialize() for _ in range(1000)
        )
        with memory_comes_back():
            stream = await open_hostile(client.listener)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_ignoring_close, stream, flood)
                frames = await frames_until_close(stream)
            await stream.aclose()
            await trio.testing.wait_all_tasks_blocked()
        assert goaway_code(frames) == ENHANCE_YOUR_CALM
        await assert_others_served(client)


async def test_hpack_decoded_size_is_bounded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A tiny header block that names a big header from the dynamic table
    many times: small on the wire, large decoded."""
    limits = Limits(max_head_size=16 * 1024)
    async with open_test_client(hello, http2=True, limits=limits) as client:
        stream = await open_hostile(client.listener)
        encoder = Encoder()
        big = (b"x-big", b"a" * 3000)
        base = [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":path", b"/"),
            (b":authority", b"t"),
        ]
        first = encoder.encode([*base, big])  # enters the dynamic table
        second = encoder.encode(base + [big] * 40)  # 40 one-byte references
        assert len(second) < 200
        await stream.send_all(headers(1, first) + headers(3, second))
        frames = await frames_until_close(stream)
        assert goaway_code(frames) == ENHANCE_YOUR_CALM
        await stream.aclose()
        await assert_others_served(client)


@pytest.mark.parametrize(
    ("frame", "limit"),
    [
        (SettingsFrame(0), "h2_max_settings_per_second"),
        (PingFrame(0, b"12345678"), "h2_max_pings_per_second"),
        (
            PriorityFrame(1, depends_on=0, stream_weight=16),
            "h2_max_priority_per_second",
        ),
        (WindowUpdateFrame(0, 1), "h2_max_window_updates_per_second"),
    ],
    ids=["settings", "ping", "priority", "window-update"],
)
async def test_control_frame_floods(
    frame: Frame, limit: str, autojump_clock: trio.testing.MockClock
) -> None:
    options: dict[str, Any] = {limit: 10.0}
    limits = Limits(**options)  # a budget of 100 at once
    async with open_test_client(hello, http2=True, limits=limits) as client:
        stream = await open_hostile(client.listener)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send_ignoring_close, stream, frame.serialize() * 5000)
            frames = await frames_until_close(stream)
        assert goaway_code(frames) == ENHANCE_YOUR_CALM
        # The answers h2 owes (SETTINGS and PING acks) stopped at the budget.
        acks = [f for f in frames if f[0] in (0x4, 0x6)]
        assert len(acks) <= 110
        await stream.aclose()
        await assert_others_served(client)


async def test_the_same_frames_at_a_sane_rate_are_fine(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = Limits(h2_max_pings_per_second=10.0)
    async with (
        open_test_client(hello, http2=True, limits=limits) as client,
        client.http2() as h2c,
    ):
        assert (await h2c.request("GET", "/")).status == 200
        for _ in range(300):  # 30 s of pings at 10 a second
            h2c.h2.ping(b"12345678")
            await h2c.flush()
            await trio.sleep(0.1)
        assert (await h2c.request("GET", "/")).status == 200


async def test_a_window_never_opened_resets_the_stream_after_write_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The client says its windows are 0 and never opens them: the stream
    is reset after write_timeout; the connection serves other streams."""

    async def big(request: Request) -> Response:
        if request.path == "/small":
            return Response(200)  # no body: needs no window
        return Response(200, body=b"b" * 100_000)

    limits = Limits(write_timeout=7)
    async with open_test_client(big, http2=True, limits=limits) as client:
        conn = await client.open_connection()
        settings = {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0}
        async with open_h2_client(conn.stream, settings=settings) as h2c:
            stream = await h2c.open_stream(
                [
                    (b":method", b"GET"),
                    (b":scheme", b"https"),
                    (b":path", b"/"),
                    (b":authority", b"t"),
                ],
                end_stream=True,
            )
            assert (await h2c.response_head(stream)).status == 200
            started = trio.current_time()
            async with trio.open_nursery() as nursery:

                async def distract() -> None:
                    # Connection-level updates every second: they must not
                    # restart this stream's clock.
                    for _ in range(20):
                        await trio.sleep(1)
                        h2c.h2.increment_flow_control_window(1)
                        await h2c.flush()

                nursery.start_soon(distract)
                with pytest.raises(Exception, match="reset"):
                    await stream.receive(None)
                nursery.cancel_scope.cancel()
            assert trio.current_time() - started == pytest.approx(7, abs=0.5)
            assert (await h2c.request("GET", "/small")).status == 200


async def test_idle_connection_is_closed_with_goaway(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = Limits(idle_timeout=20, head_timeout=5)
    async with open_test_client(hello, http2=True, limits=limits) as client:
        # Before any request: head_timeout.
        stream = await open_hostile(client.listener)
        started = trio.current_time()
        frames = await frames_until_close(stream)
        assert goaway_code(frames) == 0
        assert trio.current_time() - started == pytest.approx(5, abs=0.5)
        await stream.aclose()
        # After one: idle_timeout.
        async with client.http2() as h2c:
            assert (await h2c.request("GET", "/")).status == 200
            started = trio.current_time()
            await h2c.closed.wait()
            assert trio.current_time() - started == pytest.approx(20, abs=0.5)
            assert h2c.goaway is not None and h2c.goaway.error_code == 0


async def test_flood_over_tcp_gives_back_fds() -> None:
    """Over real sockets: the flooding connections are closed (the leak
    check counts fds) and the server answers curl-like clients after."""
    server = Server(hello, http2=True, limits=Limits(h2_max_pings_per_second=1.0))
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(functools.partial(server.serve_tcp, 0))
        port = listeners[0].socket.getsockname()[1]
        for _ in range(5):
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(PREFACE + SettingsFrame(0).serialize())
                await send_ignoring_close(
                    stream, PingFrame(0, b"12345678").serialize() * 500
                )
                frames = await frames_until_close(stream)
            assert goaway_code(frames) == ENHANCE_YOUR_CALM
        with trio.fail_after(5):  # the server closes right after its GOAWAY
            for connection in server.connections:
                await connection.wait_closed()
        await server.shutdown(grace=0)
