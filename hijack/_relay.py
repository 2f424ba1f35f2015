"""Relay bytes both ways between two streams, with half-close and counters."""

from __future__ import annotations

import math
from dataclasses import dataclass

import trio

__all__ = ["RelayStats", "relay"]

CHUNK = 256 * 1024


@dataclass(slots=True)
class RelayStats:
    """Bytes moved each way, and whether the relay ended on idle timeout."""

    a_to_b: int = 0
    b_to_a: int = 0
    timed_out: bool = False


async def relay(
    a: trio.abc.Stream,
    b: trio.abc.Stream,
    *,
    idle_timeout: float | None = None,
    stats: RelayStats | None = None,
) -> RelayStats:
    """Copy ``a -> b`` and ``b -> a`` until both directions reach EOF.

    EOF on one side is passed on with ``send_eof`` (the other direction keeps
    flowing); a stream that cannot half-close is closed instead. A
    :class:`~hijack.Hijacked` stream replays its ``buffered`` bytes first.

    Resource handling: both streams are closed when the relay returns, on
    success, error, timeout or cancellation. ``stats`` (if given) is updated
    as bytes move, so a caller can log partial counts after a failure.
    """
    stats = stats if stats is not None else RelayStats()
    timeout = math.inf if idle_timeout is None else idle_timeout
    try:
        with trio.CancelScope(deadline=trio.current_time() + timeout) as scope:

            async def pump(
                src: trio.abc.Stream, dst: trio.abc.Stream, forward: bool
            ) -> None:
                while True:
                    data = await src.receive_some(CHUNK)
                    if not data:
                        break
                    scope.deadline = trio.current_time() + timeout
                    await dst.send_all(data)
                    if forward:
                        stats.a_to_b += len(data)
                    else:
                        stats.b_to_a += len(data)
                if isinstance(dst, trio.abc.HalfCloseableStream):
                    try:
                        await dst.send_eof()
                        return
                    except trio.BrokenResourceError:
                        pass
                await dst.aclose()

            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(pump, a, b, True)
                    nursery.start_soon(pump, b, a, False)
            except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
        stats.timed_out = scope.cancelled_caught
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(a)
            await trio.aclose_forcefully(b)
    return stats
