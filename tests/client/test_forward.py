"""The client side: open_tunnel, serve_forward and forward_stdio, end to end."""

from __future__ import annotations

import base64
import http.server
import logging
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from hijack import Request, Response, relay
from hijack.client.forward import (
    TunnelError,
    open_tunnel,
    serve_forward,
)
from hijack.upgrades.tcp import TCPUpgrade

from ..conftest import StartServer
from ..helpers import (
    read_exactly,
    read_until,
    read_until_closed,
    start_piped,
    start_upstream,
)

ROOT = Path(__file__).resolve().parents[2]
AUTH = ("alice", "s3cret:with colon")
AUTH_HEADER = "Basic " + base64.b64encode(b"alice:s3cret:with colon").decode()


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        while data := await stream.receive_some():
            await stream.send_all(data)


async def closed_port() -> int:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port: int = listener.socket.getsockname()[1]
    await listener.aclose()
    return port


def tunnel_handler(
    upstream_port: int, auth: str | None = None
) -> Callable[[Request], Awaitable[Response | None]]:
    """``Upgrade: tcp`` to the upstream, and a minimal CONNECT handler (public
    API only) that dials whatever target the client names."""
    tcp = TCPUpgrade(("127.0.0.1", upstream_port))

    async def handler(request: Request) -> Response | None:
        if request.method != "CONNECT":
            return await tcp(request)
        if auth is not None and request.headers.get("proxy-authorization") != auth:
            return Response(407, headers={"Proxy-Authenticate": 'Basic realm="t"'})
        host, _, port = request.target.rpartition(":")
        upstream = await trio.open_tcp_stream(host, int(port))
        hijacked = await request.hijack(Response(200))
        await relay(hijacked, upstream)
        return None

    return handler


async def fake_server(nursery: trio.Nursery, answer: bytes) -> tuple[int, list[bytes]]:
    """Reads a request head, answers ``answer`` in one send, then echoes."""
    heads: list[bytes] = []

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            heads.append(await read_until(stream, b"\r\n\r\n"))
            await stream.send_all(answer)
            while data := await stream.receive_some():
                await stream.send_all(data)

    return await start_upstream(nursery, handle), heads


# -- open_tunnel ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "answer", "request_line", "expected_headers"),
    [
        (
            "connect",
            b"HTTP/1.1 200 Connection established\r\n\r\n",
            b"CONNECT example.com:22 HTTP/1.1",
            [b"host: example.com:22", b"proxy-authorization: " + AUTH_HEADER.encode()],
        ),
        (
            "upgrade",
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Connection: Upgrade\r\nUpgrade: TCP\r\n\r\n",
            b"GET / HTTP/1.1",
            [
                b"connection: Upgrade",
                b"upgrade: tcp",
                b"authorization: " + AUTH_HEADER.encode(),
            ],
        ),
    ],
)
async def test_open_tunnel_sends_the_request_and_replays_bytes_behind_the_answer(
    nursery: trio.Nursery,
    mode: str,
    answer: bytes,
    request_line: bytes,
    expected_headers: list[bytes],
) -> None:
    # The banner comes in the same segment as the answer head: open_tunnel
    # reads both at once and must hand the banner on, not drop it.
    port, heads = await fake_server(nursery, answer + b"SSH-2.0-banner\r\n")
    target = ("example.com", 22) if mode == "connect" else None
    tunnel = await open_tunnel(("127.0.0.1", port), target, mode, auth=AUTH)  # type: ignore[arg-type]
    async with tunnel:
        assert await read_exactly(tunnel, 16) == b"SSH-2.0-banner\r\n"
        await tunnel.send_all(b"after")
        assert await read_exactly(tunnel, 5) == b"after"
    lines = heads[0].split(b"\r\n")
    assert lines[0] == request_line
    sent = set()
    for line in lines[1:]:
        name, _, value = line.partition(b": ")
        sent.add(name.lower() + b": " + value)
    assert set(expected_headers) <= sent


