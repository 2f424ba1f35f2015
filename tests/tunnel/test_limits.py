"""Limits per client and per user: token buckets, bandwidth on the copy loop
and on the splice path (virtual time: the autojump clock), tunnels per
client address and per user (429)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import pytest
import trio
import trio.testing

from hijack import RelayStats, Throttle, TokenBucket, relay
from hijack.tunnel.limits import TooManyTunnels, TunnelLimits
from hijack.tunnel.users import PasswordHash, User, Users, hash_password
from hijack.upgrades.connect import ConnectProxy
from hijack.upgrades.tcp import TCPUpgrade

from ..conftest import StartServer
from ..helpers import (
    banner,
    exchange,
    read_exactly,
    read_head,
    read_until_closed,
    start_upstream,
)
from ..upgrades.test_connect import basic, connect_head, loopback_policy, status_of

RATE = 100_000  # bytes per second
BURST = 25_000  # a quarter second of RATE


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(RATE)
    assert bucket.burst == BURST
    assert bucket.available(0.0) == BURST  # full at start
    bucket.consume(BURST)
    assert bucket.available(0.0) == 0
    assert bucket.available(0.1) == 10_000
    assert bucket.delay(0.1, 20_000) == pytest.approx(0.1)
    assert bucket.available(100.0) == BURST  # never more than the burst
    assert TokenBucket(1_000).burst == 16 * 1024  # at least one grant


def test_throttle_takes_the_smallest_bucket_and_grants_in_chunks() -> None:
    own, shared = TokenBucket(RATE), TokenBucket(RATE * 10)
    throttle = Throttle(own, shared)
    assert throttle.allowance(0.0) == BURST
    throttle.consume(BURST)
    assert shared.available(0.0) == shared.burst - BURST  # both pay
    # Below one grant (16 KiB) the answer is "wait", and for how long.
    assert throttle.allowance(0.1) == 0
    assert throttle.delay(0.1) == pytest.approx(16 * 1024 / RATE - 0.1)
    assert throttle.allowance(0.2) == 20_000


async def pump_through(
    a: trio.abc.Stream,
    b_peer: trio.abc.Stream,
    size: int,
) -> float:
    """Send ``size`` bytes into ``a``'s peer side and read them at ``b``'s:
    the virtual time it took."""
    started = trio.current_time()
    payload = bytes(range(256)) * (size // 256)
    async with trio.open_nursery() as nursery:

        async def send() -> None:
            await a.send_all(payload)
            await a.send_eof()  # type: ignore[attr-defined]

        nursery.start_soon(send)
        assert await read_exactly(b_peer, len(payload)) == payload
    return trio.current_time() - started


@pytest.mark.parametrize("splice", [False, True])
async def test_relay_holds_the_rate_both_ways(
    autojump_clock: trio.testing.MockClock, splice: bool
) -> None:
    """1 MB each way at 100 kB/s: (1 MB - burst) / rate = 9.75 s, on the copy
    loop (memory streams) and on the splice path (loopback sockets)."""
    pairs = [await socket_pair() if splice else memory_pair() for _ in range(2)]
    (client, a), (b, server) = pairs
    up, down = Throttle(TokenBucket(RATE)), Throttle(TokenBucket(RATE))
    stats = RelayStats()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: relay(a, b, stats=stats, splice=splice, throttle=(up, down))
        )
        upward = await pump_through(client, server, 1_000_000)
        downward = await pump_through(server, client, 1_000_000)
    assert upward == pytest.approx(9.75, abs=0.3)
    assert downward == pytest.approx(9.75, abs=0.3)
    assert stats.a_to_b == stats.b_to_a == 999_936
    for stream in (client, server):
        await stream.aclose()


def memory_pair() -> tuple[trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream]:
    return trio.testing.memory_stream_pair()


async def socket_pair() -> tuple[
    trio.abc.HalfCloseableStream, trio.abc.HalfCloseableStream
]:
    """Two connected loopback TCP streams (plain sockets: splice applies)."""
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    with listener:
        client = trio.socket.socket()
        await client.connect(listener.getsockname())
        server, _ = await listener.accept()
    return trio.SocketStream(client), trio.SocketStream(server)


async def test_unthrottled_relay_is_not_slowed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, a = await socket_pair()
    b, server = await socket_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: relay(a, b, throttle=(None, None)))
        assert await pump_through(client, server, 1_000_000) == 0
        await server.send_eof()
        assert await read_until_closed(client) == b""
    for stream in (client, server):
        await stream.aclose()


async def test_user_bandwidth_is_shared_by_their_tunnels(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two tunnels of one user at 100 kB/s for the user: 2 x 500 kB take
    about as long as 1 MB on one tunnel."""
    limits = TunnelLimits(user_bandwidth=RATE)
    alice = User("alice", PasswordHash.parse(hash_password("x", n=16, r=1, p=1)))
    leases = [limits.acquire("10.0.0.1", alice), limits.acquire("10.0.0.2", alice)]
    times: list[float] = []
    async with trio.open_nursery() as nursery:
        for lease in leases:
            client, a = trio.testing.memory_stream_pair()
            b, server = trio.testing.memory_stream_pair()
            nursery.start_soon(functools.partial(relay, a, b, throttle=lease.throttle))

            async def one(
                client: trio.abc.Stream = client, server: trio.abc.Stream = server
            ) -> None:
                times.append(await pump_through(client, server, 500_000))
                await client.aclose()
                await server.aclose()

            nursery.start_soon(one)
    assert max(times) == pytest.approx(9.75, abs=0.5)
    for lease in leases:
        lease.release()
    assert not limits.by_user and not limits.by_client


