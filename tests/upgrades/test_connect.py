"""The CONNECT proxy end to end: curl, httpx over TLS, raw sockets on
loopback; timeouts on memory streams with the autojump clock."""

from __future__ import annotations

import base64
import functools
import ipaddress
import logging
import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
import trio
import trio.testing
import trustme

from hijack import Request, Response, Server
from hijack.testing import MemoryListener
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy

from ..conftest import StartServer
from ..helpers import (
    capture_log,
    exchange,
    read_head,
    read_until_closed,
    start_upstream,
)

CURL = "/usr/bin/curl"
MemoryServer = Callable[..., Awaitable[tuple[Server, MemoryListener]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def connect_head(target: str, *headers: str) -> bytes:
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", *headers, "", ""]
    return "\r\n".join(lines).encode("latin-1")


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}"


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


def header_names(head: bytes) -> set[bytes]:
    return {line.split(b":")[0].lower() for line in head.split(b"\r\n")[1:] if line}


def loopback_policy(port: int) -> ConnectPolicy:
    return ConnectPolicy(allowed_ports={port}, allow=["127.0.0.1"])


async def hello(request: Request) -> Response:
    return Response(200, {"content-type": "text/plain"}, b"hello through the tunnel\n")


def tunnel_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "hijack.connect"]


# -- real clients ------------------------------------------------------------------