async def test_connect_target_ipv6_is_bracketed(nursery: trio.Nursery) -> None:
    port, heads = await fake_server(nursery, b"HTTP/1.1 200 OK\r\n\r\n")
    async with await open_tunnel(("127.0.0.1", port), ("2001:db8::1", 443), "connect"):
        pass
    assert heads[0].startswith(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n")
    assert b"\r\nhost: [2001:db8::1]:443\r\n" in heads[0].lower()


async def test_open_tunnel_upgrade_through_tcp_upgrade(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    upstream = await start_upstream(nursery, echo)
    _, port = await start_server(tunnel_handler(upstream))
    async with await open_tunnel(("127.0.0.1", port), None, "upgrade") as tunnel:
        for message in (b"one", b"\x00two\r\n\r\n", b"z" * 300_000):
            await tunnel.send_all(message)
            assert await read_exactly(tunnel, len(message)) == message
        await tunnel.send_eof()
        assert await read_until_closed(tunnel) == b""


async def test_open_tunnel_connect_with_proxy_auth(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    upstream = await start_upstream(nursery, echo)
    _, port = await start_server(tunnel_handler(0, auth=AUTH_HEADER))
    via, target = ("127.0.0.1", port), ("127.0.0.1", upstream)

    async with await open_tunnel(via, target, "connect", auth=AUTH) as tunnel:
        await tunnel.send_all(b"through CONNECT")
        assert await read_exactly(tunnel, 15) == b"through CONNECT"

    with pytest.raises(TunnelError) as refused:
        await open_tunnel(via, target, "connect")
    assert refused.value.status == 407
    assert refused.value.reason == "Proxy Authentication Required"


async def test_refusal_is_a_clear_tunnel_error(start_server: StartServer) -> None:
    upstream = await closed_port()
    _, port = await start_server(tunnel_handler(upstream))
    with pytest.raises(TunnelError) as refused:
        await open_tunnel(("127.0.0.1", port), None, "upgrade")
    assert (refused.value.status, refused.value.reason) == (502, "Bad Gateway")
    assert "tunnel refused: 502 Bad Gateway" in str(refused.value)
    assert f"127.0.0.1:{upstream}" in str(refused.value)  # the server's detail


@pytest.mark.parametrize(
    ("answer", "status", "words"),
    [
        (b"SSH-2.0-not-http\r\n\r\n", 0, "bad answer"),
        (b"", 0, "closed the connection"),
        (b"HTTP/1.1 101 Switch", 0, "closed the connection"),
        (
            b"HTTP/1.1 101 Switching Protocols\r\n"
            b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            101,
            "not tcp",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi", 200, "200 OK (hi)"),
    ],
)
async def test_answers_that_are_not_a_tunnel(
    nursery: trio.Nursery, answer: bytes, status: int, words: str
) -> None:
    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await read_until(stream, b"\r\n\r\n")
            await stream.send_all(answer)

    port = await start_upstream(nursery, handle)
    with pytest.raises(TunnelError) as failed:
        await open_tunnel(("127.0.0.1", port), None, "upgrade")
    assert failed.value.status == status
    assert words in str(failed.value)


async def test_bad_arguments_fail_before_connecting() -> None:
    with pytest.raises(ValueError, match="needs a target"):
        await open_tunnel(("127.0.0.1", 1), None, "connect")
    with pytest.raises(ValueError, match="takes no target"):
        await open_tunnel(("127.0.0.1", 1), ("example.com", 22), "upgrade")
    with pytest.raises(ValueError, match="mode must be"):
        await open_tunnel(("127.0.0.1", 1), None, "socks")  # type: ignore[arg-type]


# -- serve_forward: a real client and a real server nobody here wrote ------------


@pytest.fixture
def http_upstream() -> Iterator[int]:
    """Python's http.server in a thread, answering ``hello from PATH``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"hello from {self.path}\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,))
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.parametrize("mode", ["connect", "upgrade"])
async def test_serve_forward_carries_curl_to_http_server(
    nursery: trio.Nursery, start_server: StartServer, http_upstream: int, mode: str
) -> None:
    _, port = await start_server(tunnel_handler(http_upstream))
    target = ("127.0.0.1", http_upstream) if mode == "connect" else None
    listeners = await nursery.start(
        serve_forward, ("127.0.0.1", 0), ("127.0.0.1", port), target, mode
    )
    local = listeners[0].socket.getsockname()[1]
    # Two URLs: http.server speaks HTTP/1.0, so curl opens two connections,
    # each through its own tunnel.
    result = await trio.run_process(
        [
            *("curl", "-sS", "--noproxy", "*", "--max-time", "20"),
            *(f"http://127.0.0.1:{local}/first", f"http://127.0.0.1:{local}/second"),
        ],
        capture_stdout=True,
    )
    assert result.stdout == b"hello from /first\nhello from /second\n"


async def test_serve_forward_closes_the_local_connection_when_refused(
    nursery: trio.Nursery,
    start_server: StartServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, port = await start_server(tunnel_handler(await closed_port()))
    listeners = await nursery.start(
        serve_forward, ("127.0.0.1", 0), ("127.0.0.1", port), None, "upgrade"
    )
    local = listeners[0].socket.getsockname()[1]
    with caplog.at_level(logging.WARNING, logger="hijack.forward"):
        for _ in range(2):  # and it keeps serving after a failure
            async with await trio.open_tcp_stream("127.0.0.1", local) as client:
                assert await read_until_closed(client) == b""
    messages = [r.getMessage() for r in caplog.records if r.name == "hijack.forward"]
    assert len(messages) == 2
    assert "502 Bad Gateway" in messages[0]


# -- forward_stdio: a child process relaying its stdin/stdout --------------------


def forward_command(port: int) -> list[str]:
    """``hijack forward --listen -`` through the server on ``port``."""
    via = f"127.0.0.1:{port}"
    command = ["forward", "--listen", "-", "--via", via, "--mode", "upgrade"]
    return [sys.executable, "-m", "hijack", *command]


async def start_child(nursery: trio.Nursery, port: int) -> trio.Process:
    return await start_piped(nursery, forward_command(port))


async def test_forward_stdio_client_eof_first(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"HELLO\n")
            received = await read_until_closed(stream)  # until the child's EOF
            await stream.send_all(b"got " + received)

    _, port = await start_server(
        tunnel_handler(await start_upstream(nursery, upstream))
    )
    child = await start_child(nursery, port)
    assert child.stdin is not None and child.stdout is not None
    assert await read_exactly(child.stdout, 6) == b"HELLO\n"
    await child.stdin.send_all(b"ping")
    await child.stdin.aclose()  # stdin EOF -> tunnel send_eof -> upstream EOF
    assert await read_until_closed(child.stdout) == b"got ping"
    assert await child.wait() == 0


async def test_forward_stdio_upstream_eof_first(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"HELLO\n")
            assert await read_exactly(stream, 4) == b"ping"
            await stream.send_all(b"bye")

    _, port = await start_server(
        tunnel_handler(await start_upstream(nursery, upstream))
    )
    child = await start_child(nursery, port)
    assert child.stdin is not None and child.stdout is not None
    assert await read_exactly(child.stdout, 6) == b"HELLO\n"
    await child.stdin.send_all(b"ping")
    # Upstream closed: the child's stdout ends while its stdin is still
    # open (ssh waits for this EOF before it closes our stdin).
    assert await read_until_closed(child.stdout) == b"bye"
    assert child.poll() is None
    await child.stdin.aclose()
    assert await child.wait() == 0


async def test_forward_stdio_refused_fails(start_server: StartServer) -> None:
    _, port = await start_server(tunnel_handler(await closed_port()))
    done = await trio.run_process(
        forward_command(port), capture_stderr=True, check=False, cwd=ROOT
    )
    assert done.returncode == 1
    assert b"tunnel refused: 502" in done.stderr
