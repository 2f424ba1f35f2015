"""A WebSocket client for tests that drive the server frame by frame.

Frames are built with `websockets`' ``Frame`` (masked, as a client must)
and parsed with its client ``Protocol``. Nothing is answered on its own:
the test sends every pong and close frame itself, so it can also not send
them. Events read like the frames they stand for."""

from __future__ import annotations

import base64
import codecs
import os
from collections.abc import Iterator
from dataclasses import dataclass

from websockets.frames import BINARY, CLOSE, CONT, PING, PONG, TEXT, Close, Frame
from websockets.protocol import Protocol, Side


class Event:
    """What the server sent."""


@dataclass
class Message(Event):
    data: str | bytes
    message_finished: bool = True


@dataclass
class TextMessage(Message):
    data: str


@dataclass
class BytesMessage(Message):
    data: bytes


@dataclass
class Ping(Event):
    payload: bytes = b""

    def response(self) -> Pong:
        return Pong(self.payload)


@dataclass
class Pong(Event):
    payload: bytes = b""


@dataclass
class CloseConnection(Event):
    code: int
    reason: str | None = None

    def response(self) -> CloseConnection:
        return CloseConnection(self.code, self.reason)


def upgrade_request(host: str = "127.0.0.1", target: str = "/") -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Client:
    """``send(event) -> bytes`` to write, ``receive_data(bytes)`` then
    ``events()`` for what arrived."""

    def __init__(self) -> None:
        self._parser = Protocol(Side.CLIENT, max_size=None)
        self._decoder: codecs.IncrementalDecoder | None = None

    def send(self, event: Event) -> bytes:
        if isinstance(event, TextMessage | BytesMessage):
            fin = event.message_finished
            if self._sending_fragment:
                opcode = CONT
            else:
                opcode = TEXT if isinstance(event, TextMessage) else BINARY
            self._sending_fragment = not fin
            if isinstance(event, TextMessage):
                frame = Frame(opcode, event.data.encode(), fin)
            else:
                frame = Frame(opcode, event.data, fin)
        elif isinstance(event, Ping):
            frame = Frame(PING, event.payload)
        elif isinstance(event, Pong):
            frame = Frame(PONG, event.payload)
        elif isinstance(event, CloseConnection):
            frame = Frame(CLOSE, Close(event.code, event.reason or "").serialize())
        else:
            raise TypeError(f"cannot send {event!r}")
        return frame.serialize(mask=True)

    _sending_fragment = False

    def receive_data(self, data: bytes | bytearray) -> None:
        self._parser.receive_data(bytes(data))
        self._parser.data_to_send()  # its own answers: the test sends its own

    def events(self) -> Iterator[Event]:
        for frame in self._parser.events_received():
            assert isinstance(frame, Frame)
            yield self._event(frame)

    def _event(self, frame: Frame) -> Event:
        data = bytes(frame.data)
        if frame.opcode is PING:
            return Ping(data)
        if frame.opcode is PONG:
            return Pong(data)
        if frame.opcode is CLOSE:
            close = Close.parse(data)
            return CloseConnection(close.code, close.reason)
        if frame.opcode is TEXT:
            self._decoder = codecs.getincrementaldecoder("utf-8")()
        elif frame.opcode is BINARY:
            self._decoder = None
        if self._decoder is not None:
            return TextMessage(self._decoder.decode(data, frame.fin), frame.fin)
        return BytesMessage(data, frame.fin)
