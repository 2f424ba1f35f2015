"""The lock a WebSocket's writers take: ``trio.Lock`` without the owner.

``trio.Lock`` records the owning task on every acquire (and registers it
to break the lock if the task dies holding it) and checks it on every
release: four calls into trio per message sent, measurable on a small
echo. The WebSocket releases only what it acquired, in the same method,
so it needs neither. What stays: mutual exclusion, FIFO hand-over to
waiting tasks (a sender in a tight loop cannot starve a ping or a
close), and cancellation of a waiting task.
"""

from __future__ import annotations

from types import TracebackType

import trio

__all__ = ["SendLock"]


class SendLock:
    """``locked()``, ``acquire_nowait()`` (only when not locked),
    ``await acquire()``, ``release()``, ``async with``."""

    __slots__ = ("_held", "_waiters")

    def __init__(self) -> None:
        self._held = False
        self._waiters = trio.lowlevel.ParkingLot()

    def locked(self) -> bool:
        return self._held

    def acquire_nowait(self) -> None:
        """Take the lock, which must be free (no checkpoint)."""
        if self._held:
            raise trio.WouldBlock
        self._held = True

    async def acquire(self) -> None:
        """Take the lock, waiting in line if it is held. A checkpoint."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._held:
            # Woken by release() with the lock handed over; cancelled
            # while waiting, the task leaves the line without it.
            await self._waiters.park()
        else:
            self._held = True
            await trio.lowlevel.cancel_shielded_checkpoint()

    def release(self) -> None:
        if self._waiters:
            self._waiters.unpark()  # the next in line holds it now
        else:
            self._held = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
