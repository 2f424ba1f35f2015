"""Chaining through a parent proxy: pproxy (nobody here wrote it) as an HTTP
and a SOCKS5 parent, curl as the client; routes; the policy judged before the
parent is dialled; parents that fail, stall or answer garbage."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from hijack.client.forward import open_tunnel
from hijack.tunnel.parent_proxy import ParentProxy, ParentProxyError, Routes
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy, ConnectRefused
from hijack.upgrades.tcp import TCPUpgrade

from ..conftest import StartServer
from ..daemons import Daemons, free_port
from ..helpers import (
    LogCapture,
    banner,
    capture_log,
    exchange,
    read_until_closed,
    start_upstream,
)
from ..upgrades.test_connect import (
    connect_head,
    curl_through,
    hello,
    loopback_policy,
    status_of,
)


@pytest.fixture
def tunnel_log() -> Iterator[LogCapture]:
    """The ``hijack.connect`` records of the test."""
    with capture_log("hijack.connect") as log:
        yield log


async def tunnel_line(log: LogCapture) -> str:
    """The one tunnel log line (it comes as the tunnel ends)."""
    with trio.fail_after(10):
        await log.logged.wait()
    [record] = log.records
    return record.getMessage()


Pproxy = Callable[[str], Awaitable[tuple[int, Path]]]


@pytest.fixture
def pproxy(daemons: Daemons, tmp_path: Path) -> Pproxy:
    """``port, log = await pproxy("http")``: a pproxy subprocess listening on
    127.0.0.1 with that scheme (``http``, ``socks5``, ``http#user:pass``),
    verbose log in ``log``; stopped at the end of the test."""

    async def start(scheme: str) -> tuple[int, Path]:
        name, _, auth = scheme.partition("#")
        port = free_port()  # pproxy binds it next
        log = tmp_path / f"pproxy-{name}-{port}.log"
        uri = f"{name}://127.0.0.1:{port}" + (f"#{auth}" if auth else "")
        with log.open("wb") as out:
            await daemons.start(
                [sys.executable, "-m", "pproxy", "-l", uri, "-v"],
                listening=[("127.0.0.1", port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return port, log

    return start


def routes(url: str, *direct: str) -> Routes:
    return Routes(ParentProxy.parse(url), direct=direct)


# -- pproxy as the parent, curl as the client ------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "http#parent:pw", "socks5", "socks5h"])
async def test_curl_through_hijack_and_a_pproxy_parent(
    start_server: StartServer,
    pproxy: Pproxy,
    tunnel_log: LogCapture,
    scheme: str,
) -> None:
    _, upstream_port = await start_server(hello)
    name, _, auth = scheme.partition("#")
    parent_port, parent_log = await pproxy("socks5" if name == "socks5h" else scheme)
    credentials = f"{auth}@" if auth else ""
    url = f"{name}://{credentials}127.0.0.1:{parent_port}"
    proxy = ConnectProxy(loopback_policy(upstream_port), routes=routes(url))
    _, proxy_port = await start_server(proxy)

    result = await curl_through(proxy_port, upstream_port)

    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hello through the tunnel\n"
    line = await tunnel_line(tunnel_log)
    assert f"via {name}://" in line and " ok " in line, line
    assert "pw" not in line  # the parent's password stays out of the log
    await wait_for_text(parent_log, f"127.0.0.1:{upstream_port}")


async def wait_for_text(path: Path, text: str) -> None:
    """pproxy logs each connection it relays; wait (bounded) for the line."""
    with trio.fail_after(10):
        # Another process writes the file: there is no event to wait on.
        while text not in path.read_text(errors="replace"):  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_socks5h_parent_gets_the_name(
    start_server: StartServer, pproxy: Pproxy, tunnel_log: LogCapture
) -> None:
    _, upstream_port = await start_server(hello)
    parent_port, parent_log = await pproxy("socks5")
    policy = ConnectPolicy(allowed_ports={upstream_port}, allow=["localhost"])
    proxy = ConnectProxy(policy, routes=routes(f"socks5h://127.0.0.1:{parent_port}"))
    _, proxy_port = await start_server(proxy)
    result = await trio.run_process(
        [
            "curl", "-sS", "--max-time", "10", "-p",
            "-x", f"http://127.0.0.1:{proxy_port}",
            f"http://localhost:{upstream_port}/",
        ],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={},
    )  # fmt: skip
    assert result.stdout == b"hello through the tunnel\n", result.stderr
    line = await tunnel_line(tunnel_log)
    assert "(localhost) via socks5h://" in line and " ok " in line, line
    await wait_for_text(parent_log, f"localhost:{upstream_port}")


async def test_direct_rule_bypasses_the_parent(
    start_server: StartServer, pproxy: Pproxy, tunnel_log: LogCapture
) -> None:
    _, upstream_port = await start_server(hello)
    parent_port, parent_log = await pproxy("http")
    table = routes(f"http://127.0.0.1:{parent_port}", "127.0.0.0/8")
    proxy = ConnectProxy(loopback_policy(upstream_port), routes=table)
    _, proxy_port = await start_server(proxy)
    result = await curl_through(proxy_port, upstream_port)
    assert result.stdout == b"hello through the tunnel\n", result.stderr
    line = await tunnel_line(tunnel_log)
    assert "(127.0.0.1) direct ok" in line, line
    assert f"127.0.0.1:{upstream_port}" not in parent_log.read_text()


async def test_forward_reaches_its_server_through_a_parent(
    nursery: trio.Nursery, start_server: StartServer, pproxy: Pproxy
) -> None:
    upstream_port = await start_upstream(nursery, banner(b"banner first"))
    _, proxy_port = await start_server(ConnectProxy(loopback_policy(upstream_port)))
    parent_port, _ = await pproxy("socks5")
    parent = ParentProxy.parse(f"socks5://127.0.0.1:{parent_port}")
    with trio.fail_after(10):
        tunnel = await open_tunnel(
            ("127.0.0.1", proxy_port),
            ("127.0.0.1", upstream_port),
            "connect",
            upstream_proxy=parent,
        )
        async with tunnel:
            assert await read_until_closed(tunnel) == b"banner first"


# -- the policy comes first ------------------------------------------------------------------


class FakeParent:
    """A TCP listener standing in for a parent proxy: counts connections and
    answers each with ``answer`` (bytes, then close; None: say nothing)."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.connections = 0

    async def __call__(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        await stream.receive_some()
        if self.answer is None:
            await trio.sleep_forever()
        await stream.send_all(self.answer)
        await stream.aclose()


@pytest.mark.parametrize("scheme", ["http", "socks5", "socks5h"])
@pytest.mark.parametrize(
    "target",
    [
        "127.0.0.1:443",
        "10.0.0.1:443",
        "localhost:443",
        "denied.example:443",
        "8.8.8.8:22",
    ],
)
async def test_refused_before_the_parent_is_dialled(
    nursery: trio.Nursery, start_server: StartServer, scheme: str, target: str
) -> None:
    parent = FakeParent(b"HTTP/1.1 200 OK\r\n\r\n")
    parent_port = await start_upstream(nursery, parent)
    policy = ConnectPolicy(deny=["denied.example"])
    proxy = ConnectProxy(policy, routes=routes(f"{scheme}://127.0.0.1:{parent_port}"))
    _, port = await start_server(proxy)
    response = await exchange(port, connect_head(target))
    assert status_of(response) == 403
    assert parent.connections == 0


def test_name_only_judgement() -> None:
    policy = ConnectPolicy(allowed_ports={443}, deny=[".bad.example"])
    policy.check_unresolved("example.com", 443)
    for host, port in [
        ("x.bad.example", 443),
        ("localhost", 443),
        ("db.localhost", 443),
        ("127.1", 443),
        ("[::1]", 443),
        ("example.com", 80),
    ]:
        with pytest.raises(ConnectRefused):
            policy.check_unresolved(host.strip("[]"), port)
    allowlist = ConnectPolicy(allow_public=False, allow=[".corp.example", "10.0.0.0/8"])
    allowlist.check_unresolved("git.corp.example", 443)
    allowlist.check_unresolved("10.1.2.3", 443)
    with pytest.raises(ConnectRefused, match="allow list"):
        allowlist.check_unresolved("example.com", 443)


# -- parents that fail --------------------------------------------------------------------


GARBAGE = [
    b"garbage\r\n\r\n",
    b"\x00\xff" * 20,
    b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\nno way",
    b"HTTP/1.1 200 OK\r\nno colon in this header\r\n\r\n",
    b"HTTP/1.1 2000 OK\r\n\r\n",
    b"\x05\x00\x05\x01\x00\x01\x00\x00\x00\x00\x00\x00",  # SOCKS: refused
    b"\x05\xff",  # SOCKS: no acceptable method
    b"",
]


@pytest.mark.parametrize("scheme", ["http", "socks5", "socks5h"])
@pytest.mark.parametrize("answer", GARBAGE)
async def test_parent_answering_garbage_gets_502(
    nursery: trio.Nursery,
    start_server: StartServer,
    tunnel_log: LogCapture,
    scheme: str,
    answer: bytes,
) -> None:
    parent_port = await start_upstream(nursery, FakeParent(answer))
    url = f"{scheme}://127.0.0.1:{parent_port}"
    proxy = ConnectProxy(ConnectPolicy(), routes=routes(url))
    _, port = await start_server(proxy)
    response = await exchange(port, connect_head("8.8.8.8:443"))
    assert status_of(response) == 502
    line = await tunnel_line(tunnel_log)
    assert " unreachable [" in line and f"parent proxy {url}" in line, line


async def test_unreachable_parent_gets_502(
    start_server: StartServer, tunnel_log: LogCapture
) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"socks5://127.0.0.1:{sock.getsockname()[1]}"
        proxy = ConnectProxy(ConnectPolicy(), routes=routes(url))
        _, port = await start_server(proxy)
        response = await exchange(port, connect_head("8.8.8.8:443"))
    assert status_of(response) == 502
    line = await tunnel_line(tunnel_log)
    assert "Could not connect to proxy" in line, line


@pytest.mark.parametrize("scheme", ["http", "socks5h"])
async def test_silent_parent_gets_504(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    start_server: StartServer,
    tunnel_log: LogCapture,
    scheme: str,
) -> None:
    parent_port = await start_upstream(nursery, FakeParent(None))
    url = f"{scheme}://127.0.0.1:{parent_port}"
    proxy = ConnectProxy(ConnectPolicy(), routes=routes(url), connect_timeout=7)
    _, port = await start_server(proxy)
    started = trio.current_time()
    response = await exchange(port, connect_head("example.com:443"))
    assert status_of(response) == 504
    assert trio.current_time() - started == pytest.approx(7, abs=0.5)


# -- the HTTP parent handshake: why it is not python-socks' -----------------------------


@pytest.mark.parametrize(
    "writes",
    [
        [b"HTTP/1.1 200 OK\r\n\r\nSSH-2.0-banner\r\n"],  # banner in the same segment
        [
            b"HTTP/1.1 200 Connection established\r\n",
            b"Via: 1.1 x\r\n\r\n",
            b"SSH-2.0-banner\r\n",
        ],
    ],
)
async def test_http_parent_keeps_bytes_behind_its_answer(
    nursery: trio.Nursery, writes: list[bytes]
) -> None:
    async def parent(stream: trio.SocketStream) -> None:
        await stream.receive_some()
        for chunk in writes:
            await stream.send_all(chunk)
            await trio.sleep(0.01)  # separate segments
        await stream.aclose()

    port = await start_upstream(nursery, parent)
    with trio.fail_after(10):
        stream = await ParentProxy.parse(f"http://127.0.0.1:{port}").connect(
            "example.com", 22
        )
        async with stream:
            assert await read_until_closed(stream) == b"SSH-2.0-banner\r\n"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://host:21", "scheme"),
        ("http://host", "host:port"),
        ("socks5://host:99999", "port"),
        ("http://user@host:8080", "user:password"),
        ("http://host:8080/path", "no path"),
    ],
)
def test_bad_parent_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ParentProxy.parse(url)


