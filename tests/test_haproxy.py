"""PROXY protocol against a real HAProxy (Debian package ``haproxy``, see
``make sysdeps``), started here on loopback ports with a generated config:
``send-proxy`` and ``send-proxy-v2`` in front of hijack, ``accept-proxy``
behind it. The client connects from its own loopback address (127.0.0.5...)
so the address hijack reports cannot be HAProxy's."""

from __future__ import annotations

import functools
import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hijack import ProxyProtocol, Request, Response, Server
from hijack.upgrades.tcp import TCPUpgrade

from .helpers import connect_from, read_until_closed

HAPROXY = "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(
    not os.path.exists(HAPROXY), reason="haproxy not installed (make sysdeps)"
)

GET_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def haproxy_config(hijack_port: int, ports: dict[str, int]) -> str:
    """Frontends: ``v1``/``v2`` pass TCP to hijack with send-proxy(-v2),
    ``v6`` takes IPv6 clients to hijack over IPv4; ``echo`` accepts PROXY
    protocol and answers with the client address it was given."""
    return f"""
global
    maxconn 200

defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend v1
    bind 127.0.0.1:{ports["v1"]}
    default_backend hijack_v1

frontend v2
    bind 127.0.0.1:{ports["v2"]}
    default_backend hijack_v2

frontend v6
    bind [::1]:{ports["v6"]}
    default_backend hijack_v2

backend hijack_v1
    server hijack 127.0.0.1:{hijack_port} send-proxy

backend hijack_v2
    option httpchk GET /health
    server hijack 127.0.0.1:{hijack_port} send-proxy-v2 check check-send-proxy inter 100ms

frontend echo
    mode http
    bind 127.0.0.1:{ports["echo"]} accept-proxy
    http-request return status 200 content-type text/plain lf-string "client=%[src]:%[src_port]\\n"
"""


async def wait_listening(port: int, host: str = "127.0.0.1") -> None:
    """HAProxy has bound ``port`` (bounded: a start-up, not timing logic)."""
    for _ in range(200):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            await trio.sleep(0.025)
            continue
        await stream.aclose()
        return
    raise AssertionError(f"haproxy did not listen on {host}:{port} in 5 s")


Ports = dict[str, int]
StartHAProxy = Callable[[int], Awaitable[Ports]]


@pytest.fixture
async def haproxy(
    nursery: trio.Nursery, tmp_path: Path, no_leaks: None
) -> AsyncIterator[StartHAProxy]:
    """``ports = await haproxy(hijack_port)``: HAProxy in the foreground
    (``-db``), stopped at the end of the test."""
    processes: list[trio.Process] = []

    async def start(hijack_port: int) -> Ports:
        ports = {"v1": free_port(), "v2": free_port(), "echo": free_port()}
        ports["v6"] = free_port("::1")
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(hijack_port, ports))
        command = [HAPROXY, "-db", "-f", str(config)]
        process = await nursery.start(
            functools.partial(
                trio.run_process,
                command,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                check=False,
            )
        )
        processes.append(process)
        for name in ("v1", "v2", "echo"):
            await wait_listening(ports[name])
        await wait_listening(ports["v6"], "::1")
        return ports

    yield start
    for process in processes:
        process.terminate()
        with trio.fail_after(10):
            await process.wait()


def who_handler(
    seen: list[dict[str, Any]], checked: trio.Event | None = None
) -> Callable[[Request], Awaitable[Response]]:
    """Answers (and records) what the connection knows of its client; sets
    ``checked`` on HAProxy's first health check."""

    async def who(request: Request) -> Response:
        connection = request.connection
        header = connection.proxy_header
        record = {
            "path": request.path,
            "remote": list(connection.remote_address),
            "peer": list(connection.peer_address),
            "command": header.command if header else None,
            "version": header.version if header else None,
        }
        seen.append(record)
        if checked is not None and request.path == "/health":
            checked.set()
        return Response(200, body=json.dumps(record).encode())

    return who


async def serve(
    nursery: trio.Nursery, handler: Any, proxy_protocol: ProxyProtocol | None
) -> tuple[Server, int]:
    server = Server(handler)
    listeners = await nursery.start(
        functools.partial(server.serve_tcp, 0, proxy_protocol=proxy_protocol)
    )
    return server, listeners[0].socket.getsockname()[1]


async def get_from(source: str, host: str, port: int) -> tuple[int, bytes]:
    """GET / from ``source``; the client's port and the answer's body."""
    async with await connect_from(source, host, port) as stream:
        client_port: int = stream.socket.getsockname()[1]
        await stream.send_all(GET_CLOSE)
        data = await read_until_closed(stream)
    return client_port, data.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(("frontend", "version"), [("v1", 1), ("v2", 2)])
