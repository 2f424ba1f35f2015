"""relay(): both directions, half-close, idle timeout, errors, cancel, and the
splice fast path (its pipe pool) against the copy loop, and the relay hub
(``Hub.relay``: one task for every tunnel): same tests, every engine.
"""

from __future__ import annotations

import errno
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from hijack import Connection, Hijacked, RelayStats, ReplayStream, _hub, relay
from hijack._splice import Pipe, PipePool, available

from ..helpers import read_exactly, read_until_closed, reset

MiB = 1 << 20


@dataclass
class Engine:
    """How a test's tunnel is relayed: ``relay(splice=...)`` or a hub."""

    name: str
    hub: _hub.Hub | None = None

    @property
    def splices(self) -> bool:
        return self.name != "copy"

    async def relay(
        self, a: trio.abc.Stream, b: trio.abc.Stream, **kwargs: Any
    ) -> RelayStats:
        if self.hub is not None:
            return await self.hub.relay(a, b, **kwargs)
        return await relay(a, b, splice=self.splices, **kwargs)


def engine_params(*names: str) -> list[Any]:
    skip = {
        "splice": pytest.mark.skipif(not available(), reason="no os.splice"),
        "hub": pytest.mark.skipif(not _hub.available(), reason="no epoll/splice"),
    }
    return [pytest.param(n, id=n, marks=skip.get(n, ())) for n in names]


async def make_engine(request: pytest.FixtureRequest) -> AsyncIterator[Engine]:
    if request.param != "hub":
        yield Engine(request.param)
        return
    hub = _hub.Hub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        yield Engine("hub", hub)
        nursery.cancel_scope.cancel()


engine = pytest.fixture(params=engine_params("splice", "copy", "hub"))(make_engine)
splicing_engine = pytest.fixture(params=engine_params("splice", "hub"))(make_engine)


