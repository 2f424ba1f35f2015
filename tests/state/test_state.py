"""hijack.state: where limits are counted. The shared-memory table as two
workers see it, and the Redis state against a real redis-server (and
against fakes that hang or answer garbage)."""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
import trio
import trio.testing

from hijack.state import (
    Bound,
    Lease,
    LimitReached,
    LocalState,
    State,
    StateUnavailable,
)
from hijack.state._redis import RedisState, StateStartError
from hijack.state._shared_memory import SharedState, Table
from hijack.tunnel.limits import LimitsUnavailable, TooManyTunnels, TunnelLimits
from hijack.tunnel.users import PasswordHash, User, hash_password

from ..daemons import Daemons
from ..helpers import capture_log
from ..redis_daemon import collect_coredis_garbage, needs_redis, start_redis, stop

CLIENT = Bound("client:203.0.113.5", 1)
ALICE = Bound("user:alice", 2)


def test_local_state_counts_and_gives_back() -> None:
    state = LocalState()
    lease = state.take_now([CLIENT, ALICE])
    with pytest.raises(LimitReached) as refused:
        state.take_now([CLIENT])
    assert refused.value.bound == CLIENT
    lease.release()
    lease.release()  # idempotent
    assert not state.counts
    state.take_now([CLIENT]).release()


def test_shared_table_holds_a_limit_across_workers_and_frees_a_dead_one() -> None:
    table = Table.create(columns=4)
    try:
        first = SharedState(Table(table.fd), pid=1001)  # two workers' views
        second = SharedState(Table(table.fd), pid=1002)
        assert first.column != second.column
        first.take_now([CLIENT, ALICE])
        with pytest.raises(LimitReached):
            second.take_now([CLIENT])
        lease = second.take_now([ALICE])  # alice: 2 in total
        with pytest.raises(LimitReached):
            first.take_now([ALICE])
        assert second.share("user:alice") == 0.5
        lease.release()
        # Worker 1001 dies: the supervisor clears its column.
        assert table.release_owner(1001) == 2
        second.take_now([CLIENT])
        assert table.release_owner(1001) == 0
    finally:
        table.close()


def test_shared_table_reuses_rows_whose_counts_are_zero() -> None:
    table = Table.create(columns=2, slots=4)
    try:
        state = SharedState(table, pid=1)
        for n in range(20):  # more keys over time than rows
            state.take_now([Bound(f"client:10.0.0.{n}", 1)]).release()
        held = [state.take_now([Bound(f"client:10.1.0.{n}", 1)]) for n in range(4)]
        with pytest.raises(StateUnavailable, match="full"):
            state.take_now([Bound("client:10.2.0.1", 1)])
        for lease in held:
            lease.release()
    finally:
        table.close()


def test_shared_user_bucket_is_one_budget_for_all_workers() -> None:
    table = Table.create(columns=4)
    try:
        first = SharedState(Table(table.fd), pid=1)
        second = SharedState(Table(table.fd), pid=2)
        up_1, _ = first.buckets("user:alice", 100_000)
        up_2, _ = second.buckets("user:alice", 100_000)
        assert up_1.available(0) == 25_000  # full: a quarter second
        up_1.consume(25_000)
        assert up_2.available(0) < 25_000  # the other worker drew from it
    finally:
        table.close()


def test_tunnel_limits_in_a_shared_state_answer_429() -> None:
    table = Table.create(columns=4)
    try:
        one = TunnelLimits(per_client=1, state=SharedState(Table(table.fd), pid=1))
        two = TunnelLimits(per_client=1, state=SharedState(Table(table.fd), pid=2))
        lease = one.acquire("203.0.113.5", None)
        with pytest.raises(TooManyTunnels, match=r"client 203\.0\.113\.5 has 1"):
            two.acquire("203.0.113.5", None)
        lease.release()
        assert not one.by_client
        two.acquire("203.0.113.5", None).release()
    finally:
        table.close()


# -- Redis ----------------------------------------------------------------------

ServeState = Callable[..., Awaitable[RedisState]]


@pytest.fixture
async def serve_state(nursery: trio.Nursery) -> AsyncIterator[ServeState]:
    """``state = await serve_state(url, **options)``: a RedisState serving
    in the test's nursery (cancelled at the end)."""
    scopes: list[trio.CancelScope] = []

    async def serve(url: str, **options: object) -> RedisState:
        state = RedisState(url, **options)  # type: ignore[arg-type]
        scope = trio.CancelScope()
        scopes.append(scope)

        async def run(task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await state.serve(task_status=task_status)

        await nursery.start(run)
        state.scope = scope  # type: ignore[attr-defined]
        return state

    yield serve
    for scope in scopes:
        scope.cancel()
    await trio.testing.wait_all_tasks_blocked()
    collect_coredis_garbage()


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float) -> None:
    """Poll Redis until ``check`` holds (bounded in real time): a lease that
    runs out in Redis tells nobody, asking is the only way to see it."""
    with trio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110 (nothing to wait on)
            await trio.sleep(0.05)


