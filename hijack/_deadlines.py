"""One server-wide timer for the HTTP layer's waits on plain sockets.

A keep-alive connection waits for its next request under an idle deadline,
a new one under its head deadline. A cancel scope per wait costs a
measurable share of a keep-alive request (bench/ANALYSIS.md); one scope for
the connection's life cannot be reset once cancelled, which drops a request
that arrives in the batch where the deadline passes. So the waits register
their deadline here instead (two attribute writes, a heap push only when
the deadline is earlier than the entry the connection already has), and
one task sleeps until the earliest.

When a deadline passes the timer does not decide anything: it wakes the
waiting task (``trio.lowlevel.notify_closing`` on its socket, which ends
its ``wait_readable`` with ``ClosedResourceError`` and nothing else), and
the task looks at the socket once more. Bytes that arrived by then are a
request to serve; no bytes, the wait is over. A graceful shutdown wakes
idle waits the same way.

The heap works as the hub's (``_hub.py``): at most one live entry per
waiter in the common case, lazy deletion (an entry that pops before its
waiter's deadline is pushed again with the newer one), and entries of
finished waiters swept out once they are half the heap.
"""

from __future__ import annotations

import heapq
import itertools
import math
from typing import Protocol

import trio

__all__ = ["DeadlineTimer", "DeadlineWaiter"]


class DeadlineWaiter(Protocol):
    """What the timer needs of a waiting connection."""

    #: When the current wait ends; ``inf`` while not waiting.
    deadline: float
    #: The time of this waiter's earliest heap entry; ``inf`` if none
    #: (or not known: after one of several entries popped).
    timer_at: float
    #: How many heap entries this waiter has.
    timer_entries: int

    def wake(self) -> None:
        """End the current wait now (the waiter looks at its socket)."""


class DeadlineTimer:
    """The heap of waits' deadlines and the task that ends them.

    ``await nursery.start(timer.serve)``; while it runs, :attr:`running`.
    When it stops, every waiter with an entry is woken (it then waits with
    a cancel scope of its own)."""

    __slots__ = ("_dead", "_heap", "_scope", "_seq", "running")

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, DeadlineWaiter]] = []
        self._seq = itertools.count()
        self._scope: trio.CancelScope | None = None
        self._dead = 0  # entries of waiters that finished for good
        self.running = False

    def arm(self, waiter: DeadlineWaiter, deadline: float) -> None:
        """``waiter`` now waits until ``deadline`` (at most)."""
        waiter.deadline = deadline
        if deadline < waiter.timer_at:
            waiter.timer_at = deadline
            waiter.timer_entries += 1
            heapq.heappush(self._heap, (deadline, next(self._seq), waiter))
            scope = self._scope
            if scope is not None and deadline < scope.deadline:
                scope.deadline = deadline

    def forget(self, waiter: DeadlineWaiter) -> None:
        """``waiter`` will not wait again (closed, or handed over)."""
        waiter.deadline = math.inf
        if waiter.timer_entries:
            self._dead += waiter.timer_entries
            if self._dead > 64 and 2 * self._dead > len(self._heap):
                self._sweep()

    def _sweep(self) -> None:
        kept = []
        for entry in self._heap:
            if entry[2].deadline < math.inf:
                kept.append(entry)
            else:
                entry[2].timer_at = math.inf
                entry[2].timer_entries = 0
        heapq.heapify(kept)
        self._heap = kept
        self._dead = 0

    async def serve(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Wake waiters at their deadlines until cancelled."""
        if self.running:
            raise RuntimeError("this DeadlineTimer is already running")
        self.running = True
        try:
            task_status.started()
            while True:
                deadline = self._heap[0][0] if self._heap else math.inf
                with trio.CancelScope(deadline=deadline) as scope:
                    self._scope = scope
                    await trio.sleep_forever()
                self._scope = None
                self._expire(trio.current_time())
        finally:
            self.running = False
            self._scope = None
            heap, self._heap = self._heap, []
            self._dead = 0
            for _, _, waiter in heap:
                waiter.timer_at = math.inf
                waiter.timer_entries = 0
                if waiter.deadline < math.inf:
                    waiter.wake()

    def _expire(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, waiter = heapq.heappop(heap)
            waiter.timer_at = math.inf
            waiter.timer_entries -= 1
            deadline = waiter.deadline
            if deadline <= now:
                waiter.wake()
            elif deadline < math.inf:  # waits still, until later: look again then
                self.arm(waiter, deadline)