def test_tunnel_counts_per_client_and_per_user() -> None:
    limits = TunnelLimits(per_client=2, per_user=3)
    alice = User("alice", PasswordHash.parse(hash_password("x", n=16, r=1, p=1)))
    vip = User("vip", alice.password, max_tunnels=5)
    first = limits.acquire("1.1.1.1", alice)
    limits.acquire("1.1.1.1", alice)
    with pytest.raises(TooManyTunnels, match=r"client 1\.1\.1\.1"):
        limits.acquire("1.1.1.1", None)
    limits.acquire("2.2.2.2", alice)
    with pytest.raises(TooManyTunnels, match="user alice"):
        limits.acquire("3.3.3.3", alice)
    for client in "4567":
        limits.acquire(client, vip)  # her own max_tunnels: 5
    first.release()
    first.release()  # idempotent
    limits.acquire("3.3.3.3", alice)
    assert limits.by_client["1.1.1.1"] == 1


# -- through the CONNECT proxy --------------------------------------------------------------


async def test_too_many_tunnels_per_client_gets_429(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        await read_until_closed(stream)

    upstream_port = await start_upstream(nursery, upstream)
    limits = TunnelLimits(per_client=1)
    proxy = ConnectProxy(loopback_policy(upstream_port), limits=limits)
    _, port = await start_server(proxy)
    target = f"127.0.0.1:{upstream_port}"
    await second_gets_429(port, connect_head(target), first_status=200)
    # The tunnel's end gives its place back.
    await wait_for_zero(lambda: limits.by_client.total())
    async with await trio.open_tcp_stream("127.0.0.1", port) as again:
        await again.send_all(connect_head(target))
        head, _ = await read_head(again)
        assert status_of(head) == 200


async def second_gets_429(port: int, request: bytes, *, first_status: int) -> None:
    """A first connection sends ``request``, gets ``first_status`` and holds
    its tunnel open while a second one sending the same is refused 429."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as first:
        await first.send_all(request)
        head, _ = await read_head(first)
        assert status_of(head) == first_status
        assert status_of(await exchange(port, request)) == 429


async def wait_for_zero(count: Callable[[], int]) -> None:
    """Until ``count()`` is 0: the server's tasks (in this process) finish
    on their own; look each time every task is blocked, I/O seen."""
    with trio.fail_after(5):
        while count():
            await trio.testing.wait_all_tasks_blocked()


async def test_too_many_tunnels_per_user_gets_429(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        await read_until_closed(stream)

    upstream_port = await start_upstream(nursery, upstream)
    password = PasswordHash.parse(hash_password("pw", n=16, r=1, p=1))
    users = Users.from_mapping(
        [
            User(
                "alice",
                password,
                allow=("127.0.0.1",),
                ports=frozenset({upstream_port}),
                max_tunnels=1,
            )
        ]
    )
    proxy = ConnectProxy(users=users, limits=TunnelLimits())
    _, port = await start_server(proxy)
    target = f"127.0.0.1:{upstream_port}"
    auth = basic("alice", "pw")
    await second_gets_429(port, connect_head(target, auth), first_status=200)


async def timed_download(port: int, request: bytes) -> tuple[int, bytes, float]:
    """Send ``request`` (a CONNECT or an Upgrade: tcp); the answer's status,
    every byte the tunnel brings until it closes, and how long (on the trio
    clock) those took after the answer."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(request)
        head, rest = await read_head(client)
        started = trio.current_time()
        body = rest + await read_until_closed(client)
        return status_of(head), body, trio.current_time() - started


async def test_tunnel_bandwidth_through_the_proxy(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    start_server: StartServer,
) -> None:
    """The spliced tunnel of a real CONNECT holds the per-tunnel rate."""
    payload = b"x" * 500_000

    upstream_port = await start_upstream(nursery, banner(payload))
    proxy = ConnectProxy(
        loopback_policy(upstream_port), limits=TunnelLimits(tunnel_bandwidth=RATE)
    )
    _, port = await start_server(proxy)
    status, body, elapsed = await timed_download(
        port, connect_head(f"127.0.0.1:{upstream_port}")
    )
    assert status == 200 and body == payload
    assert elapsed == pytest.approx((500_000 - BURST) / RATE, abs=0.3)


async def test_tcp_upgrade_per_client_limit_gets_429(
    nursery: trio.Nursery, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        await read_until_closed(stream)

    caplog.set_level(logging.INFO, logger="hijack.tcp")  # the tunnel's end line
    upstream_port = await start_upstream(nursery, upstream)
    limits = TunnelLimits(per_client=1)
    handler = TCPUpgrade(("127.0.0.1", upstream_port), limits=limits)
    _, port = await start_server(handler)
    head = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    await second_gets_429(port, head, first_status=101)
    assert "client 127.0.0.1 has 1 tunnels open" in caplog.text
    await wait_for_zero(lambda: limits.by_client.total())


async def test_tcp_upgrade_bandwidth(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    start_server: StartServer,
) -> None:
    """A throttled Upgrade: tcp stream keeps the task relay and its rate."""
    payload = b"y" * 300_000

    upstream_port = await start_upstream(nursery, banner(payload))
    limits = TunnelLimits(tunnel_bandwidth=RATE)
    _, port = await start_server(
        TCPUpgrade(("127.0.0.1", upstream_port), limits=limits)
    )
    head = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    status, body, elapsed = await timed_download(port, head)
    assert status == 101 and body == payload
    assert elapsed == pytest.approx((300_000 - BURST) / RATE, abs=0.3)
    await wait_for_zero(lambda: limits.by_client.total())