def test_parent_url_shown_without_password() -> None:
    parent = ParentProxy.parse("http://me:s%40cret@[::1]:3128")
    assert parent.password == "s@cret"
    assert str(parent) == "http://me:***@[::1]:3128"
    assert "s@cret" not in repr(parent)


async def test_parent_error_is_an_upstream_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        parent = ParentProxy.parse(f"http://127.0.0.1:{sock.getsockname()[1]}")
        with pytest.raises(ParentProxyError, match="parent proxy http://"):
            await parent.connect("example.com", 443)


async def test_tcp_upgrade_reaches_its_upstream_through_a_parent(
    nursery: trio.Nursery, start_server: StartServer, pproxy: Pproxy
) -> None:
    upstream_port = await start_upstream(nursery, banner(b"db banner"))
    parent_port, parent_log = await pproxy("http")
    table = routes(f"http://127.0.0.1:{parent_port}")
    _, port = await start_server(TCPUpgrade(("127.0.0.1", upstream_port), routes=table))
    head = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    async with await trio.open_tcp_stream("127.0.0.1", port) as client:
        await client.send_all(head)
        answer = await read_until_closed(client)
    assert answer.startswith(b"HTTP/1.1 101 ") and answer.endswith(b"\r\n\r\ndb banner")
    await wait_for_text(parent_log, f"127.0.0.1:{upstream_port}")