async def test_haproxy_send_proxy_in_front_of_hijack(
    nursery: trio.Nursery, haproxy: StartHAProxy, frontend: str, version: int
) -> None:
    seen: list[dict[str, Any]] = []
    policy = ProxyProtocol(["127.0.0.1"])
    server, port = await serve(nursery, who_handler(seen), policy)
    ports = await haproxy(port)
    client_port, body = await get_from("127.0.0.5", "127.0.0.1", ports[frontend])
    answer = json.loads(body)
    assert answer["remote"] == ["127.0.0.5", client_port]
    assert answer["peer"][0] == "127.0.0.1"  # HAProxy's own socket
    assert answer["version"] == version
    assert not policy.rejections
    await server.shutdown(grace=0)


async def test_haproxy_ipv6_client_through_ipv4_and_health_checks(
    nursery: trio.Nursery, haproxy: StartHAProxy
) -> None:
    """An IPv6 client reaches hijack over an IPv4 connection from HAProxy;
    HAProxy's own health checks (send-proxy-v2: LOCAL) are served too."""
    seen: list[dict[str, Any]] = []
    checked = trio.Event()
    policy = ProxyProtocol(["127.0.0.1"])
    server, port = await serve(nursery, who_handler(seen, checked), policy)
    ports = await haproxy(port)
    client_port, body = await get_from("::1", "::1", ports["v6"])
    assert json.loads(body)["remote"] == ["::1", client_port]
    with trio.fail_after(10):  # checks run every 100 ms
        await checked.wait()
    check = next(r for r in seen if r["path"] == "/health")
    assert check["command"] == "local"
    assert check["remote"] == check["peer"]
    assert not policy.rejections
    await server.shutdown(grace=0)


@pytest.mark.parametrize("version", [1, 2])
async def test_haproxy_accept_proxy_behind_tcp_upgrade(
    nursery: trio.Nursery, haproxy: StartHAProxy, version: int
) -> None:
    ports = await haproxy(free_port())  # only its accept-proxy frontend is used
    upgrade = TCPUpgrade(("127.0.0.1", ports["echo"]), send_proxy_protocol=version)  # type: ignore[arg-type]
    server, port = await serve(nursery, upgrade, None)
    async with await connect_from("127.0.0.6", "127.0.0.1", port) as stream:
        client_port = stream.socket.getsockname()[1]
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: tcp\r\n\r\n"
            + GET_CLOSE
        )
        data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.endswith(f"client=127.0.0.6:{client_port}\n".encode())
    await server.shutdown(grace=0)


async def test_cli_proxy_between_two_haproxies(
    nursery: trio.Nursery, haproxy: StartHAProxy
) -> None:
    """client -> HAProxy send-proxy -> ``hijack proxy --proxy-protocol
    --send-proxy-protocol 2`` -> CONNECT -> HAProxy accept-proxy: the last
    hop names the first client, and so does hijack's tunnel log line. (The
    v1 frontend: the v2 backend's HTTP health check would get 405 from a
    CONNECT-only proxy and take the server out.)"""
    hijack_port = free_port()
    ports = await haproxy(hijack_port)
    command = [
        sys.executable,
        "-m",
        "hijack",
        "proxy",
        "--listen",
        f"127.0.0.1:{hijack_port}",
        "--proxy-protocol",
        "127.0.0.1/32",
        "--send-proxy-protocol",
        "2",
        "--allow-port",
        str(ports["echo"]),
        "--allow",
        "127.0.0.1",
    ]
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
        )
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        out = b""
        with trio.fail_after(30):
            while b"listening on" not in out:
                out += await process.stdout.receive_some()
        async with await connect_from("127.0.0.7", "127.0.0.1", ports["v1"]) as stream:
            client_port = stream.socket.getsockname()[1]
            await stream.send_all(
                f"CONNECT 127.0.0.1:{ports['echo']} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                + GET_CLOSE
            )
            data = await read_until_closed(stream)
        assert data.startswith(b"HTTP/1.1 200 "), data
        assert data.endswith(f"client=127.0.0.7:{client_port}\n".encode())
        log = b""
        with trio.fail_after(10):
            while b"CONNECT 127.0.0.7" not in log:
                log += await process.stderr.receive_some()
        assert re.search(rb"CONNECT 127\.0\.0\.7:%d -> " % client_port, log)
    finally:
        process.terminate()
        with trio.fail_after(15):
            await process.wait()
