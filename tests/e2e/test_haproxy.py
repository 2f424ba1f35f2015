"""PROXY protocol against a real HAProxy (Debian package ``haproxy``, see
``make sysdeps``), started here on loopback ports with a generated config:
``send-proxy`` and ``send-proxy-v2`` in front of hijack, ``accept-proxy``
behind it. The client connects from its own loopback address (127.0.0.5...)
so the address hijack reports cannot be HAProxy's."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hijack import ProxyProtocol
from hijack.upgrades.tcp import TCPUpgrade

from ..conftest import StartServer
from ..daemons import Daemons, free_port
from ..helpers import connect_from, read_until_closed
from ..hijack_process import run_hijack
from ..proxied import GET_CLOSE, get_from, tcp_upgrade_from, who_handler

HAPROXY = "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(
    not os.path.exists(HAPROXY), reason="haproxy not installed (make sysdeps)"
)


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
    # A check's whole time is "inter" (100 ms) without it: too short for a
    # loaded machine.
    timeout check 5s

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


Ports = dict[str, int]
StartHAProxy = Callable[[int], Awaitable[Ports]]


@pytest.fixture
def haproxy(daemons: Daemons, tmp_path: Path) -> StartHAProxy:
    """``ports = await haproxy(hijack_port)``: HAProxy in the foreground
    (``-db``), stopped at the end of the test."""

    async def start(hijack_port: int) -> Ports:
        ports = {"v1": free_port(), "v2": free_port(), "echo": free_port()}
        ports["v6"] = free_port("::1")
        config = tmp_path / "haproxy.cfg"
        config.write_text(haproxy_config(hijack_port, ports))
        # Ready when the echo frontend accepts: HAProxy binds every frontend
        # before it accepts on any. Probing the others would open backend
        # connections to hijack that the probe then cuts before HAProxy sent
        # their PROXY header (counted as rejections, failing the tests now
        # and then).
        await daemons.start(
            [HAPROXY, "-db", "-f", str(config)],
            listening=[("127.0.0.1", ports["echo"])],
        )
        return ports

    return start


@pytest.mark.parametrize(("frontend", "version"), [("v1", 1), ("v2", 2)])
async def test_haproxy_send_proxy_in_front_of_hijack(
    start_server: StartServer, haproxy: StartHAProxy, frontend: str, version: int
) -> None:
    seen: list[dict[str, Any]] = []
    policy = ProxyProtocol(["127.0.0.1"])
    _, port = await start_server(who_handler(seen), proxy_protocol=policy)
    ports = await haproxy(port)
    client_port, body = await get_from("127.0.0.5", "127.0.0.1", ports[frontend])
    answer = json.loads(body)
    assert answer["remote"] == ["127.0.0.5", client_port]
    assert answer["peer"][0] == "127.0.0.1"  # HAProxy's own socket
    assert answer["version"] == version
    assert not policy.rejections


async def test_haproxy_ipv6_client_through_ipv4_and_health_checks(
    start_server: StartServer, haproxy: StartHAProxy
) -> None:
    """An IPv6 client reaches hijack over an IPv4 connection from HAProxy;
    HAProxy's own health checks (send-proxy-v2: LOCAL) are served too."""
    seen: list[dict[str, Any]] = []
    checked = trio.Event()
    policy = ProxyProtocol(["127.0.0.1"])
    _, port = await start_server(who_handler(seen, checked), proxy_protocol=policy)
    ports = await haproxy(port)
    client_port, body = await get_from("::1", "::1", ports["v6"])
    assert json.loads(body)["remote"] == ["::1", client_port]
    with trio.fail_after(10):  # checks run every 100 ms
        await checked.wait()
    check = next(r for r in seen if r["path"] == "/health")
    assert check["command"] == "local"
    assert check["remote"] == check["peer"]
    assert not policy.rejections


@pytest.mark.parametrize("version", [1, 2])
async def test_haproxy_accept_proxy_behind_tcp_upgrade(
    start_server: StartServer, haproxy: StartHAProxy, version: int
) -> None:
    ports = await haproxy(free_port())  # only its accept-proxy frontend is used
    upgrade = TCPUpgrade(("127.0.0.1", ports["echo"]), send_proxy_protocol=version)  # type: ignore[arg-type]
    _, port = await start_server(upgrade)
    client_port, data = await tcp_upgrade_from("127.0.0.6", port)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.endswith(f"client=127.0.0.6:{client_port}\n".encode())


async def test_cli_proxy_between_two_haproxies(haproxy: StartHAProxy) -> None:
    """client -> HAProxy send-proxy -> ``hijack proxy --proxy-protocol
    --send-proxy-protocol 2`` -> CONNECT -> HAProxy accept-proxy: the last
    hop names the first client, and so does hijack's tunnel log line. (The
    v1 frontend: the v2 backend's HTTP health check would get 405 from a
    CONNECT-only proxy and take the server out.)"""
    hijack_port = free_port()
    ports = await haproxy(hijack_port)
    args = [
        *("proxy", "--listen", f"127.0.0.1:{hijack_port}"),
        *("--proxy-protocol", "127.0.0.1/32", "--send-proxy-protocol", "2"),
        *("--allow-port", str(ports["echo"]), "--allow", "127.0.0.1"),
    ]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as hijack:
        await hijack.port()
        async with await connect_from("127.0.0.7", "127.0.0.1", ports["v1"]) as stream:
            client_port = stream.socket.getsockname()[1]
            await stream.send_all(
                f"CONNECT 127.0.0.1:{ports['echo']} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
                + GET_CLOSE
            )
            data = await read_until_closed(stream)
        assert data.startswith(b"HTTP/1.1 200 "), data
        assert data.endswith(f"client=127.0.0.7:{client_port}\n".encode())
        await hijack.wait_for(
            rf"connect 127\.0\.0\.7:{client_port} -> ", stream="stderr"
        )
