"""permessage-deflate (RFC 7692): negotiation, round trips, and a real
decompression bomb against a `hijack echo` process whose peak memory is read
from /proc."""

from __future__ import annotations

import os
import signal
import zlib
from typing import Any

import pytest
import trio
from websockets.frames import CLOSE, Close, Frame
from websockets.protocol import Protocol, Side
from websockets.speedups import apply_mask  # C: the 64 KiB bomb is masked fast
from websockets.sync.client import ClientConnection

from hijack.upgrades.websocket import make_echo_handler

from ..conftest import StartServer
from ..helpers import read_response
from ..hijack_process import run_hijack
from .test_websocket import in_client, upgrade_request

MiB = 1024 * 1024


# -- negotiation, in process -------------------------------------------------


async def handshake_answer(port: int, offer: str) -> tuple[int, dict[str, str]]:
    request = upgrade_request(extra=(f"Sec-WebSocket-Extensions: {offer}",))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(request)
        response, _ = await read_response(stream)
    return response.status, {name: value for name, value in response.headers}


@pytest.mark.parametrize(
    ("offer", "answer"),
    [
        # Our compressor uses 12 window bits; the client keeps its 15.
        ("permessage-deflate", "permessage-deflate; server_max_window_bits=12"),
        # A client that accepts a smaller window for its compressor gets 12.
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12",
        ),
        # Context takeover turned off on request, either direction (7.1.1).
        (
            "permessage-deflate; server_no_context_takeover; "
            "client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; "
            "client_no_context_takeover; server_max_window_bits=12",
        ),
        # The client may lower our window (7.1.2.1).
        (
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits=10",
        ),
        # An offer we cannot take (zlib cannot compress with 8 bits) is
        # declined; the next one in the list is accepted.
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate",
            "permessage-deflate; server_max_window_bits=12",
        ),
        # Unknown extensions are ignored.
        ("x-webkit-deflate-frame", None),
    ],
    ids=[
        "plain",
        "client-window",
        "no-context-takeover",
        "server-window",
        "second",
        "unknown",
    ],
)
async def test_negotiation_follows_rfc_7692(
    start_server: StartServer, offer: str, answer: str | None
) -> None:
    _, port = await start_server(make_echo_handler())
    status, headers = await handshake_answer(port, offer)
    assert status == 101
    assert headers.get("sec-websocket-extensions") == answer


async def test_malformed_extension_header_is_400(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler())
    status, _ = await handshake_answer(port, "permessage-deflate; =")
    assert status == 400


async def test_compression_none_never_negotiates(start_server: StartServer) -> None:
    _, port = await start_server(make_echo_handler(compression=None))
    status, headers = await handshake_answer(port, "permessage-deflate")
    assert status == 101
    assert "sec-websocket-extensions" not in headers


@pytest.mark.parametrize(
    "message",
    ["hello " * 1000, b"\x00" * MiB, bytes(range(256)) * 64, "é" * 100_000],
)
async def test_compressed_round_trip_with_a_real_client(
    start_server: StartServer, message: Any
) -> None:
    """The `websockets` client offers permessage-deflate by default; what
    comes back is the same message, and it did travel compressed."""
    _, port = await start_server(make_echo_handler())

    def body(ws: ClientConnection) -> tuple[str | None, list[Any]]:
        ws.send(message)
        ws.send(message)  # the second one uses the context kept from the first
        echoed = [ws.recv(timeout=10), ws.recv(timeout=10)]
        assert ws.response is not None
        return ws.response.headers.get("Sec-WebSocket-Extensions"), echoed

    extensions, echoed = await in_client(port, body, max_size=None)
    assert extensions is not None and extensions.startswith("permessage-deflate")
    assert echoed == [message, message]


# -- a real bomb against a `hijack echo` process --------------------------------


ECHO = ["echo", "--listen", "127.0.0.1:0"]


def peak_rss(pid: int) -> int:
    """The process's high-water mark of resident memory, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def bomb_frame(inflated_size: int) -> bytes:
    """One masked binary frame, RSV1 set: ``inflated_size`` zero bytes
    deflated (RFC 7692 7.2.1: sync flush, trailing 00 00 ff ff removed)."""
    compressor = zlib.compressobj(wbits=-15)
    payload = compressor.compress(bytes(inflated_size))
    payload += compressor.flush(zlib.Z_SYNC_FLUSH)
    payload = payload[:-4]
    mask = os.urandom(4)
    header = bytes([0x80 | 0x40 | 0x2, 0x80 | 127]) + len(payload).to_bytes(8, "big")
    return header + mask + apply_mask(payload, mask)


async def send_bomb(port: int, frame: bytes, *, until_closed: bool) -> bytes:
    """Handshake offering permessage-deflate, send ``frame``; return what
    the server answers after the 101: everything until it closes, or just
    the first two bytes (a frame header)."""
    request = upgrade_request(extra=("Sec-WebSocket-Extensions: permessage-deflate",))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(request)
        response, data = await read_response(stream)
        assert response.status == 101
        offer = response.headers.get("sec-websocket-extensions", "")
        assert offer.startswith("permessage-deflate")
        await stream.send_all(frame)
        while until_closed or len(data) < 2:
            chunk = await stream.receive_some()
            if not chunk:
                break
            data += chunk
        return bytes(data)


def close_code(data: bytes) -> int:
    """The code of the first close frame in what a server sent."""
    client = Protocol(Side.CLIENT)
    client.receive_data(data)
    for event in client.events_received():
        if isinstance(event, Frame) and event.opcode is CLOSE:
            return Close.parse(event.data).code
    raise AssertionError(f"no close frame in {data[:40]!r}")


async def test_a_64_mib_bomb_closes_1009_without_holding_64_mib() -> None:
    """A 64 KiB frame that inflates to 64 MiB: the server (1 MiB limit)
    stops inflating at the limit and closes 1009; its peak memory grows by
    far less than the bomb (measured: 2 MiB). The control run (a limit above
    the bomb) shows the same measurement does see the bomb when it is
    inflated (measured: 128 MiB, the message and its echo)."""
    frame = bomb_frame(64 * MiB)
    assert len(frame) < 70 * 1024  # "a 64 KiB frame"

    async with run_hijack(
        [*ECHO, "--max-message-size", str(MiB)], stop_signal=signal.SIGINT
    ) as limited:
        port, pid = await limited.port(), limited.process.pid
        before = peak_rss(pid)
        assert close_code(await send_bomb(port, frame, until_closed=True)) == 1009
        limited_growth = peak_rss(pid) - before

    async with run_hijack(
        [*ECHO, "--max-message-size", str(128 * MiB)], stop_signal=signal.SIGINT
    ) as control:
        port, pid = await control.port(), control.process.pid
        before = peak_rss(pid)
        answer = await send_bomb(port, frame, until_closed=False)
        assert answer[0] & 0x0F == 0x2  # the echo: it was inflated in full
        unlimited_growth = peak_rss(pid) - before

    assert unlimited_growth >= 64 * MiB, unlimited_growth
    assert limited_growth < 8 * MiB, limited_growth


async def test_no_compression_flag() -> None:
    async with run_hijack(
        [*ECHO, "--no-compression"], stop_signal=signal.SIGINT
    ) as echo:
        status, headers = await handshake_answer(
            await echo.port(), "permessage-deflate"
        )
    assert status == 101
    assert "sec-websocket-extensions" not in headers
