"""The wire format of reverse tunnels (``hijack-reverse/1``), shared by the
server (:mod:`hijack.upgrades.reverse`) and the client
(:mod:`hijack.client.reverse`). Sans-I/O except :class:`LineReader`.

The protocol itself is written down in ``docs/reference/reverse-protocol.md``;
this module holds its names and its one framing rule: a message is one line
of UTF-8 JSON (an object with a string ``type``), ended by ``\\n``, at most
:data:`MAX_LINE` bytes with the newline.
"""

from __future__ import annotations

import json
from typing import Any

import trio

__all__ = [
    "CLAIM_HEADER",
    "MAX_LINE",
    "PROTOCOL",
    "PUBLISH_HEADER",
    "SESSION_HEADER",
    "UPGRADE_PREFIX",
    "WS_SUBPROTOCOL",
    "LineReader",
    "ProtocolError",
    "decode",
    "encode",
]

#: ``Upgrade:`` token of the plain HTTP/1.1 transport (RFC 9110 7.8:
#: protocol-name "/" protocol-version).
PROTOCOL = "hijack-reverse/1"
#: What every version's ``Upgrade:`` token starts with.
UPGRADE_PREFIX = "hijack-reverse/"
#: ``Sec-WebSocket-Protocol`` of the WebSocket transport (a token: no "/").
WS_SUBPROTOCOL = "hijack-reverse.v1"

#: The control request's header: ``[HOST:]PORT`` to publish.
PUBLISH_HEADER = "Hijack-Reverse-Publish"
#: A data request's header: the session it serves.
SESSION_HEADER = "Hijack-Reverse-Session"
#: A claimed data request's header: the public connection it takes.
CLAIM_HEADER = "Hijack-Reverse-Claim"

#: The longest message line, newline included, in bytes.
MAX_LINE = 4096


class ProtocolError(Exception):
    """The peer broke the framing or sent a message that makes no sense."""


def encode(message: dict[str, Any]) -> bytes:
    """One message as its line."""
    line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
    if len(line) > MAX_LINE:
        raise ValueError(f"message of {len(line)} bytes exceeds {MAX_LINE}")
    return line


def decode(line: bytes) -> dict[str, Any]:
    """One line (without its newline) as a message, or :class:`ProtocolError`."""
    try:
        message = json.loads(line)
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("a line that is not JSON") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError('a message must be a JSON object with a string "type"')
    return message


class LineReader:
    """Reads messages off ``stream``; :meth:`LineReader.rest` gives the
    bytes read past the last line (a data connection's first relayed
    bytes)."""

    __slots__ = ("_buffer", "stream")

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self._buffer = bytearray()

    async def read(self) -> dict[str, Any] | None:
        """The next message; None at EOF between messages. Raises
        :class:`ProtocolError` for a line too long, bad JSON or EOF mid-line;
        the stream's own errors pass through."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) >= MAX_LINE:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
            data = await self.stream.receive_some(MAX_LINE)
            if not data:
                if self._buffer:
                    raise ProtocolError("the connection ended mid-line")
                return None
            self._buffer += data
        if end + 1 > MAX_LINE:
            raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return decode(line)

    def rest(self) -> bytes:
        """The bytes received after the last message read (then forgotten)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        return rest
