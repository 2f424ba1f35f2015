"""The client side: a local SOCKS5 server whose CONNECTs travel through a
hijack server (CONNECT or WebSocket), and UDP through a WebSocket: dig
through ``forward --udp`` behind nginx to a real dnsmasq. Also the server
side of those WebSockets (``?tcp=``, ``?udp=``): its refusals."""

from __future__ import annotations

import functools
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from hijack.client.socks_forward import serve_socks_forward
from hijack.client.udp_forward import serve_udp_forward
from hijack.socks.codec import Command, Reply
from hijack.tunnel.policy import ConnectPolicy
from hijack.tunnel.users import PasswordHash, User, Users
from hijack.upgrades.connect import ConnectProxy
from hijack.upgrades.wstunnel import WebSocketTunnel

from ..cli.test_socks_cli import run, start_dnsmasq
from ..conftest import StartServer
from ..daemons import Daemons
from ..e2e.test_wsbridge_nginx import start_nginx
from ..helpers import capture_log
from ..hijack_process import run_hijack
from ..socks.test_socks_udp import udp_echo
from ..socks_client import socks_request
from ..tunnel.test_users import cheap_hash
from ..upgrades.test_connect import CURL, hello

DIG = "/usr/bin/dig"
LocalSocks = Callable[..., Awaitable[int]]


def loopback(*ports: int) -> ConnectPolicy:
    return ConnectPolicy(allowed_ports=set(ports), allow=["127.0.0.1", "localhost"])


@pytest.fixture
async def local_socks(nursery: trio.Nursery) -> AsyncIterator[LocalSocks]:
    """``port = await local_socks(via, **options)``: serve_socks_forward on
    127.0.0.1, cancelled at the end of the test."""
    scopes: list[trio.CancelScope] = []

    async def start(via: tuple[str, int] | str, **options: object) -> int:
        scope = trio.CancelScope()
        scopes.append(scope)

        async def run(task_status: trio.TaskStatus[list[trio.SocketListener]]) -> None:
            with scope:
                await serve_socks_forward(
                    ("127.0.0.1", 0),
                    via,
                    task_status=task_status,
                    **options,  # type: ignore[arg-type]
                )

        listeners = await nursery.start(run)
        port: int = listeners[0].socket.getsockname()[1]
        return port

    yield start
    for scope in scopes:
        scope.cancel()


async def origin_behind_local_socks(
    start_server: StartServer, local_socks: LocalSocks, kind: str
) -> tuple[int, int]:
    """An origin, a hijack server in front of it (``kind``: a CONNECT proxy
    or a WebSocket tunnel) and a local SOCKS5 server through that server:
    (origin port, local SOCKS5 port)."""
    _, origin = await start_server(hello)
    policy = loopback(origin)
    if kind == "connect":
        _, server = await start_server(ConnectProxy(policy))
        via: tuple[str, int] | str = ("127.0.0.1", server)
    else:
        _, server = await start_server(WebSocketTunnel(policy, path="/t"))
        via = f"ws://127.0.0.1:{server}/t"
    return origin, await local_socks(via)


@pytest.mark.parametrize("kind", ["connect", "websocket"])
async def test_curl_through_the_local_socks_server(
    start_server: StartServer, local_socks: LocalSocks, kind: str
) -> None:
    origin, port = await origin_behind_local_socks(start_server, local_socks, kind)
    got = await run(
        [
            CURL,
            "-sS",
            "--max-time",
            "10",
            "--socks5-hostname",
            f"127.0.0.1:{port}",
            f"http://localhost:{origin}/",
        ],
        env={},
    )
    assert got.stdout == b"hello through the tunnel\n", got.stderr


@pytest.mark.parametrize("kind", ["connect", "websocket"])
async def test_server_refusals_come_back_as_reply_codes(
    start_server: StartServer, local_socks: LocalSocks, kind: str
) -> None:
    origin, port = await origin_behind_local_socks(start_server, local_socks, kind)
    for command, host, target, expected in [
        (Command.CONNECT, "10.0.0.1", origin, Reply.NOT_ALLOWED),
        (Command.CONNECT, "127.0.0.1", 22, Reply.NOT_ALLOWED),
        (Command.CONNECT, "127.0.0.1", origin, Reply.SUCCEEDED),
        (Command.UDP_ASSOCIATE, "0.0.0.0", 0, Reply.COMMAND_NOT_SUPPORTED),
    ]:
        stream, reply = await socks_request(port, command, host, target)
        await stream.aclose()
        assert reply.reply == expected, (host, target)


async def test_unreachable_hijack_server_answers_01(local_socks: LocalSocks) -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    dead = sock.getsockname()[1]
    sock.close()
    port = await local_socks(("127.0.0.1", dead))
    stream, reply = await socks_request(port, Command.CONNECT, "example.com", 443)
    await stream.aclose()
    assert reply.reply == Reply.GENERAL_FAILURE


async def test_websocket_tunnel_refusals(start_server: StartServer) -> None:
    """The server side before any 101: 400 without one target, 401 without
    credentials (users), 403 by the policy."""
    from hijack.client.wsclient import WebSocketRefused, connect_websocket

    users = Users.from_mapping([User("alice", PasswordHash.parse(cheap_hash("pw")))])
    _, port = await start_server(WebSocketTunnel(loopback(53), path="/t", users=users))
    base = f"ws://127.0.0.1:{port}/t"
    for url, auth, status in [
        (f"{base}?udp=127.0.0.1:53", None, 401),
        (f"{base}", ("alice", "pw"), 400),
        (f"{base}?udp=127.0.0.1:53&tcp=127.0.0.1:53", ("alice", "pw"), 400),
        (f"{base}?udp=10.0.0.1:53", ("alice", "pw"), 403),
        (f"{base}?tcp=127.0.0.1:80", ("alice", "pw"), 403),
    ]:
        with pytest.raises(WebSocketRefused) as refused:
            await connect_websocket(url, auth=auth)
        assert refused.value.status == status, url