async def curl_through(
    proxy_port: int, upstream_port: int, *options: str
) -> subprocess.CompletedProcess[bytes]:
    """curl --proxytunnel through the proxy to the upstream's ``/``."""
    return await trio.run_process(
        [
            CURL,
            "-sS",
            "--max-time",
            "10",
            "--proxytunnel",
            "--proxy",
            f"http://127.0.0.1:{proxy_port}",
            *options,
            f"http://127.0.0.1:{upstream_port}/",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={},
    )


async def test_curl_through_the_tunnel(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hijack.connect")
    _, upstream_port = await start_server(hello)
    proxy = ConnectProxy(loopback_policy(upstream_port))
    _, proxy_port = await start_server(proxy)
    with capture_log("hijack.connect") as log:
        result = await curl_through(proxy_port, upstream_port)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello through the tunnel\n"
        await log.logged.wait()  # the tunnel's line comes as it ends
    (record,) = tunnel_records(caplog)
    assert record.levelno == logging.INFO
    assert record.outcome == "ok"  # type: ignore[attr-defined]
    assert record.target == f"127.0.0.1:{upstream_port}"  # type: ignore[attr-defined]
    assert record.upstream_address == "127.0.0.1"  # type: ignore[attr-defined]
    assert record.client.startswith("127.0.0.1:")  # type: ignore[attr-defined]
    assert record.bytes_up > 0  # type: ignore[attr-defined]
    assert record.bytes_down > len(b"hello through the tunnel\n")  # type: ignore[attr-defined]
    message = record.getMessage()
    assert f"-> 127.0.0.1:{upstream_port}" in message
    assert " ok " in message
    assert proxy.open_tunnels == 0


@pytest.mark.parametrize(
    ("credentials", "ok"), [("alice:s3cret", True), ("alice:wrong", False)]
)
async def test_curl_with_proxy_auth(
    start_server: StartServer, credentials: str, ok: bool
) -> None:
    _, upstream_port = await start_server(hello)
    proxy = ConnectProxy(
        loopback_policy(upstream_port), auth=("alice", "s3cret"), realm="tests"
    )
    _, proxy_port = await start_server(proxy)
    result = await curl_through(proxy_port, upstream_port, "--proxy-user", credentials)
    if ok:
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello through the tunnel\n"
    else:
        assert result.returncode != 0
        assert b"407" in result.stderr
        assert result.stdout == b""


async def test_httpx_https_through_the_tunnel(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    async def secure(request: Request) -> Response:
        tls = request.connection.tls
        assert tls is not None
        return Response(200, body=f"secure {tls.version}".encode())

    tls_server = Server(secure)
    listeners = await nursery.start(
        functools.partial(tls_server.serve_tcp, 0, ssl_context=server_context)
    )
    upstream_port = listeners[0].socket.getsockname()[1]
    try:
        _, proxy_port = await start_server(ConnectProxy(loopback_policy(upstream_port)))

        def get() -> httpx.Response:
            with httpx.Client(
                proxy=f"http://127.0.0.1:{proxy_port}",
                verify=client_context,
                trust_env=False,
                timeout=10,
            ) as client:
                return client.get(f"https://127.0.0.1:{upstream_port}/")

        response = await trio.to_thread.run_sync(get)
        assert response.status_code == 200
        assert response.text.startswith("secure TLSv1.")
    finally:
        await tls_server.shutdown(grace=0)


# -- raw sockets: the bytes on the wire --------------------------------------------


async def test_early_bytes_reach_upstream_byte_exact(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    received = trio.Event()
    got: list[bytes] = []

    async def upstream(stream: trio.SocketStream) -> None:
        got.append(await read_until_closed(stream))
        await stream.send_all(b"bye")
        received.set()

    upstream_port = await start_upstream(nursery, upstream)
    _, proxy_port = await start_server(ConnectProxy(loopback_policy(upstream_port)))
    early = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4
    later = bytes(range(256))[::-1] * 600  # 150 KiB after the tunnel is up
    async with await trio.open_tcp_stream("127.0.0.1", proxy_port) as client:
        # The CONNECT head and a fake ClientHello in a single write.
        await client.send_all(connect_head(f"127.0.0.1:{upstream_port}") + early)
        head, rest = await read_head(client)
        assert head.startswith(b"HTTP/1.1 200 Connection established\r\n")
        # A 2xx to CONNECT carries no framing headers (RFC 9110 9.3.6).
        assert b"content-length" not in header_names(head)
        assert b"transfer-encoding" not in header_names(head)
        assert rest == b""
        await client.send_all(later)
        await client.send_eof()
        assert await read_until_closed(client) == b"bye"
    await received.wait()
    assert got == [early + later]


async def test_half_close_each_way(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        # Reply only after the client's EOF: proves EOF travelled through
        # while the other direction is still open.
        data = await read_until_closed(stream)
        await stream.send_all(b"you said " + data)
        await stream.send_all(b"; still talking after your EOF")

    upstream_port = await start_upstream(nursery, upstream)
    _, proxy_port = await start_server(ConnectProxy(loopback_policy(upstream_port)))
    async with await trio.open_tcp_stream("127.0.0.1", proxy_port) as client:
        await client.send_all(connect_head(f"127.0.0.1:{upstream_port}"))
        head, _ = await read_head(client)
        assert status_of(head) == 200
        await client.send_all(b"ping")
        await client.send_eof()
        reply = await read_until_closed(client)
    assert reply == b"you said ping; still talking after your EOF"


# -- raw sockets: every refusal ---------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        connect_head("127.0.0.1"),  # no port
        connect_head("127.0.0.1:0"),
        connect_head("127.0.0.1:70000"),
        connect_head("127.0.0.1:https"),
        connect_head("user@127.0.0.1:443"),
        connect_head("[::1:443"),
        connect_head("1.2.3.4.5:443"),
        connect_head("8.8.8.8:443", "Content-Length: 5") + b"hello",
        connect_head("8.8.8.8:443", "Transfer-Encoding: chunked") + b"0\r\n\r\n",
    ],
)
async def test_bad_requests_get_400(
    start_server: StartServer, request_bytes: bytes
) -> None:
    _, port = await start_server(ConnectProxy())
    response = await exchange(port, request_bytes)
    assert status_of(response) == 400


@pytest.mark.parametrize(
    "target",
    [
        "127.1:443",
        "2130706433:443",
        "0x7f000001:443",
        "0:443",
        "0.0.0.0:443",
        "127.0.0.1:443",
        "[::ffff:127.0.0.1]:443",
        "[::1]:443",
        "localhost:443",
        "8.8.8.8:80",  # a public address, but port 80
    ],
)
async def test_default_policy_answers_403(
    start_server: StartServer, target: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hijack.connect")
    _, port = await start_server(ConnectProxy())
    response = await exchange(port, connect_head(target))
    assert status_of(response) == 403
    # The client is not told what a name resolved to.
    assert b"destination not allowed" in response
    assert b"127.0.0.1" not in response.split(b"\r\n\r\n", 1)[1]
    (record,) = tunnel_records(caplog)
    assert record.outcome == "refused"  # type: ignore[attr-defined]
    assert record.target == target  # type: ignore[attr-defined]
    assert " refused " in record.getMessage()


async def test_other_methods_get_405(start_server: StartServer) -> None:
    _, port = await start_server(ConnectProxy())
    response = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    head = response.split(b"\r\n\r\n")[0]
    assert status_of(head) == 405
    assert b"\r\nallow: connect\r\n" in head.lower() + b"\r\n"


async def test_other_methods_go_to_fallback(start_server: StartServer) -> None:
    _, port = await start_server(ConnectProxy(fallback=hello))
    response = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status_of(response) == 200
    assert response.endswith(b"hello through the tunnel\n")


@pytest.mark.parametrize(
    "auth_header",
    [
        None,
        basic("alice", "wrong"),
        basic("bob", "s3cret"),
        basic("alice", "s3cret").replace("Basic", "Bearer"),
        "Proxy-Authorization: Basic !!!notbase64",
        "Proxy-Authorization: Basic",
    ],
)
async def test_missing_or_wrong_auth_gets_407(
    start_server: StartServer, auth_header: str | None
) -> None:
    _, port = await start_server(ConnectProxy(auth=("alice", "s3cret"), realm="corp"))
    headers = [auth_header] if auth_header else []
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(connect_head("8.8.8.8:443", *headers))
        head, _ = await read_head(client)
    assert status_of(head) == 407
    assert b'\r\nproxy-authenticate: Basic realm="corp"\r\n' in head


async def test_407_then_retry_with_credentials_on_the_same_connection(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        await stream.send_all(b"welcome")

    upstream_port = await start_upstream(nursery, upstream)
    proxy = ConnectProxy(loopback_policy(upstream_port), auth=("alice", "s3cret"))
    _, port = await start_server(proxy)
    target = f"127.0.0.1:{upstream_port}"
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(connect_head(target))
        head, rest = await read_head(client)
        assert status_of(head) == 407
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        while len(rest) < length:
            rest += await client.receive_some()
        await client.send_all(connect_head(target, basic("alice", "s3cret")))
        head, rest = await read_head(client)
        assert status_of(head) == 200
        assert rest + await read_until_closed(client) == b"welcome"


async def test_refused_upstream_gets_502(start_server: StartServer) -> None:
    # Bound but not listening: connecting is refused, and the port stays ours.
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
        _, port = await start_server(ConnectProxy(loopback_policy(closed_port)))
        response = await exchange(port, connect_head(f"127.0.0.1:{closed_port}"))
    assert status_of(response) == 502


async def test_too_many_tunnels_gets_503(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        await read_until_closed(stream)

    upstream_port = await start_upstream(nursery, upstream)
    proxy = ConnectProxy(loopback_policy(upstream_port), max_tunnels=1)
    _, port = await start_server(proxy)
    target = f"127.0.0.1:{upstream_port}"
    async with await trio.open_tcp_stream("127.0.0.1", port) as first:
        await first.send_all(connect_head(target))
        head, _ = await read_head(first)
        assert status_of(head) == 200
        assert proxy.open_tunnels == 1
        response = await exchange(port, connect_head(target))
        assert status_of(response) == 503
        assert proxy.open_tunnels == 1


# -- memory streams and the autojump clock: deterministic timing -------------------


class FakeUpstreams:
    """A dial function handing out memory streams; records what was dialled."""

    def __init__(self) -> None:
        self.dialled: list[tuple[IPAddress, int]] = []
        self.ends: list[trio.abc.HalfCloseableStream] = []
        self.refuse: set[IPAddress] = set()

    async def __call__(self, address: IPAddress, port: int) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        self.dialled.append((address, port))
        if address in self.refuse:
            raise ConnectionRefusedError(111, "Connection refused")
        ours, theirs = trio.testing.memory_stream_pair()
        self.ends.append(theirs)
        return ours


async def never_connects(address: IPAddress, port: int) -> trio.abc.Stream:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


async def never_resolves(
    host: str, port: int, family: int = 0, type: int = 0
) -> list[Any]:
    await trio.sleep_forever()
    raise AssertionError("unreachable")


@pytest.fixture
async def memory_client(
    memory_server: MemoryServer,
) -> AsyncIterator[Callable[[ConnectProxy], Awaitable[MemoryListener]]]:
    servers: list[Server] = []

    async def start(proxy: ConnectProxy) -> MemoryListener:
        server, listener = await memory_server(proxy)
        servers.append(server)
        return listener

    yield start
    for server in servers:
        await server.shutdown(grace=0)


@pytest.mark.parametrize("stall", ["dial", "resolve"])
async def test_slow_upstream_gets_504(
    autojump_clock: trio.testing.MockClock,
    memory_client: Callable[[ConnectProxy], Awaitable[MemoryListener]],
    caplog: pytest.LogCaptureFixture,
    stall: str,
) -> None:
    caplog.set_level(logging.INFO, logger="hijack.connect")
    policy = ConnectPolicy(allow_private=True)
    if stall == "dial":
        proxy = ConnectProxy(policy, connect_timeout=7, dial=never_connects)
        target = "127.0.0.1:443"
    else:
        proxy = ConnectProxy(policy, connect_timeout=7, resolver=never_resolves)
        target = "slow.test:443"
    listener = await memory_client(proxy)
    client = await listener.connect()
    start = trio.current_time()
    await client.send_all(connect_head(target))
    response = await read_until_closed(client)
    assert status_of(response) == 504
    assert trio.current_time() - start == pytest.approx(7)
    (record,) = tunnel_records(caplog)
    assert record.outcome == "timeout"  # type: ignore[attr-defined]
    assert proxy.open_tunnels == 0
    await client.aclose()


async def test_tunnel_log_line_and_counts(
    autojump_clock: trio.testing.MockClock,
    memory_client: Callable[[ConnectProxy], Awaitable[MemoryListener]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hijack.connect")
    upstreams = FakeUpstreams()
    proxy = ConnectProxy(ConnectPolicy(allow_private=True), dial=upstreams)
    listener = await memory_client(proxy)
    client = await listener.connect()
    await client.send_all(connect_head("127.0.0.1:443") + b"hello")
    head, _ = await read_head(client)
    assert status_of(head) == 200
    assert proxy.open_tunnels == 1
    (upstream,) = upstreams.ends
    assert await upstream.receive_some() == b"hello"
    await trio.sleep(2.5)
    await upstream.send_all(b"0123456789")
    assert await client.receive_some() == b"0123456789"
    await client.send_eof()
    assert await upstream.receive_some() == b""
    await upstream.aclose()
    assert await client.receive_some() == b""
    await trio.testing.wait_all_tasks_blocked()
    assert proxy.open_tunnels == 0
    (record,) = tunnel_records(caplog)
    assert record.outcome == "ok"  # type: ignore[attr-defined]
    assert record.bytes_up == 5  # type: ignore[attr-defined]
    assert record.bytes_down == 10  # type: ignore[attr-defined]
    assert record.duration == pytest.approx(2.5)  # type: ignore[attr-defined]
    assert record.getMessage() == (
        "connect - -> 127.0.0.1:443 (127.0.0.1) ok up=5 down=10 2.500s"
    )
    await client.aclose()


async def test_idle_tunnel_is_closed(
    autojump_clock: trio.testing.MockClock,
    memory_client: Callable[[ConnectProxy], Awaitable[MemoryListener]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="hijack.connect")
    upstreams = FakeUpstreams()
    proxy = ConnectProxy(
        ConnectPolicy(allow_private=True), idle_timeout=30, dial=upstreams
    )
    listener = await memory_client(proxy)
    client = await listener.connect()
    await client.send_all(connect_head("127.0.0.1:443"))
    await read_head(client)
    start = trio.current_time()
    assert await read_until_closed(client) == b""
    assert trio.current_time() - start == pytest.approx(30)
    assert await read_until_closed(upstreams.ends[0]) == b""
    await trio.testing.wait_all_tasks_blocked()
    (record,) = tunnel_records(caplog)
    assert record.outcome == "idle-timeout"  # type: ignore[attr-defined]
    assert proxy.open_tunnels == 0
    await client.aclose()
    await upstreams.ends[0].aclose()


async def test_name_resolved_once_and_checked_address_dialled(
    autojump_clock: trio.testing.MockClock,
    memory_client: Callable[[ConnectProxy], Awaitable[MemoryListener]],
) -> None:
    calls: list[str] = []

    async def resolver(
        host: str, port: int, family: int = 0, type: int = 0
    ) -> list[Any]:
        calls.append(host)
        await trio.lowlevel.checkpoint()
        return [
            (trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "", ("10.0.0.7", port)),
            (trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "", ("10.0.0.8", port)),
        ]

    upstreams = FakeUpstreams()
    upstreams.refuse.add(ipaddress.ip_address("10.0.0.7"))
    proxy = ConnectProxy(
        ConnectPolicy(allow=["10.0.0.0/24"]), resolver=resolver, dial=upstreams
    )
    listener = await memory_client(proxy)
    client = await listener.connect()
    await client.send_all(connect_head("db.internal:443"))
    head, _ = await read_head(client)
    assert status_of(head) == 200
    assert calls == ["db.internal"]
    # The first address refused; the second, also checked, was dialled.
    assert upstreams.dialled == [
        (ipaddress.ip_address("10.0.0.7"), 443),
        (ipaddress.ip_address("10.0.0.8"), 443),
    ]
    await client.aclose()
    assert await read_until_closed(upstreams.ends[0]) == b""
    await upstreams.ends[0].aclose()


async def test_shutdown_closes_open_tunnels(
    autojump_clock: trio.testing.MockClock, memory_server: MemoryServer
) -> None:
    upstreams = FakeUpstreams()
    proxy = ConnectProxy(ConnectPolicy(allow_private=True), dial=upstreams)
    server, listener = await memory_server(proxy)
    client = await listener.connect()
    await client.send_all(connect_head("127.0.0.1:443"))
    head, _ = await read_head(client)
    assert status_of(head) == 200
    assert server.open_hijacked_connections == 1
    await server.shutdown(grace=5)
    assert server.open_hijacked_connections == 0
    assert proxy.open_tunnels == 0
    assert await read_until_closed(client) == b""
    assert await read_until_closed(upstreams.ends[0]) == b""
    await client.aclose()
    await upstreams.ends[0].aclose()


def test_bad_constructor_arguments() -> None:
    with pytest.raises(ValueError, match="realm"):
        ConnectProxy(realm='a"b')
    with pytest.raises(ValueError, match="':'"):
        ConnectProxy(auth=("a:b", "c"))
    with pytest.raises(ValueError, match="max_tunnels"):
        ConnectProxy(max_tunnels=0)
