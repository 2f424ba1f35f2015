"""`websockets`' Sans-I/O protocol objects, with one rule of RFC 6455 put back.

RFC 6455 5.4: "Control frames MAY be injected in the middle of a fragmented
message", and a close frame is a control frame. `websockets` 17 fails the
connection with 1002 ("incomplete fragmented message") when a close comes
between fragments; Autobahn 7.1.5 expects the close to be answered with
1000. Here the incomplete message is dropped and the close is honoured.
"""

from __future__ import annotations

from websockets.client import ClientProtocol as _ClientProtocol
from websockets.frames import CLOSE, Frame
from websockets.protocol import Protocol
from websockets.server import ServerProtocol as _ServerProtocol

__all__ = ["ClientProtocol", "ServerProtocol"]


class _ClosesBetweenFragments(Protocol):
    """The one override both sides need: a close frame ends an unfinished
    fragmented message instead of failing the connection."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is CLOSE:
            self.current_size = None  # the unfinished message is dropped
        super().recv_frame(frame)


class ServerProtocol(_ClosesBetweenFragments, _ServerProtocol):
    """``websockets.server.ServerProtocol`` that honours a close frame
    between the fragments of a message."""


class ClientProtocol(_ClosesBetweenFragments, _ClientProtocol):
    """``websockets.client.ClientProtocol`` that honours a close frame
    between the fragments of a message."""
