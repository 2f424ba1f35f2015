"""The client side of WebSocket tunnels: connect_websocket, and open_tunnel,
serve_forward and ``hijack forward --listen -`` in websocket mode, against a
real WebSocketBridge (plain and TLS) and against fake servers."""

from __future__ import annotations

import base64
import functools
import hashlib
import os
import ssl
import sys
from pathlib import Path

import pytest
import trio

from hijack import Request, Response, Server
from hijack.client.forward import TunnelError, open_tunnel, serve_forward
from hijack.client.wsclient import WebSocketRefused, connect_websocket
from hijack.upgrades.wsbridge import WebSocketBridge

from ..conftest import StartServer
from ..helpers import (
    answer_once,
    read_exactly,
    read_until,
    read_until_closed,
    start_piped,
    start_upstream,
    tls_contexts,
)
from ..project.test_examples import load_example
from . import test_forward
from .test_forward import closed_port, echo

ROOT = Path(__file__).resolve().parents[2]
http_upstream = test_forward.http_upstream  # the fixture, shared


async def start_bridge(
    nursery: trio.Nursery, start_server: StartServer, upstream: int
) -> str:
    _, port = await start_server(WebSocketBridge(("127.0.0.1", upstream)))
    return f"ws://127.0.0.1:{port}/tunnel"


# -- connect_websocket -------------------------------------------------------------


async def test_connect_websocket_offers_and_gets_the_subprotocol(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    url = await start_bridge(nursery, start_server, await start_upstream(nursery, echo))
    async with await connect_websocket(url, subprotocols=["binary"]) as ws:
        assert ws.subprotocol == "binary"
        await ws.send(b"masked by the client")
        assert await ws.receive() == b"masked by the client"


def accept_for(head: bytes) -> str:
    key = next(
        line.split(b":", 1)[1].strip()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"sec-websocket-key:")
    )
    digest = hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return base64.b64encode(digest).decode()


