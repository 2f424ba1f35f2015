"""Bandwidth limits for the relay: token buckets, bytes per second.

A direction of a tunnel draws from a :class:`Throttle` (one or more
buckets: the tunnel's own, its user's). The interface is three plain calls
with the time passed in, so the task relay (copy loop and splice) and an
event-driven relay (an epoll hub, no task per tunnel) use it the same way:

* ``allowance(now)``: how many bytes may move now (0: wait);
* ``consume(n, now)``: after moving ``n`` bytes (at most the allowance);
* ``resume_at(now)`` (or ``delay(now)``, the same as a duration): when the
  allowance is worth a move again (a hub parks the flow until then).

That is the relay hub's ``Limiter`` protocol (``hijack._hub``), one Throttle
per direction.

A tunnel without limits has no Throttle at all (``None``): its relay runs
the same code as before, at the same cost.
"""

from __future__ import annotations

import math

import trio

__all__ = ["Throttle", "TokenBucket"]

#: Bucket size: a quarter second of the rate, at least MIN_GRANT. Smaller
#: means more wake-ups per second; larger, longer bursts above the rate.
BURST_SECONDS = 0.25
#: A throttled direction moves at least this much per wake-up (or the whole
#: burst when that is smaller): no stream of tiny splices at low rates.
MIN_GRANT = 16 * 1024
#: Shortest wait for tokens, in seconds.
MIN_DELAY = 0.001


class TokenBucket:
    """``rate`` bytes per second, holding at most ``burst`` (full at start)."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: int, burst: int | None = None) -> None:
        if rate < 1:
            raise ValueError("a bandwidth limit is at least 1 byte per second")
        self.rate = rate
        self.burst = burst or max(int(rate * BURST_SECONDS), MIN_GRANT)
        self._tokens = float(self.burst)
        self._stamp = -math.inf

    def _refill(self, now: float) -> float:
        if now > self._stamp:
            elapsed = now - self._stamp
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
            self._stamp = now
        return self._tokens

    def available(self, now: float) -> int:
        return int(self._refill(now))

    def consume(self, n: int) -> None:
        self._tokens -= n

    def delay(self, now: float, wanted: int) -> float:
        """Seconds until ``wanted`` bytes (at most the burst) are available."""
        missing = min(wanted, self.burst) - self._refill(now)
        if missing <= 0:
            return 0.0
        # At least MIN_DELAY: ``missing / rate`` can be below the clock's
        # resolution (float rounding leaves 16383.99999 tokens), and a sleep
        # that does not advance the clock would spin.
        return max(missing / self.rate, MIN_DELAY)


class Throttle:
    """One direction of one tunnel: the buckets it draws from (its own, its
    user's). Moves happen in grants of at least ``MIN_GRANT`` bytes (or the
    smallest burst), so a slow limit wakes the relay a few times a second."""

    __slots__ = ("buckets", "min_grant")

    def __init__(self, *buckets: TokenBucket) -> None:
        if not buckets:
            raise ValueError("a Throttle needs at least one bucket")
        self.buckets = buckets
        self.min_grant = min(MIN_GRANT, *(b.burst for b in buckets))

    def allowance(self, now: float) -> int:
        """Bytes that may move now: 0 below one grant, so the caller waits."""
        n = min(b.available(now) for b in self.buckets)
        return n if n >= self.min_grant else 0

    def consume(self, n: int, now: float | None = None) -> None:
        """``n`` bytes were moved (``now`` is accepted for the hub's
        ``Limiter`` protocol; the buckets refill on the next question)."""
        for bucket in self.buckets:
            bucket.consume(n)

    def delay(self, now: float) -> float:
        """Seconds from ``now`` until ``allowance`` is non-zero again."""
        return max(b.delay(now, self.min_grant) for b in self.buckets)

    def resume_at(self, now: float) -> float:
        """When to ask again after an allowance of 0 (the hub parks until)."""
        return now + self.delay(now)

    async def wait(self) -> int:
        """For a task relay: sleep until the allowance is non-zero; return it."""
        while True:
            now = trio.current_time()
            allowed = self.allowance(now)
            if allowed:
                return allowed
            await trio.sleep(self.delay(now))