async def dig(port: int, name: str = "example.test") -> bytes:
    got = await run(
        [
            DIG,
            "@127.0.0.1",
            "-p",
            str(port),
            "+short",
            "+time=5",
            "+tries=1",
            name,
            "A",
        ],
    )
    return got.stdout.strip()


async def test_dig_through_forward_udp_behind_nginx(
    start_server: StartServer,
    daemons: Daemons,
    tmp_path: Path,
    nursery: trio.Nursery,
) -> None:
    """dig -> hijack forward --udp -> nginx -> WebSocketTunnel -> dnsmasq."""
    dns = await start_dnsmasq(daemons, tmp_path)
    _, hijack = await start_server(WebSocketTunnel(loopback(dns), path="/tunnel"))
    nginx = await start_nginx(daemons, tmp_path, f"127.0.0.1:{hijack}")
    with trio.CancelScope() as scope:
        sock = await nursery.start(
            functools.partial(
                serve_udp_forward,
                ("127.0.0.1", 0),
                f"ws://127.0.0.1:{nginx}/tunnel",
                ("127.0.0.1", dns),
            )
        )
        port = sock.getsockname()[1]
        assert await dig(port) == b"192.0.2.7"
        assert await dig(port, "other.example.test") == b"192.0.2.7"
        scope.cancel()


async def test_forward_udp_command(
    start_server: StartServer, daemons: Daemons, tmp_path: Path
) -> None:
    """The command: ``hijack proxy --websocket-tunnel`` and ``hijack forward
    --udp`` as processes."""
    dns = await start_dnsmasq(daemons, tmp_path)
    server_args = ["proxy", "--listen", "127.0.0.1:0", "--websocket-tunnel", "/t"]
    server_args += ["--allow-private", "--allow-port", str(dns)]
    async with run_hijack(server_args, stop_signal=signal.SIGTERM) as server:
        port = await server.port()
        forward_args = ["forward", "--udp", "--listen", "127.0.0.1:0"]
        forward_args += [
            "--target",
            f"127.0.0.1:{dns}",
            "--via",
            f"ws://127.0.0.1:{port}/t",
        ]
        async with run_hijack(forward_args, stop_signal=signal.SIGTERM) as forward:
            where = await forward.wait_for(r"listening on udp://127\.0\.0\.1:(\d+)")
            assert await dig(int(where[1])) == b"192.0.2.7"
        await server.wait_for(
            r"wstunnel-udp .* ok datagrams=1/1 up=\d+ down=\d+", stream="stderr"
        )


async def test_forward_socks_command(start_server: StartServer) -> None:
    _, origin = await start_server(hello)
    _, server = await start_server(ConnectProxy(loopback(origin)))
    args = [
        "forward",
        "--listen",
        "socks5://127.0.0.1:0",
        "--via",
        f"127.0.0.1:{server}",
    ]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as forward:
        where = await forward.wait_for(r"listening on socks5://(127\.0\.0\.1:\d+)")
        got = await run(
            [
                CURL,
                "-sS",
                "--max-time",
                "10",
                "--socks5-hostname",
                where[1],
                f"http://localhost:{origin}/",
            ],
            env={},
        )
        assert got.stdout == b"hello through the tunnel\n", got.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["--listen", "socks5://127.0.0.1:0", "--target", "a:1", "--via", "127.0.0.1:1"],
        ["--udp", "--listen", "127.0.0.1:0", "--via", "ws://127.0.0.1:1/t"],
        ["--udp", "--listen", "127.0.0.1:0", "--target", "a:1", "--via", "127.0.0.1:1"],
    ],
)
async def test_forward_usage_errors(args: list[str]) -> None:
    async with run_hijack(["forward", *args]) as forward:
        assert await forward.wait(30) == 2
    [line] = forward.stderr.splitlines()  # one line, no traceback
    assert line.startswith("hijack forward: --")


async def test_a_udp_flow_ends_when_idle_and_a_new_one_opens(
    start_server: StartServer,
) -> None:
    """A flow's WebSocket closes after its idle timeout (the server logs
    its end); the next datagram from the same source opens a new flow."""
    async with trio.open_nursery() as nursery:
        echo_port, received = await nursery.start(udp_echo)
        _, server = await start_server(WebSocketTunnel(loopback(echo_port), path="/t"))
        with capture_log("hijack.wstunnel") as log:
            sock = await nursery.start(
                functools.partial(
                    serve_udp_forward,
                    ("127.0.0.1", 0),
                    f"ws://127.0.0.1:{server}/t",
                    ("127.0.0.1", echo_port),
                    idle_timeout=0.2,
                )
            )
            forward = sock.getsockname()[:2]
            with trio.socket.socket(type=socket.SOCK_DGRAM) as client:
                await client.sendto(b"one", forward)
                with trio.fail_after(10):
                    assert await client.recv(100) == b"one"
                    await log.logged.wait()  # the idle flow ended
                [line] = [r.getMessage() for r in log.records]
                assert line.startswith("wstunnel-udp ") and " ok datagrams=1/1" in line
                await client.sendto(b"two", forward)
                with trio.fail_after(10):
                    assert await client.recv(100) == b"two"
        assert received == [b"one", b"two"]
        nursery.cancel_scope.cancel()
