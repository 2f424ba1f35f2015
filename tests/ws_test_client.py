"""A small WebSocket client for tests, on ``websockets``' Sans-I/O client
protocol (an implementation independent of the server under test), over
any trio stream: real sockets or memory streams."""

from __future__ import annotations

from collections.abc import Sequence

import trio
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.typing import Subprotocol
from websockets.uri import parse_uri


class Closed(Exception):
    """The server closed; ``code`` is its close code (1006: none)."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason
        super().__init__(f"closed {code} {reason}")


class Refused(Exception):
    """The server answered the handshake with something else than 101."""

    def __init__(self, response: Response) -> None:
        self.status = response.status_code
        self.headers = response.headers
        self.body = bytes(response.body or b"")
        super().__init__(f"handshake refused: {self.status} {self.body!r}")


class WSClient:
    def __init__(self, stream: trio.abc.Stream, protocol: ClientProtocol) -> None:
        self.stream = stream
        self.protocol = protocol
        self.subprotocol = protocol.subprotocol
        self._frames: list[Frame] = []

    @classmethod
    async def connect(
        cls,
        stream: trio.abc.Stream,
        path: str = "/",
        subprotocols: Sequence[str] = ("binary",),
        max_size: int | None = 16 * 1024 * 1024,
    ) -> WSClient:
        protocol = ClientProtocol(
            parse_uri(f"ws://test{path}"),
            subprotocols=[Subprotocol(s) for s in subprotocols] or None,
            max_size=max_size,
        )
        protocol.send_request(protocol.connect())
        client = cls(stream, protocol)
        await client._flush()
        while protocol.state is State.CONNECTING:
            data = await stream.receive_some()
            if not data:
                protocol.receive_eof()
                break
            protocol.receive_data(data)
        events = protocol.events_received()
        response = events[0] if events else None
        if protocol.handshake_exc is not None:
            if isinstance(response, Response):
                raise Refused(response)
            raise protocol.handshake_exc
        client._frames.extend(e for e in events[1:] if isinstance(e, Frame))
        client.subprotocol = protocol.subprotocol
        return client

    async def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                await self.stream.send_all(data)
            else:
                await self.stream.send_eof()  # type: ignore[attr-defined]

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            self.protocol.send_text(data.encode())
        else:
            self.protocol.send_binary(data)
        await self._flush()

    async def receive(self) -> bytes | str:
        """The next whole message; :class:`Closed` once the server closed."""
        parts: list[bytes] = []
        text = False
        while True:
            while not self._frames:
                await self._read()
            frame = self._frames.pop(0)
            if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                text = frame.opcode is Opcode.TEXT
            elif frame.opcode is not Opcode.CONT:
                continue  # ping/pong/close: the protocol answers them
            parts.append(bytes(frame.data))
            if frame.fin:
                message = b"".join(parts)
                return message.decode() if text else message

    async def receive_bytes(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            message = await self.receive()
            assert isinstance(message, bytes)
            data += message
        return data

    def _closed(self) -> Closed | None:
        if self.protocol.state is not State.CLOSED:
            return None
        return Closed(
            self.protocol.close_code or 1006, self.protocol.close_reason or ""
        )

    async def _read(self) -> None:
        if closed := self._closed():
            raise closed
        try:
            data = await self.stream.receive_some()
        except trio.BrokenResourceError:
            data = b""
        if data:
            self.protocol.receive_data(data)
        else:
            self.protocol.receive_eof()
        self._frames.extend(
            e for e in self.protocol.events_received() if isinstance(e, Frame)
        )
        await self._flush()
        if not self._frames and (closed := self._closed()):
            raise closed

    async def close(self, code: int = 1000) -> int:
        """Close and wait for the server's close; return its code."""
        self.protocol.send_close(code)
        await self._flush()
        try:
            while True:
                await self.receive()
        except Closed as closed:
            return closed.code

    async def aclose(self) -> None:
        await self.stream.aclose()
