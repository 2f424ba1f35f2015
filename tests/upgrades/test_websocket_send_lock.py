"""The WebSocket writers' lock: exclusion, first come first served,
cancellation of a waiter (hijack.upgrades.websocket._send_lock)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from hijack.upgrades.websocket._send_lock import SendLock


async def test_waiters_get_the_lock_in_arrival_order() -> None:
    lock = SendLock()
    order: list[str] = []

    async def writer(name: str) -> None:
        async with lock:
            order.append(name)
            await trio.lowlevel.checkpoint()

    lock.acquire_nowait()
    async with trio.open_nursery() as nursery:
        for name in ("a", "b", "c"):
            nursery.start_soon(writer, name)
            await trio.testing.wait_all_tasks_blocked()
        lock.release()  # handed to "a"
        # The releasing task cannot take it back while "a" has not run:
        # hand-over, not a race (a sender in a loop cannot starve the rest).
        assert lock.locked()
        with pytest.raises(trio.WouldBlock):
            lock.acquire_nowait()
    assert order == ["a", "b", "c"]
    assert not lock.locked()


async def test_a_cancelled_waiter_leaves_the_line_without_the_lock() -> None:
    lock = SendLock()
    got: list[str] = []

    async def writer(name: str, scope: trio.CancelScope) -> None:
        with scope:
            async with lock:
                got.append(name)

    lock.acquire_nowait()
    first = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer, "cancelled", first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(writer, "next", trio.CancelScope())
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        lock.release()
    assert got == ["next"]
    assert not lock.locked()


async def test_acquire_is_a_checkpoint_even_when_free() -> None:
    lock = SendLock()
    with trio.CancelScope() as scope:
        scope.cancel()
        await lock.acquire()
    assert scope.cancelled_caught
    assert not lock.locked()
