"""The relay hub beyond the relay contract (which ``test_relay.py`` runs over
it): no task per tunnel, backpressure, one tunnel's trouble staying its own,
idle deadlines from one heap, the rate-limit seam, and the hand-over from a
server handler (counted as hijacked until the hub closes it)."""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from hijack import Hub, HubTunnel, RelayStats, Request, Response, Server
from hijack._hub import available
from hijack._splice import Pipe, PipePool
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy

from ..conftest import StartServer
from ..helpers import (
    all_closed,
    read_exactly,
    read_head,
    read_until,
    read_until_closed,
    reset,
    tls_contexts,
)
from ..leakcheck import live_tasks
from ..upgrades.test_connect import MemoryServer, connect_head, status_of
from .test_relay import MiB, Tunnel

pytestmark = pytest.mark.skipif(not available(), reason="the hub needs Linux")


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    hub = Hub()
    async with trio.open_nursery() as nursery:
        await nursery.start(hub.serve)
        yield hub
        nursery.cancel_scope.cancel()


async def test_handed_over_tunnels_cost_no_task_and_stay_tracked(
    start_server: StartServer,
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    upstream_listener = listeners[0]
    port = upstream_listener.socket.getsockname()[1]
    proxy = ConnectProxy(ConnectPolicy(allowed_ports={port}, allow=["127.0.0.1"]))
    server, proxy_port = await start_server(proxy)
    await trio.testing.wait_all_tasks_blocked()
    tasks_before = len(live_tasks())

    pairs = []
    for i in range(20):
        client = await trio.open_tcp_stream("127.0.0.1", proxy_port)
        await client.send_all(connect_head(f"127.0.0.1:{port}") + b"early%02d" % i)
        head, rest = await read_head(client)
        assert status_of(head) == 200 and rest == b""
        upstream = await upstream_listener.accept()
        assert await read_exactly(upstream, 7) == b"early%02d" % i
        pairs.append((client, upstream))
    await trio.testing.wait_all_tasks_blocked()
    # Every handler returned: twenty open tunnels, not one task more.
    assert len(live_tasks()) == tasks_before
    assert server.open_hijacked_connections == 20
    assert proxy.open_tunnels == 20

    for i, (client, upstream) in enumerate(pairs):
        await upstream.send_all(b"answer %d" % i)
        assert await read_exactly(client, len(b"answer %d" % i)) == b"answer %d" % i
        await client.send_eof()
        assert await read_until_closed(upstream) == b""
        await upstream.aclose()
        assert await read_until_closed(client) == b""
        await client.aclose()
    await all_closed(server)
    assert server.open_hijacked_connections == 0
    assert proxy.open_tunnels == 0
    assert server.connections == []
    await upstream_listener.aclose()


async def test_backpressure_stops_reading_and_other_tunnels_flow(hub: Hub) -> None:
    pool = PipePool(max_idle=4)
    stuck, other = await Tunnel.open(), await Tunnel.open()
    stats = RelayStats()
    hub.add(stuck.a, stuck.b, stats=stats, pipe_pool=pool)
    hub.add(other.a, other.b)
    data = os.urandom(24 * MiB)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck.client.send_all, data)
        # The upstream does not read: every buffer fills, the hub holds one
        # pipe with bytes in it and stops reading the client.
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        moved = stats.a_to_b
        assert 0 < moved < len(data)
        assert pool.in_use == 1
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)
        assert stats.a_to_b == moved
        # Meanwhile another tunnel answers at once.
        await other.client.send_all(b"ping")
        assert await read_exactly(other.upstream, 4) == b"ping"
        await other.upstream.send_all(b"pong")
        assert await read_exactly(other.client, 4) == b"pong"
        # The upstream reads at last: every byte, in order.
        received = bytearray()
        while len(received) < len(data):
            received += await stuck.upstream.receive_some()
        assert received == data
    assert pool.in_use == 0
    for tunnel in (stuck, other):
        await tunnel.aclose()
    pool.close()


async def test_a_reset_and_a_failing_callback_touch_no_other_tunnel(
    hub: Hub, caplog: pytest.LogCaptureFixture
) -> None:
    broken, healthy = await Tunnel.open(), await Tunnel.open()

    def explode(tunnel: HubTunnel) -> None:
        raise RuntimeError("callback bug")

    ended = hub.add(broken.a, broken.b, on_close=explode)
    kept = hub.add(healthy.a, healthy.b)
    await broken.client.send_all(b"x")
    assert await read_exactly(broken.upstream, 1) == b"x"
    reset(broken.upstream)
    assert await read_until_closed(broken.client) == b""
    await ended.wait_closed()
    assert (ended.reason, ended.stats.a_to_b) == ("error", 1)
    assert "callback bug" in caplog.text
    assert not kept.closed
    await healthy.client.send_all(b"still here")
    assert await read_exactly(healthy.upstream, 10) == b"still here"
    assert hub.open_tunnels == 1
    for tunnel in (broken, healthy):
        await tunnel.aclose()


