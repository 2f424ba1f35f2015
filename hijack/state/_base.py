"""The interface of a place where limits are counted.

A tunnel that is limited takes one *lease* on each counted key it falls
under (``client:203.0.113.5``, ``user:alice``): :meth:`State.take` checks
every key against its bound and counts the lease on all of them, or on none
(``LimitReached``). The lease is given back with :meth:`Lease.release` when
the tunnel ends. Every lease has an owner (this process, this worker, this
node) and lives no longer than its owner: a process that dies, however it
dies, gives back what it held (at once in one process and under
``--workers``; within the time to live on Redis).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from .._throttle import TokenBucket

__all__ = [
    "Bound",
    "Lease",
    "LimitReached",
    "SplitBucket",
    "State",
    "StateUnavailable",
]


@dataclass(frozen=True, slots=True)
class Bound:
    """One counted key and its bound (None: counted, never refused; a
    user's tunnels are counted that way for the bandwidth split)."""

    key: str
    limit: int | None


class LimitReached(Exception):
    """``bound.key`` already has ``bound.limit`` leases."""

    def __init__(self, bound: Bound) -> None:
        super().__init__(f"{bound.key} has {bound.limit} tunnels open")
        self.bound = bound


class StateUnavailable(Exception):
    """The shared state cannot be reached (and the failure mode is
    ``closed``): the tunnel is refused (503)."""


class Lease(abc.ABC):
    """One tunnel counted on its keys. ``release()`` is idempotent and never
    blocks (a backend that talks to a server gives it back in the
    background; if that fails, the lease runs out with its time to live)."""

    __slots__ = ()

    @abc.abstractmethod
    def release(self) -> None: ...


class State:
    """Where leases are counted. ``immediate`` backends answer
    ``take_now()`` without waiting (in-process, shared memory); the others
    need ``await take()``. :meth:`share` says which part of a key's leases
    this process holds (the per-user bandwidth is split by it); :meth:`serve`
    runs whatever upkeep the backend needs (renewals, reconnects) until
    cancelled."""

    #: What ``hijack`` prints about it at start ("in-process", "redis://...").
    description = "in-process"
    immediate = True

    def take_now(self, bounds: Sequence[Bound]) -> Lease:
        raise TypeError(f"{self.description} state needs await take()")

    async def take(self, bounds: Sequence[Bound]) -> Lease:
        return self.take_now(bounds)

    def share(self, key: str) -> float:
        """This process's part of ``key``'s leases (1.0 when alone)."""
        return 1.0

    def buckets(self, key: str, rate: int) -> tuple[TokenBucket, TokenBucket]:
        """The two buckets (each direction) that the tunnels of ``key`` in
        this process share: by default ``rate`` split by :meth:`share`."""
        return SplitBucket(rate, key, self), SplitBucket(rate, key, self)

    async def serve(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Upkeep until cancelled; started once the process serves."""
        task_status.started()


class SplitBucket(TokenBucket):
    """A bucket whose rate is this process's part of a shared ``rate``
    (``rate * state.share(key)``), read again at every refill."""

    __slots__ = ("_full", "_key", "_state")

    def __init__(self, rate: int, key: str, state: State) -> None:
        self._full = rate
        self._key = key
        self._state = state
        super().__init__(rate)

    @property
    def rate(self) -> int:
        return max(1, int(self._full * self._state.share(self._key)))

    @rate.setter
    def rate(self, value: int) -> None:
        self._full = value