@pytest.fixture
def pool() -> Iterator[PipePool]:
    pool = PipePool(max_idle=4)
    yield pool
    pool.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def socket_pair() -> tuple[trio.SocketStream, trio.SocketStream]:
    """A connected loopback TCP pair (client end, server end)."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server = await listeners[0].accept()
    assert isinstance(server, trio.SocketStream)
    return client, server


def hijacked(stream: trio.abc.Stream, buffered: bytes) -> Hijacked:
    """What ``request.hijack()`` hands a handler: the stream + read-ahead."""
    return Hijacked(stream, buffered, Connection(1, stream))


class Tunnel:
    """client <-> a ==relay== b <-> upstream, over real loopback sockets."""

    client: trio.SocketStream
    a: trio.abc.HalfCloseableStream
    b: trio.abc.HalfCloseableStream
    upstream: trio.SocketStream

    @classmethod
    async def open(
        cls, a_buffered: bytes | None = None, b_buffered: bytes | None = None
    ) -> Tunnel:
        self = cls()
        self.client, a = await socket_pair()
        b, self.upstream = await socket_pair()
        self.a = a if a_buffered is None else hijacked(a, a_buffered)
        # The upstream side as a tunnel client sees it after a handshake.
        self.b = b if b_buffered is None else ReplayStream(b, b_buffered)
        return self

    async def aclose(self) -> None:
        for stream in (self.client, self.a, self.b, self.upstream):
            await trio.aclose_forcefully(stream)


async def send_then_eof(stream: trio.abc.HalfCloseableStream, data: bytes) -> None:
    await stream.send_all(data)
    await stream.send_eof()


async def test_transfer_both_ways_buffered_first(
    engine: Engine, pool: PipePool
) -> None:
    up, down = os.urandom(5 * MiB + 7), os.urandom(3 * MiB + 3)
    tunnel = await Tunnel.open(a_buffered=b"client-early|", b_buffered=b"up-early|")
    got: dict[str, bytes] = {}

    async def receive(name: str, stream: trio.abc.ReceiveStream) -> None:
        got[name] = await read_until_closed(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_then_eof, tunnel.client, up)
        nursery.start_soon(send_then_eof, tunnel.upstream, down)
        nursery.start_soon(receive, "upstream", tunnel.upstream)
        nursery.start_soon(receive, "client", tunnel.client)
        stats = await engine.relay(tunnel.a, tunnel.b, pipe_pool=pool)
    await tunnel.aclose()

    assert got["upstream"] == b"client-early|" + up
    assert got["client"] == b"up-early|" + down
    assert stats == RelayStats(
        a_to_b=len(up) + len(b"client-early|"),
        b_to_a=len(down) + len(b"up-early|"),
        timed_out=False,
    )
    assert pool.in_use == 0
    # The splice path really spliced (it borrowed pipes); the copy path did not.
    assert (pool.idle > 0) is engine.splices


@pytest.mark.parametrize("first", ["client", "upstream"])
async def test_half_close_other_direction_continues(
    engine: Engine, pool: PipePool, first: str
) -> None:
    tunnel = await Tunnel.open()
    ender, other = (
        (tunnel.client, tunnel.upstream)
        if first == "client"
        else (tunnel.upstream, tunnel.client)
    )
    async with trio.open_nursery() as nursery:
        result: list[RelayStats] = []

        async def run_relay() -> None:
            result.append(await engine.relay(tunnel.a, tunnel.b, pipe_pool=pool))

        nursery.start_soon(run_relay)
        # One side says everything and half-closes...
        await send_then_eof(ender, b"request")
        assert await read_until_closed(other) == b"request"
        # ...and the other side, having seen EOF, still answers through it.
        big = os.urandom(2 * MiB)
        nursery.start_soon(send_then_eof, other, big)
        assert await read_until_closed(ender) == big
    await tunnel.aclose()
    forward = first == "client"
    assert result[0].a_to_b == (7 if forward else len(big))
    assert result[0].b_to_a == (len(big) if forward else 7)


async def test_idle_timeout_memory_streams(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, a = trio.testing.memory_stream_pair()
    b, upstream = trio.testing.memory_stream_pair()
    stats = RelayStats()
    async with trio.open_nursery() as nursery:

        async def run_relay() -> None:
            await relay(a, b, idle_timeout=10, stats=stats)

        nursery.start_soon(run_relay)
        start = trio.current_time()
        await client.send_all(b"ping")
        assert await upstream.receive_some() == b"ping"
        await trio.sleep(6)  # less than the timeout: traffic resets it
        await upstream.send_all(b"pong!")
        assert await client.receive_some() == b"pong!"
        # Then silence: both sides are closed 10 s after the last byte.
        assert await client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(16)
    assert stats == RelayStats(a_to_b=4, b_to_a=5, timed_out=True)
    with pytest.raises(trio.BrokenResourceError):
        await upstream.send_all(b"late")


async def test_idle_timeout_real_sockets(
    engine: Engine, pool: PipePool, autojump_clock: trio.testing.MockClock
) -> None:
    tunnel = await Tunnel.open(a_buffered=b"early")
    stats = RelayStats()
    async with trio.open_nursery() as nursery:

        async def run_relay() -> None:
            await engine.relay(
                tunnel.a, tunnel.b, idle_timeout=30, stats=stats, pipe_pool=pool
            )

        nursery.start_soon(run_relay)
        await tunnel.client.send_all(b"x" * 1000)
        assert await read_exactly(tunnel.upstream, 1005) == b"early" + b"x" * 1000
        start = trio.current_time()
        assert await tunnel.client.receive_some() == b""
        assert trio.current_time() - start == pytest.approx(30)
    await tunnel.aclose()
    assert stats == RelayStats(a_to_b=1005, b_to_a=0, timed_out=True)
    assert pool.in_use == 0


async def test_peer_reset_closes_both_and_leaks_nothing(engine: Engine) -> None:
    pool = PipePool()
    before = open_fds()
    tunnel = await Tunnel.open(a_buffered=b"")
    async with trio.open_nursery() as nursery:
        result: list[RelayStats] = []

        async def run_relay() -> None:
            result.append(await engine.relay(tunnel.a, tunnel.b, pipe_pool=pool))

        nursery.start_soon(run_relay)
        await tunnel.client.send_all(b"hello")
        assert await tunnel.upstream.receive_some() == b"hello"
        reset(tunnel.upstream)
        # The relay ends and closes the client side too.
        assert await read_until_closed(tunnel.client) == b""
    assert result[0] == RelayStats(a_to_b=5, b_to_a=0, timed_out=False)
    assert tunnel.a.stream.socket.fileno() == -1  # type: ignore[attr-defined]
    assert isinstance(tunnel.b, trio.SocketStream)
    assert tunnel.b.socket.fileno() == -1
    await tunnel.aclose()
    assert pool.in_use == 0
    pool.close()
    assert open_fds() == before


async def test_cancel_mid_transfer_leaks_nothing(engine: Engine) -> None:
    pool = PipePool()
    before = open_fds()
    tunnel = await Tunnel.open()
    stats = RelayStats()
    async with trio.open_nursery() as nursery:

        async def flood() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await tunnel.client.send_all(os.urandom(64 * MiB))

        nursery.start_soon(flood)
        idle_when_stuck: list[int] = []
        # The upstream never reads: the relay fills every buffer and blocks
        # with bytes in hand (in a pipe on the splice path). Then cancel it.
        with trio.CancelScope() as scope:

            async def stop_when_stuck() -> None:
                await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                if engine.splices:
                    # One direction holds a pipe with bytes in it.
                    assert pool.in_use == 1
                idle_when_stuck.append(pool.idle)
                scope.cancel()

            nursery.start_soon(stop_when_stuck)
            await engine.relay(tunnel.a, tunnel.b, stats=stats, pipe_pool=pool)
        assert scope.cancelled_caught
    assert 0 < stats.a_to_b < 64 * MiB
    assert pool.in_use == 0
    # The pipe with bytes in it was closed, never pooled.
    assert pool.idle == idle_when_stuck[0]
    await tunnel.aclose()
    pool.close()
    assert open_fds() == before


async def test_idle_tunnel_holds_no_pipe_and_pool_is_bounded(
    splicing_engine: Engine,
) -> None:
    pool = PipePool(max_idle=1)
    before = open_fds()
    tunnels = [await Tunnel.open(), await Tunnel.open()]
    async with trio.open_nursery() as nursery:
        for tunnel in tunnels:
            run = partial(splicing_engine.relay, tunnel.a, tunnel.b, pipe_pool=pool)
            nursery.start_soon(run)
        for tunnel in tunnels:
            nursery.start_soon(tunnel.client.send_all, os.urandom(MiB))
            nursery.start_soon(tunnel.upstream.send_all, os.urandom(MiB))
        for tunnel in tunnels:
            for end in (tunnel.client, tunnel.upstream):
                await read_exactly(end, MiB)
        # Both tunnels are open and idle now: they hold no pipe, and of the
        # pipes they borrowed only one is kept.
        await trio.testing.wait_all_tasks_blocked()
        assert pool.in_use == 0
        assert pool.idle == 1
        assert open_fds() == before + 8 + 2  # 8 sockets, 1 pipe (2 fds)
        for tunnel in tunnels:
            await tunnel.client.send_eof()
            await tunnel.upstream.send_eof()
    for tunnel in tunnels:
        await tunnel.aclose()
    pool.close()
    assert open_fds() == before


async def test_splice_true_refuses_what_it_cannot_splice(
    splicing_engine: Engine,
) -> None:
    a, client = trio.testing.memory_stream_pair()
    b, upstream = trio.testing.memory_stream_pair()
    with pytest.raises(ValueError, match=r"splice=True|plain trio\.SocketStream"):
        await splicing_engine.relay(a, b)
    # Closed all the same: the relay owns both ends once called.
    assert await client.receive_some() == b""
    assert await upstream.receive_some() == b""


async def test_tls_end_is_closed_on_eof_and_buffered_first() -> None:
    """TLS cannot half-close: on EOF from the other side the relay closes the
    TLS stream (the peer sees close_notify, i.e. EOF) and the relay ends."""
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("example.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    tls_client_raw, tls_server_raw = trio.testing.memory_stream_pair()
    tls_client = trio.SSLStream(
        tls_client_raw, client_ctx, server_hostname="example.test"
    )
    a = hijacked(trio.SSLStream(tls_server_raw, server_ctx, server_side=True), b"hi|")
    b, upstream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        result: list[RelayStats] = []

        async def run_relay() -> None:
            result.append(await relay(a, b))

        nursery.start_soon(run_relay)
        await tls_client.send_all(b"question")
        assert await read_exactly(upstream, 11) == b"hi|question"
        await send_then_eof(upstream, b"answer")
        assert await read_until_closed(tls_client) == b"answer"
    assert result[0] == RelayStats(a_to_b=11, b_to_a=6, timed_out=False)
    assert a.closed
    await tls_client.aclose()


class NoPipes(PipePool):
    """A pool whose pipes cannot be made, as when the process is out of fds."""

    def acquire(self) -> Pipe:
        raise OSError(errno.EMFILE, "Too many open files")


async def test_no_pipe_falls_back_to_copying(splicing_engine: Engine) -> None:
    """Out of fds for a pipe: the tunnel keeps working by copying."""
    tunnel = await Tunnel.open()
    data = os.urandom(MiB)
    async with trio.open_nursery() as nursery:
        run = partial(splicing_engine.relay, tunnel.a, tunnel.b, pipe_pool=NoPipes())
        nursery.start_soon(run)
        nursery.start_soon(tunnel.client.send_all, data)
        assert await read_exactly(tunnel.upstream, MiB) == data
        await tunnel.upstream.send_all(b"back")
        assert await read_exactly(tunnel.client, 4) == b"back"
        await tunnel.client.send_eof()
        await tunnel.upstream.send_eof()
    await tunnel.aclose()
