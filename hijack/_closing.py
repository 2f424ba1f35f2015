"""Closing a stream the way its protocol ends: TLS says goodbye.

A plain socket closes without I/O (the kernel sends the FIN), so it is
closed at once, without a checkpoint: that is set-up cost of every short
tunnel. A TLS stream ends with a close_notify alert (RFC 8446 6.1): without
it the peer cannot tell our clean end from a cut connection (a truncation
attack). trio's ``SSLStream.aclose`` sends it (the server wraps connections
with ``https_compatible=False`` for that reason) without waiting for the
peer's; the wait for the send itself is bounded here, and shielded so that a
close during cancellation still says goodbye when it can.
"""

from __future__ import annotations

import contextlib

import trio

from ._replay import ReplayStream

__all__ = ["CLOSE_NOTIFY_TIMEOUT", "aclose_gracefully"]

#: How long a close may wait to send its close_notify: one small record,
#: which fits in any socket buffer that is not full of unread data.
CLOSE_NOTIFY_TIMEOUT = 1.0


def _is_plain_socket(stream: trio.abc.AsyncResource) -> bool:
    if isinstance(stream, ReplayStream):
        stream = stream.stream
    return isinstance(stream, trio.SocketStream)


async def aclose_gracefully(stream: trio.abc.AsyncResource) -> None:
    """Close ``stream``: a plain socket at once, anything else (TLS) with its
    own ``aclose``, given at most :data:`CLOSE_NOTIFY_TIMEOUT` seconds even
    when the caller is cancelled. Closed on return either way (trio's
    ``aclose`` contract: it closes even when cancelled)."""
    if _is_plain_socket(stream):
        await trio.aclose_forcefully(stream)
        return
    deadline = trio.current_time() + CLOSE_NOTIFY_TIMEOUT
    # The peer may have left first: nothing to say goodbye to then.
    with (
        trio.CancelScope(deadline=deadline, shield=True),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.aclose()
