"""WebSocket echo over HTTP/2 (RFC 8441) load: CONNECTIONS HTTP/2
connections, one WebSocket each, a 64-byte message sent and its echo read
back in a loop for SECONDS. The client is hijack's (the test kit's HTTP/2
client and hijack's WebSocket over websockets' Sans-I/O client protocol);
the same for every server, so the ratio is the servers'.

``python h2_ws.py PORT CONNECTIONS SECONDS`` prints ``MESSAGES ELAPSED``."""

from __future__ import annotations

import sys
import time

import trio
from websockets.client import ClientProtocol
from websockets.protocol import OPEN
from websockets.uri import parse_uri

from hijack._h2_client import open_h2_client
from hijack.upgrades.websocket import WebSocket

MESSAGE = b"m" * 64


async def one(port: int, seconds: float, counts: list[int]) -> None:
    transport = await trio.open_tcp_stream("127.0.0.1", port)
    async with open_h2_client(transport) as h2c:
        response, stream = await h2c.tunnel(
            f"127.0.0.1:{port}",
            protocol="websocket",
            target="/",
            headers=[(b"sec-websocket-version", b"13")],
        )
        if stream is None:
            raise ConnectionError(f"the WebSocket was refused: {response.status}")
        protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{port}/"), state=OPEN)
        ws = WebSocket(stream, None, protocol=protocol, ping_interval=None)
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline:
            await ws.send(MESSAGE)
            await ws.receive()
            count += 1
        counts.append(count)
        await ws.aclose()


async def main() -> None:
    port, connections = int(sys.argv[1]), int(sys.argv[2])
    seconds = float(sys.argv[3])
    counts: list[int] = []
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one, port, seconds, counts)
    print(sum(counts), time.monotonic() - started)


if __name__ == "__main__":
    trio.run(main)