async def server_sending_a_frame_with_its_101(nursery: trio.Nursery) -> int:
    """A valid 101 with a binary frame "hello" in the same write, then the
    closing handshake."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            head = await read_until(stream, b"\r\n\r\n")
            await stream.send_all(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\n"
                + f"Sec-WebSocket-Accept: {accept_for(head)}\r\n\r\n".encode()
                + b"\x82\x05hello"
            )
            # The client's close frame (masked: 2 + 4 + 2 bytes), then ours;
            # then the server closes TCP first (RFC 6455 7.1.1).
            await read_exactly(stream, 8)
            await stream.send_all(b"\x88\x02\x03\xe8")

    return await start_upstream(nursery, handle)


async def test_a_frame_in_the_same_packet_as_the_101_is_kept(
    nursery: trio.Nursery,
) -> None:
    port = await server_sending_a_frame_with_its_101(nursery)
    ws = await connect_websocket(f"ws://127.0.0.1:{port}/")
    assert await ws.receive() == b"hello"
    await ws.close()
    assert ws.close_code == 1000


@pytest.mark.parametrize(
    ("answer", "status", "words"),
    [
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\nno way\n",
            403,
            "403 Forbidden",
        ),
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npage", 200, "200 OK"),
        (b"SSH-2.0-not-http\r\n\r\n", 0, "bad answer"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", 0, "bad answer"),
        (b"HTTP/1.1 101 Swi", 0, "closed the connection mid-answer"),
    ],
)
async def test_answers_that_are_not_a_websocket(
    nursery: trio.Nursery, answer: bytes, status: int, words: str
) -> None:
    port = await start_upstream(nursery, answer_once(answer))
    with pytest.raises(WebSocketRefused) as refused:
        await connect_websocket(f"ws://127.0.0.1:{port}/")
    assert refused.value.status == status
    assert words in str(refused.value)


async def test_connect_websocket_rejects_other_urls() -> None:
    with pytest.raises(ValueError, match="not a ws:// or wss:// URL"):
        await connect_websocket("http://127.0.0.1:1/")


async def test_wss_with_a_trusted_certificate(nursery: trio.Nursery) -> None:
    server_ctx, client_ctx = tls_contexts("127.0.0.1")
    server = Server(WebSocketBridge(("127.0.0.1", await start_upstream(nursery, echo))))
    listeners = await nursery.start(
        functools.partial(server.serve_tcp, 0, ssl_context=server_ctx)
    )
    url = f"wss://127.0.0.1:{listeners[0].socket.getsockname()[1]}/"
    async with await connect_websocket(url, ssl_context=client_ctx) as ws:
        await ws.send(b"over TLS")
        assert await ws.receive() == b"over TLS"
    # The default context does not trust this CA.
    with pytest.raises(ssl.SSLCertVerificationError):
        await connect_websocket(url)
    await server.shutdown(grace=0)


# -- open_tunnel / serve_forward ---------------------------------------------------


async def test_open_tunnel_websocket_carries_bytes_and_eof_ends_it(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    received: list[bytes] = []
    done = trio.Event()

    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"BANNER\n")
            received.append(await read_until_closed(stream))
            done.set()

    url = await start_bridge(
        nursery, start_server, await start_upstream(nursery, upstream)
    )
    tunnel = await open_tunnel(url, None, "websocket")
    async with tunnel:
        assert await read_exactly(tunnel, 7) == b"BANNER\n"
        payload = os.urandom(700_000)
        await tunnel.send_all(payload)
        # No half-close over a WebSocket: EOF ends the tunnel, after the data.
        await tunnel.send_eof()
        assert await tunnel.receive_some() == b""
    await done.wait()
    assert received == [payload]


async def test_open_tunnel_websocket_refusal_is_a_tunnel_error(
    start_server: StartServer,
) -> None:
    _, port = await start_server(WebSocketBridge(("127.0.0.1", await closed_port())))
    with pytest.raises(TunnelError) as refused:
        await open_tunnel(f"ws://127.0.0.1:{port}/", None, "websocket")
    assert refused.value.status == 502


async def test_open_tunnel_websocket_sends_basic_auth(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    bridge = WebSocketBridge(("127.0.0.1", await start_upstream(nursery, echo)))
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()

    async def guarded(request: Request) -> Response | None:
        # What a proxy in front of the bridge would check.
        if request.headers.get("authorization") != expected:
            return Response(401, {"www-authenticate": 'Basic realm="bridge"'})
        return await bridge(request)

    _, port = await start_server(guarded)
    url = f"ws://127.0.0.1:{port}/"
    async with await open_tunnel(
        url, None, "websocket", auth=("alice", "s3cret")
    ) as tunnel:
        await tunnel.send_all(b"let in")
        assert await read_exactly(tunnel, 6) == b"let in"
    with pytest.raises(TunnelError) as refused:
        await open_tunnel(url, None, "websocket")
    assert refused.value.status == 401


async def test_websocket_mode_arguments() -> None:
    with pytest.raises(ValueError, match="ws:// or wss:// URL"):
        await open_tunnel(("127.0.0.1", 1), None, "websocket")
    with pytest.raises(ValueError, match="takes no target"):
        await open_tunnel("ws://127.0.0.1:1/", ("h", 1), "websocket")
    with pytest.raises(ValueError, match="not a URL"):
        await open_tunnel("ws://127.0.0.1:1/", None, "upgrade")


async def curl(port: int, *paths: str) -> bytes:
    result = await trio.run_process(
        [
            *("curl", "-sS", "--noproxy", "*", "--max-time", "20"),
            *(f"http://127.0.0.1:{port}{path}" for path in paths),
        ],
        capture_stdout=True,
    )
    return result.stdout


async def test_serve_forward_websocket_carries_curl(
    nursery: trio.Nursery, start_server: StartServer, http_upstream: int
) -> None:
    url = await start_bridge(nursery, start_server, http_upstream)
    listeners = await nursery.start(
        serve_forward, ("127.0.0.1", 0), url, None, "websocket"
    )
    local = listeners[0].socket.getsockname()[1]
    # http.server speaks HTTP/1.0: two URLs, two tunnels.
    assert await curl(local, "/first", "/second") == (
        b"hello from /first\nhello from /second\n"
    )


async def test_the_example_site_serves_a_page_and_a_tunnel(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    example = load_example("ws_tunnel")
    upstream = await start_upstream(nursery, echo)
    _, port = await start_server(example.make_handler(("127.0.0.1", upstream)))
    async with await open_tunnel(
        f"ws://127.0.0.1:{port}/tunnel", None, "websocket"
    ) as tunnel:
        await tunnel.send_all(b"through the example")
        assert await read_exactly(tunnel, 19) == b"through the example"
    for path, status in [("/", b"200"), ("/tunnel", b"426"), ("/other", b"404")]:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(
                f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            answer = await read_until_closed(stream)
        assert answer.startswith(b"HTTP/1.1 " + status), path


# -- hijack forward --listen -: ssh's ProxyCommand ---------------------------------


def stdio_command(url: str) -> list[str]:
    command = ["forward", "--listen", "-", "--mode", "websocket", "--via", url]
    return [sys.executable, "-m", "hijack", *command]


async def test_forward_stdio_websocket(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"SSH-2.0-fake\r\n")
            line = await read_until(stream, b"\n")
            await stream.send_all(b"got " + line)

    url = await start_bridge(
        nursery, start_server, await start_upstream(nursery, upstream)
    )
    with trio.fail_after(30):  # a safety bound, not timing logic
        child = await start_piped(nursery, stdio_command(url))
        assert child.stdin is not None and child.stdout is not None
        assert await read_exactly(child.stdout, 14) == b"SSH-2.0-fake\r\n"
        await child.stdin.send_all(b"hello\n")
        # The upstream closes: the WebSocket closes, stdout ends (ssh waits
        # for this) while stdin is still open.
        assert await read_until_closed(child.stdout) == b"got hello\n"
        await child.stdin.aclose()
        assert await child.wait() == 0


async def test_forward_stdio_websocket_refused(start_server: StartServer) -> None:
    _, port = await start_server(WebSocketBridge(("127.0.0.1", await closed_port())))
    with trio.fail_after(30):  # a safety bound, not timing logic
        done = await trio.run_process(
            stdio_command(f"ws://127.0.0.1:{port}/"),
            capture_stderr=True,
            check=False,
            cwd=ROOT,
        )
    assert done.returncode == 1
    assert b"tunnel refused: 502" in done.stderr
