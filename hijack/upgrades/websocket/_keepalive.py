"""Keepalive: ping an idle peer, fail a silent one.

Middleboxes drop connections that carry nothing for a while (nginx's
``proxy_read_timeout`` is 60 s, Cloudflare 100 s, AWS NLB 350 s), and a
peer that vanished without a FIN (power cut, NAT timeout) leaves a
connection that would wait forever. A ping every ``interval`` seconds
keeps the path alive; a pong missing after ``timeout`` seconds means the
peer is gone: the connection is failed with 1011 and its stream released.

The pinger runs inside ``async with ws`` (next to the shutdown watcher). It
reads no socket of its own: ``WebSocket.ping`` waits for whichever task is
reading, or reads itself when none is (queueing what arrives for
``receive``).
"""

from __future__ import annotations

from typing import Protocol

import trio

from ._errors import ConnectionClosed


class _Pinged(Protocol):
    """What keeping a :class:`~hijack.upgrades.websocket.WebSocket` alive
    takes (spelled out: the WebSocket module imports this one)."""

    @property
    def closed(self) -> bool: ...

    async def ping(self) -> None: ...

    async def fail(self, code: int, reason: str) -> None: ...


INTERNAL_ERROR = 1011  # RFC 6455 7.4.1: "an unexpected condition"


async def keep_alive(ws: _Pinged, interval: float, timeout: float | None) -> None:
    """Ping ``ws`` every ``interval`` seconds until it closes; fail it with
    1011 if a pong takes longer than ``timeout`` (None: wait forever)."""
    try:
        while not ws.closed:
            await trio.sleep(interval)
            with trio.move_on_after(timeout if timeout is not None else float("inf")):
                await ws.ping()
                continue
            await ws.fail(INTERNAL_ERROR, "keepalive ping timeout")
            return
    except ConnectionClosed:
        return