@needs_redis
async def test_redis_leases_hold_across_nodes_and_expire_with_a_dead_node(
    daemons: Daemons, tmp_path: Path, serve_state: ServeState
) -> None:
    _, port = await start_redis(daemons, tmp_path, password="s3cret")
    url = f"redis://:s3cret@127.0.0.1:{port}/0"
    one = await serve_state(url, ttl=1.0)
    two = await serve_state(url, ttl=1.0)
    lease = await one.take([CLIENT, ALICE])
    with pytest.raises(LimitReached):
        await two.take([CLIENT])
    await two.take([ALICE])
    with pytest.raises(LimitReached):
        await one.take([ALICE])
    assert one.share("user:alice") == 0.5
    lease.release()  # given back in the background
    await eventually(lambda: _takes(two, [CLIENT]), 5)
    # Node one dies (no renewal, no release): its lease runs out in the TTL.
    await one.take([Bound("client:198.51.100.1", 1)])
    one.scope.cancel()  # type: ignore[attr-defined]
    with pytest.raises(LimitReached):
        await two.take([Bound("client:198.51.100.1", 1)])
    await eventually(lambda: _takes(two, [Bound("client:198.51.100.1", 1)]), 5)
    # Node two's own leases outlive the TTL: it renews them.
    await trio.sleep(1.5)
    with pytest.raises(LimitReached):
        await two.take([Bound("client:198.51.100.1", 1)])


async def _takes(state: RedisState, bounds: list[Bound]) -> bool:
    try:
        await state.take(bounds)
    except LimitReached:
        return False
    return True


@needs_redis
async def test_redis_wrong_password_stops_the_start(
    daemons: Daemons, tmp_path: Path
) -> None:
    _, port = await start_redis(daemons, tmp_path, password="s3cret")
    state = RedisState(f"redis://127.0.0.1:{port}/0", password="wrong")
    async with trio.open_nursery() as nursery:
        with pytest.raises(StateStartError, match="invalid username-password"):
            await nursery.start(state.serve)
    assert "wrong" not in state.description


@needs_redis
async def test_redis_gone_then_back_closed_then_open_again(
    daemons: Daemons, tmp_path: Path, serve_state: ServeState
) -> None:
    process, port = await start_redis(daemons, tmp_path)
    seen: list[bool] = []
    back = trio.Event()

    def on_availability(available: bool) -> None:
        seen.append(available)
        if available:
            back.set()

    state = await serve_state(
        f"redis://127.0.0.1:{port}/0",
        ttl=1.0,
        timeout=0.5,
        on_availability=on_availability,
    )
    held = await state.take([CLIENT])
    with capture_log("hijack.state") as log:
        await stop(process)
        with trio.fail_after(3):  # a bounded wait, then 503
            with pytest.raises(StateUnavailable):
                await state.take([ALICE])
        assert seen == [False]
        with trio.fail_after(0.1):  # while away: refused at once
            with pytest.raises(StateUnavailable):
                await state.take([ALICE])
        await start_redis(daemons, tmp_path, port=port)  # empty: lost everything
        with trio.fail_after(10):  # the next probe (every second) sees it
            await back.wait()
    assert seen == [False, True]
    assert [r.levelno for r in log.records] == [logging.WARNING, logging.WARNING]
    assert "unavailable" in log.records[0].getMessage()
    assert "answers again" in log.records[1].getMessage()
    # The live lease was written back: the limit holds again.
    with pytest.raises(LimitReached):
        await state.take([CLIENT])
    held.release()


@needs_redis
async def test_redis_gone_open_mode_counts_per_node(
    daemons: Daemons, tmp_path: Path, serve_state: ServeState
) -> None:
    process, port = await start_redis(daemons, tmp_path)
    state = await serve_state(
        f"redis://127.0.0.1:{port}/0", timeout=0.5, fail_open=True
    )
    await stop(process)
    first = await state.take([CLIENT])  # counted here meanwhile
    with pytest.raises(LimitReached):
        await state.take([CLIENT])
    first.release()
    (await state.take([CLIENT])).release()


