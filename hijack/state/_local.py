"""Counts in this process's memory: exact for one process, nothing shared.

It is what a Redis-backed state falls back to when Redis cannot be reached
and the failure mode is ``open``. (``TunnelLimits`` without a state keeps
its own counters inline: the default costs no call more than before.)
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from ._base import Bound, Lease, LimitReached, State

__all__ = ["LocalState"]


class LocalState(State):
    """Leases counted in a dict: owner this process, no time to live."""

    description = "in-process"

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def take_now(self, bounds: Sequence[Bound]) -> Lease:
        counts = self.counts
        for bound in bounds:
            if bound.limit is not None and counts[bound.key] >= bound.limit:
                raise LimitReached(bound)
        keys = tuple(bound.key for bound in bounds)
        for key in keys:
            counts[key] += 1
        return _LocalLease(self, keys)


class _LocalLease(Lease):
    __slots__ = ("_keys", "_state")

    def __init__(self, state: LocalState, keys: tuple[str, ...]) -> None:
        self._state: LocalState | None = state
        self._keys = keys

    def release(self) -> None:
        if self._state is None:
            return
        counts = self._state.counts
        self._state = None
        for key in self._keys:
            left = counts[key] - 1
            if left > 0:
                counts[key] = left
            else:
                del counts[key]
