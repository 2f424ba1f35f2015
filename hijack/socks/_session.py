"""What the SOCKS5 server and its UDP associations share: the refusals and
the way answers are sent."""

from __future__ import annotations

import contextlib

import trio

from .codec import Reply

__all__ = ["Answered", "ClientGone", "Refused", "send", "send_quietly"]


class Refused(Exception):
    """A request answered with ``reply`` and closed. ``reason`` and
    ``status`` (the HTTP status the same refusal has elsewhere, which names
    the outcome: 403 refused, 429 limited...) go into its end record."""

    def __init__(self, reply: Reply, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason
        self.status = status


class Answered(Exception):
    """The client was refused and told so; nothing more to do."""


class ClientGone(Exception):
    """The client closed or broke the connection during the handshake."""


async def send(stream: trio.abc.Stream, data: bytes) -> None:
    try:
        await stream.send_all(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise ClientGone(f"client gone: {exc}") from None


async def send_quietly(stream: trio.abc.Stream, data: bytes) -> None:
    """A last answer before closing: a client already gone is fine."""
    with contextlib.suppress(
        trio.BrokenResourceError, trio.ClosedResourceError, OSError
    ):
        await stream.send_all(data)