async def _fake_redis(nursery: trio.Nursery, answer: bytes | None) -> int:
    """A TCP server that accepts and never answers (``answer`` None) or
    answers every read with ``answer``."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            async for _ in stream:
                if answer is not None:
                    await stream.send_all(answer)

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
    )
    return int(listeners[0].socket.getsockname()[1])


@pytest.mark.parametrize(
    "answer", [None, b"garbage that is no RESP\r\n", b"\x00\xff" * 50]
)
async def test_a_redis_that_hangs_or_answers_garbage_costs_a_bounded_wait(
    nursery: trio.Nursery, serve_state: ServeState, answer: bytes | None
) -> None:
    port = await _fake_redis(nursery, answer)
    with trio.fail_after(5):
        state = await serve_state(f"redis://127.0.0.1:{port}/0", timeout=0.3)
        assert not state.available
        with pytest.raises(StateUnavailable):
            await state.take([CLIENT])
        limits = TunnelLimits(per_client=1, state=state)
        with pytest.raises(LimitsUnavailable):
            await limits.acquire_async("203.0.113.5", None)
    assert not limits.by_client


@needs_redis
async def test_tunnel_limits_split_a_users_bandwidth_between_nodes(
    daemons: Daemons, tmp_path: Path, serve_state: ServeState
) -> None:
    _, port = await start_redis(daemons, tmp_path)
    url = f"redis://127.0.0.1:{port}/0"
    password = PasswordHash.parse(hash_password("x", n=16, r=1, p=1))
    alice = User("alice", password, bandwidth=100_000)
    one = TunnelLimits(state=await serve_state(url))
    two = TunnelLimits(state=await serve_state(url))
    lease_one = await one.acquire_async("203.0.113.5", alice)
    await two.acquire_async("203.0.113.6", alice)
    await one.acquire_async("203.0.113.5", alice)
    # Node one's part is 2 of the 3 tunnels it saw counted; the totals are
    # read at each lease, so its first lease's bucket sees them now.
    assert lease_one.throttle[0] is not None
    assert lease_one.throttle[0].buckets[0].rate == 66_666


@needs_redis
async def test_redis_over_a_unix_socket_with_the_password_given_apart(
    daemons: Daemons, tmp_path: Path, serve_state: ServeState
) -> None:
    from ..redis_daemon import REDIS

    path = tmp_path / "redis.sock"
    await daemons.start(
        [REDIS, "--port", "0", "--unixsocket", str(path), "--requirepass", "pw-x",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    )  # fmt: skip
    with trio.fail_after(10):
        while not path.exists():  # noqa: ASYNC110 (a daemon's start, bounded)
            await trio.sleep(0.02)
    state = await serve_state(f"unix://{path}?db=2", password="pw-x")
    assert state.available
    await state.take([CLIENT])
    with pytest.raises(LimitReached):
        await state.take([CLIENT])


async def test_the_admin_across_nodes_answers_for_this_node_while_redis_is_away(
    nursery: trio.Nursery, serve_state: ServeState
) -> None:
    from hijack.cli._admin import NodesSource

    port = await _fake_redis(nursery, None)
    state = await serve_state(f"redis://127.0.0.1:{port}/0", timeout=0.3)
    source = NodesSource(state)
    with trio.fail_after(5):
        assert await source.list({"user": "alice"}) == []
        assert not await source.end("nobody-1")


async def test_tunnel_limits_over_a_state_give_throttles_and_the_503() -> None:
    """A state's lease carries the tunnel's own bucket and the user's split
    one; a state that cannot count is 503 (LimitsUnavailable), in both the
    immediate and the awaited path; the base State splits nothing."""
    password = PasswordHash.parse(hash_password("x", n=16, r=1, p=1))
    alice = User("alice", password)
    local = LocalState()
    limits = TunnelLimits(
        per_user=5, tunnel_bandwidth=50_000, user_bandwidth=100_000, state=local
    )
    with await limits.acquire_async("203.0.113.5", alice) as lease:
        up, down = lease.throttle
        assert up is not None and down is not None
        assert [b.rate for b in up.buckets] == [50_000, 100_000]
    assert not limits.by_user and not local.counts

    class Full(LocalState):
        def take_now(self, bounds: Sequence[Bound]) -> Lease:
            raise StateUnavailable("the table is full")

    full = TunnelLimits(per_client=1, state=Full())
    with pytest.raises(LimitsUnavailable, match="full"):
        full.acquire("203.0.113.5", None)
    with pytest.raises(LimitsUnavailable, match="full"):
        await full.acquire_async("203.0.113.5", None)
    base = State()
    with pytest.raises(TypeError, match="needs await take"):
        await base.take([CLIENT])
    assert base.share("user:alice") == 1.0