async def test_idle_deadlines_from_one_heap(
    hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    closed: list[tuple[str, float]] = []
    tunnels = []
    for name, timeout in (("thirty", 30), ("ten", 10), ("twenty", 20)):
        tunnel = await Tunnel.open()
        tunnels.append(tunnel)

        def record(t: HubTunnel, name: str = name) -> None:
            closed.append((name, trio.current_time() - start))

        hub.add(tunnel.a, tunnel.b, idle_timeout=timeout, on_close=record)
    # Traffic at t=15 on the "twenty" tunnel pushes its deadline to 35.
    await trio.sleep(15)
    await tunnels[2].client.send_all(b"keepalive")
    assert await read_exactly(tunnels[2].upstream, 9) == b"keepalive"
    for tunnel in tunnels:
        assert await read_until_closed(tunnel.client) == b""
    assert [name for name, _ in closed] == ["ten", "thirty", "twenty"]
    assert [when for _, when in closed] == pytest.approx([10, 30, 35])
    for tunnel in tunnels:
        await tunnel.aclose()


class TokenBucket:
    """``rate`` bytes a second, bursts up to ``rate``: a Limiter."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.tokens = float(rate)
        self.last = trio.current_time()

    def _refill(self, now: float) -> None:
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now

    def allowance(self, now: float) -> int:
        self._refill(now)
        return int(self.tokens)

    def consume(self, n: int, now: float) -> None:
        self._refill(now)
        self.tokens -= n

    def resume_at(self, now: float) -> float:
        # Wake when a tenth of a second's worth is back: few, larger reads.
        return now + max(0.0, self.rate / 10 - self.tokens) / self.rate


async def test_a_limiter_paces_a_tunnel(
    hub: Hub, autojump_clock: trio.testing.MockClock
) -> None:
    tunnel = await Tunnel.open()
    handle = hub.add(tunnel.a, tunnel.b)
    handle.limiter = TokenBucket(10_000)
    data = os.urandom(50_000)
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tunnel.client.send_all, data)
        assert await read_exactly(tunnel.upstream, len(data)) == data
    # 10,000 bytes at once (the burst), then 40,000 at 10,000 a second.
    assert trio.current_time() - start == pytest.approx(4, abs=0.5)
    await tunnel.aclose()


async def test_hand_over_refused_where_there_is_no_plain_socket(
    memory_server: MemoryServer,
) -> None:
    outcomes: list[object] = []

    async def handler(request: Request) -> Response | None:
        hijacked = await request.hijack()
        sock_a, sock_b = socket.socketpair()
        upstream = trio.SocketStream(trio.socket.from_stdlib_socket(sock_a))
        outcomes.append(hijacked.can_hand_to_hub(upstream))
        try:
            hijacked.hand_to_hub(upstream)
        except ValueError as exc:
            outcomes.append(str(exc))
        await upstream.aclose()
        sock_b.close()
        return None  # the server closes the hijacked stream: we still own it

    _, listener = await memory_server(handler)
    client = await listener.connect()
    await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert await read_until(client, b"never") == b""
    assert outcomes[0] is False
    assert "plain trio.SocketStream" in str(outcomes[1])
    await client.aclose()


async def test_shutdown_closes_handed_over_tunnels_at_the_end_of_grace(
    start_server: StartServer, autojump_clock: trio.testing.MockClock
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    proxy = ConnectProxy(ConnectPolicy(allowed_ports={port}, allow=["127.0.0.1"]))
    server, proxy_port = await start_server(proxy)
    client = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    await client.send_all(connect_head(f"127.0.0.1:{port}"))
    assert status_of((await read_head(client))[0]) == 200
    upstream = await listeners[0].accept()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.shutdown, 20)
        await trio.sleep(15)
        assert server.open_hijacked_connections == 1  # still served in grace
        await client.send_all(b"late")
        assert await read_exactly(upstream, 4) == b"late"
        assert await read_until_closed(client) == b""
    assert trio.current_time() - start == pytest.approx(20)
    assert await read_until_closed(upstream) == b""
    assert server.open_hijacked_connections == 0
    assert proxy.open_tunnels == 0
    for stream in (client, upstream, listeners[0]):
        await stream.aclose()


async def test_a_tls_client_side_keeps_the_task_relay(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    server_ctx, client_ctx = tls_contexts("127.0.0.1")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    proxy = ConnectProxy(ConnectPolicy(allowed_ports={port}, allow=["127.0.0.1"]))
    server = Server(proxy)
    serve = functools.partial(server.serve_tcp, 0, ssl_context=server_ctx)
    proxy_port = (await nursery.start(serve))[0].socket.getsockname()[1]
    raw = await trio.open_tcp_stream("127.0.0.1", proxy_port)
    client = trio.SSLStream(raw, client_ctx, server_hostname="127.0.0.1")
    await client.send_all(connect_head(f"127.0.0.1:{port}"))
    assert status_of((await read_head(client))[0]) == 200
    upstream = await listeners[0].accept()
    await client.send_all(b"over tls")
    assert await read_exactly(upstream, 8) == b"over tls"
    # Relayed by the handler's task, not by the hub.
    assert server.hub is not None and server.hub.open_tunnels == 0
    assert proxy.open_tunnels == 1
    await upstream.send_all(b"back")
    assert await read_exactly(client, 4) == b"back"
    await upstream.aclose()
    assert await read_until_closed(client) == b""
    await all_closed(server)
    await trio.testing.wait_all_tasks_blocked()
    assert proxy.open_tunnels == 0
    await client.aclose()
    await listeners[0].aclose()
    await server.shutdown(grace=0)


async def test_closed_tunnels_leave_the_deadline_heap(hub: Hub) -> None:
    """A closed tunnel must not stay referenced until its idle deadline: at
    1,000 tunnels a second and a 300 s timeout that is 300,000 of them."""
    for _ in range(300):
        tunnel = await Tunnel.open()
        handle = hub.add(tunnel.a, tunnel.b, idle_timeout=300)
        handle.close()
        await tunnel.aclose()
    live = await Tunnel.open()
    kept = hub.add(live.a, live.b, idle_timeout=300)
    entries = len(hub._heap)  # private: what the hub keeps alive
    assert entries <= 2 * 64 + 1
    kept.close()
    await live.aclose()


class CountingPool(PipePool):
    """A pipe pool that counts how often a pipe was borrowed."""

    def __init__(self) -> None:
        super().__init__(max_idle=2)
        self.borrowed = 0

    def acquire(self) -> Pipe:
        self.borrowed += 1
        return super().acquire()


async def test_small_messages_are_copied_and_bulk_is_spliced(hub: Hub) -> None:
    pool = CountingPool()
    tunnel = await Tunnel.open()
    hub.add(tunnel.a, tunnel.b, pipe_pool=pool)
    await tunnel.client.send_all(b"first")
    assert await read_exactly(tunnel.upstream, 5) == b"first"
    after_first = pool.borrowed
    for i in range(20):  # interactive traffic: no pipe for any of these
        await tunnel.client.send_all(b"request %d" % i)
        assert await read_exactly(tunnel.upstream, len(b"request %d" % i))
    assert pool.borrowed == after_first
    bulk = os.urandom(8 * MiB)  # bulk data goes back to splicing
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tunnel.client.send_all, bulk)
        received = bytearray()
        while len(received) < len(bulk):
            received += await tunnel.upstream.receive_some()
    assert received == bulk
    assert pool.borrowed > after_first
    await tunnel.aclose()
    pool.close()


async def test_bytes_and_eof_that_arrive_together_are_both_passed_on(
    hub: Hub,
) -> None:
    """A short read ends a flow's turn (epoll reports the next arrival), but
    not when the peer has hung up: no edge would follow, so its EOF is read
    at once. Here the bytes and the FIN are queued before the hand-over."""
    tunnel = await Tunnel.open()
    await tunnel.client.send_all(b"last words")
    await tunnel.client.send_eof()
    await tunnel.upstream.send_all(b"and mine")
    hub.add(tunnel.a, tunnel.b)
    with trio.fail_after(10):  # a guard: the EOF comes at once or never
        assert await read_until_closed(tunnel.upstream) == b"last words"
        await tunnel.upstream.send_eof()
        assert await read_until_closed(tunnel.client) == b"and mine"
    await tunnel.aclose()


async def test_messages_after_a_short_read_still_flow(hub: Hub) -> None:
    """Each message is one short read; the next arrives on a new edge."""
    tunnel = await Tunnel.open()
    hub.add(tunnel.a, tunnel.b)
    for i in range(50):
        message = b"message %d" % i
        await tunnel.client.send_all(message)
        assert await read_exactly(tunnel.upstream, len(message)) == message
        await tunnel.upstream.send_all(message[::-1])
        assert await read_exactly(tunnel.client, len(message)) == message[::-1]
    await tunnel.aclose()
