"""The WebSocket's own parser for whole data frames and the protocol's
parser read one stream (hijack.upgrades.websocket._websocket, _ingest):
whatever the mix of frames and wherever the reads cut them, the messages,
the pongs and the close codes are the protocol's."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.protocol import OPEN

from hijack import Connection
from hijack.upgrades.websocket import ConnectionClosed, ServerProtocol, WebSocket

from ..wsclient import CloseConnection, Pong
from .test_websocket import Peer, pair, shut

TEXT, BINARY, CONT, PING = 0x1, 0x2, 0x0, 0x9
MiB = 1024 * 1024


def frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
) -> bytes:
    """A client frame of any length (RFC 6455 5.2), built by hand."""
    first = (0x80 if fin else 0) | rsv | opcode
    mask_bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        header = bytes([first, mask_bit | n])
    elif n < 65536:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", n)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return header + payload
    mask = b"\x0a\x0b\x0c\x0d"
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


# Whole data frames (the fast path) between control frames and fragments
# (the protocol's): every length encoding, text and binary.
MIXED = [
    (frame(BINARY, b"x" * 64), b"x" * 64),
    (frame(PING, b"p1"), None),
    (frame(TEXT, "héllo".encode()), "héllo"),
    (frame(TEXT, b"ab", fin=False), None),
    (frame(PING, b"p2"), None),
    (frame(CONT, b"cd"), "abcd"),
    (frame(BINARY, b""), b""),
    (frame(BINARY, b"y" * 300), b"y" * 300),
    (frame(TEXT, b"end"), "end"),
]
STREAM = b"".join(raw for raw, _ in MIXED)
MESSAGES = [message for _, message in MIXED if message is not None]


async def receive_all(ws: WebSocket, count: int) -> list[str | bytes]:
    return [await ws.receive() for _ in range(count)]


async def pongs(peer: Peer, count: int) -> list[bytes]:
    got: list[bytes] = []
    while len(got) < count:
        events = await peer.until(Pong)
        got += [e.payload for e in events if isinstance(e, Pong)]
    return got


async def test_mixed_frames_in_one_read() -> None:
    ws, peer, _ = pair()
    big = b"z" * 70_000  # the 8-byte length
    await peer.stream.send_all(STREAM + frame(BINARY, big))
    assert await receive_all(ws, len(MESSAGES) + 1) == [*MESSAGES, big]
    assert await pongs(peer, 2) == [b"p1", b"p2"]
    assert ws.messages_received == len(MESSAGES) + 1
    await shut(ws, peer)


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 8, 13, 64])
async def test_mixed_frames_cut_anywhere(piece: int) -> None:
    ws, peer, _ = pair()
    got: list[str | bytes] = []

    async def receiver() -> None:
        got.extend(await receive_all(ws, len(MESSAGES)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        for start in range(0, len(STREAM), piece):
            # Each piece is read on its own: the receiver waits for it.
            await trio.testing.wait_all_tasks_blocked()
            await peer.stream.send_all(STREAM[start : start + piece])
    assert got == MESSAGES
    assert await pongs(peer, 2) == [b"p1", b"p2"]
    await shut(ws, peer)


async def test_invalid_utf8_in_a_whole_text_frame_closes_1007() -> None:
    ws, peer, _ = pair()
    await peer.stream.send_all(
        frame(BINARY, b"ok") + frame(TEXT, b"\xff\xfe") + frame(BINARY, b"lost")
    )
    assert await ws.receive() == b"ok"
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert info.value.code == 1007
    events = await peer.until(CloseConnection)
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1007]
    await peer.stream.aclose()
    await ws.close()


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (frame(BINARY, b"a" * 101), 1009),  # whole, over the limit
        (frame(BINARY, b"unmasked", masked=False), 1002),
        (frame(BINARY, b"rsv1", rsv=0x40), 1002),  # no extension negotiated
        (frame(0x3, b"reserved opcode"), 1002),
        (frame(CONT, b"nothing to continue"), 1002),
    ],
)
async def test_frames_the_protocol_must_judge(raw: bytes, code: int) -> None:
    # A whole frame that is not a plain data frame goes to the protocol,
    # which fails the connection; the message before it is delivered.
    ws, peer, _ = pair(max_message_size=100)
    await peer.stream.send_all(frame(TEXT, b"before") + raw + frame(TEXT, b"after"))
    assert await ws.receive() == "before"
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert info.value.code == code
    events = await peer.until(CloseConnection)
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [code]
    await peer.stream.aclose()
    await ws.close()


async def test_a_close_between_whole_frames_ends_the_messages() -> None:
    ws, peer, _ = pair()
    close = frame(0x8, struct.pack("!H", 1000) + b"bye")
    await peer.stream.send_all(frame(TEXT, b"last") + close + frame(TEXT, b"ignored"))
    assert await ws.receive() == "last"
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert (info.value.code, info.value.reason) == (1000, "bye")
    events = await peer.until(CloseConnection)
    assert [e.code for e in events if isinstance(e, CloseConnection)] == [1000]
    await ws.close()


# -- permessage-deflate (RFC 7692): the extension's zlib streams are shared
# by the frames parsed here and the ones the protocol parses.


def deflate_pair(**options: Any) -> tuple[WebSocket, Peer]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    protocol = ServerProtocol(state=OPEN, max_size=options.pop("max_size", MiB))
    protocol.extensions = [PerMessageDeflate(False, False, 15, 15)]
    ws = WebSocket(server_stream, Connection(1, server_stream), protocol=protocol)
    return ws, Peer(client_stream)


class Deflater:
    """The client's compressor, one zlib stream for every message
    (context takeover, the default)."""

    def __init__(self) -> None:
        self.zlib = zlib.compressobj(wbits=-15)

    def frames(self, opcode: int, payload: bytes, pieces: int = 1) -> bytes:
        data = self.zlib.compress(payload) + self.zlib.flush(zlib.Z_SYNC_FLUSH)
        data = data[:-4]  # the empty block every message ends with
        if pieces == 1:
            return frame(opcode, data, rsv=0x40)
        cut = len(data) // 2
        return frame(opcode, data[:cut], fin=False, rsv=0x40) + frame(CONT, data[cut:])


@pytest.mark.parametrize("piece", [7, 100_000])  # cut, or in one read
async def test_deflate_messages_whole_and_fragmented_share_one_stream(
    piece: int,
) -> None:
    ws, peer = deflate_pair()
    deflater = Deflater()
    words = b"the same words again and again " * 4
    stream = (
        deflater.frames(BINARY, words)
        + frame(PING, b"p")
        + deflater.frames(TEXT, words, pieces=2)  # the protocol's
        + frame(BINARY, b"sent uncompressed")
        + deflater.frames(BINARY, words)  # back-references to the above
    )
    got: list[str | bytes] = []

    async def receiver() -> None:
        got.extend([await ws.receive() for _ in range(4)])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receiver)
        for start in range(0, len(stream), piece):
            await trio.testing.wait_all_tasks_blocked()
            await peer.stream.send_all(stream[start : start + piece])
    assert got == [words, words.decode(), b"sent uncompressed", words]
    await peer.until(Pong)
    await shut_deflate(ws, peer)


async def test_deflate_replies_are_compressed_with_one_stream() -> None:
    ws, peer = deflate_pair()
    inflater = zlib.decompressobj(wbits=-15)
    for message in (b"x" * 300, "text " * 10, b"x" * 300):
        await ws.send(message)
        head = await receive_exactly(peer.stream, 2)
        assert head[0] == (0xC1 if isinstance(message, str) else 0xC2)
        assert not head[1] & 0x80  # a server does not mask
        data = await receive_exactly(peer.stream, head[1] & 0x7F)
        plain = inflater.decompress(data + b"\x00\x00\xff\xff")
        assert plain == (message.encode() if isinstance(message, str) else message)
    await shut_deflate(ws, peer)


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda: frame(BINARY, b"\xff" * 10, rsv=0x40), 1002),  # not deflate
        (lambda: Deflater().frames(BINARY, bytes(5000)), 1009),  # inflates big
    ],
)
async def test_deflate_frames_that_fail(make: Callable[[], bytes], code: int) -> None:
    ws, peer = deflate_pair(max_size=1000)
    await peer.stream.send_all(frame(BINARY, b"before") + make())
    assert await ws.receive() == b"before"
    with pytest.raises(ConnectionClosed) as info:
        await ws.receive()
    assert info.value.code == code
    await peer.stream.aclose()
    await ws.close()


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk
        data += chunk
    return data


async def shut_deflate(ws: WebSocket, peer: Peer) -> None:
    """Close with the peer answering (a close frame is never compressed)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(ws.close)
        head = await receive_exactly(peer.stream, 2)
        assert head[0] == 0x88
        await receive_exactly(peer.stream, head[1])
        await peer.stream.send_all(frame(0x8, struct.pack("!H", 1000)))


async def test_the_installed_websockets_keeps_the_fast_path_on() -> None:
    """The fast path reads websockets' parser state (where its generator
    waits, its buffer); a websockets release that moves those turns it off
    quietly, everything then going through the protocol. This fails then,
    so that the upgrade is looked at, not discovered in a benchmark."""
    ws, peer, _ = pair()
    fed: list[bytes] = []
    receive_data = ws._protocol.receive_data

    def counting(data: bytes | bytearray) -> None:
        fed.append(bytes(data))
        receive_data(data)

    ws._protocol.receive_data = counting  # type: ignore[method-assign]
    await peer.stream.send_all(frame(BINARY, b"a" * 64) + frame(TEXT, b"b" * 200))
    assert await ws.receive() == b"a" * 64
    assert await ws.receive() == "b" * 200
    assert fed == []  # both parsed in the buffer, none fed to the protocol
    await peer.stream.send_all(frame(PING, b"p"))  # the protocol's, as ever
    await peer.stream.send_all(frame(BINARY, b"c"))
    assert await ws.receive() == b"c"
    assert fed == [frame(PING, b"p")]
    await shut(ws, peer)
