"""What the SOCKS5 server and its UDP associations share: the record of a
request (for its log line), the refusals and the way answers are sent."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import trio

from .. import RelayStats
from .codec import Reply

__all__ = ["Answered", "ClientGone", "Refused", "Session", "send", "send_quietly"]


class Refused(Exception):
    """A request answered with ``reply`` and closed; ``reason`` for the log."""

    def __init__(self, reply: Reply, reason: str, outcome: str = "refused") -> None:
        super().__init__(reason)
        self.reply = reply
        self.reason = reason
        self.outcome = outcome


@dataclass(slots=True)
class Session:
    """What the log line of one SOCKS5 request says."""

    client: str
    started: float
    command: str = "-"
    target: str = "-"
    outcome: str = "error"
    reason: str = ""
    address: str = ""
    user: str = ""
    route: str = ""
    port: int | None = None
    stats: RelayStats = field(default_factory=RelayStats)
    extra: str = ""
    handed: bool = False


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
