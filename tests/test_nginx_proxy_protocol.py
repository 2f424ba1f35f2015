"""The README's nginx snippets, run: nginx's ``stream`` proxy with
``proxy_protocol on`` in front of hijack, and an nginx ``listen ...
proxy_protocol`` server behind hijack's ``send_proxy_protocol``. nginx
(Debian ``nginx`` + ``libnginx-mod-stream``, see ``make sysdeps``) runs in
the foreground from a config in the test's tmp dir; nothing in /etc is read."""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from hijack import ProxyProtocol, Request, Response, Server
from hijack.upgrades.tcp import TCPUpgrade

from .helpers import connect_from, read_until_closed
from .test_haproxy import GET_CLOSE, free_port, wait_listening

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
pytestmark = pytest.mark.skipif(
    not (os.access(NGINX, os.X_OK) and os.path.exists(STREAM_MODULE)),
    reason="nginx or its stream module is not installed (make sysdeps)",
)

CONF = """\
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
load_module {stream_module};
{user}
events {{ worker_connections 64; }}
stream {{
    server {{
        listen 127.0.0.1:{front};
        proxy_pass 127.0.0.1:{hijack};
        proxy_protocol on;
    }}
}}
http {{
    access_log off;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{behind} proxy_protocol;
        return 200 "client=$proxy_protocol_addr:$proxy_protocol_port\\n";
    }}
}}
"""

Ports = dict[str, int]
StartNginx = Callable[[int], Awaitable[Ports]]


@pytest.fixture
async def nginx(
    nursery: trio.Nursery, tmp_path: Path, no_leaks: None
) -> AsyncIterator[StartNginx]:
    """``ports = await nginx(hijack_port)``: ``front`` (stream, sends PROXY
    v1 to hijack) and ``behind`` (http, requires a PROXY header)."""
    processes: list[trio.Process] = []

    async def start(hijack_port: int) -> Ports:
        ports = {"front": free_port(), "behind": free_port()}
        # A master running as root hands the work to an unprivileged user
        # that could not enter this test's private tmp dir.
        user = "user root;" if os.geteuid() == 0 else ""
        conf = tmp_path / "nginx.conf"
        conf.write_text(
            CONF.format(
                tmp=tmp_path,
                stream_module=STREAM_MODULE,
                user=user,
                hijack=hijack_port,
                **ports,
            )
        )
        command = [NGINX, "-p", str(tmp_path), "-c", str(conf), "-e", "stderr"]
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
        for port in ports.values():
            await wait_listening(port)
        return ports

    yield start
    for process in processes:
        process.terminate()
        with trio.fail_after(10):
            await process.wait()


async def who(request: Request) -> Response:
    connection = request.connection
    body = {
        "remote": list(connection.remote_address),
        "peer": list(connection.peer_address),
    }
    return Response(200, body=json.dumps(body).encode())


async def serve(
    nursery: trio.Nursery, handler: Any, policy: ProxyProtocol | None
) -> tuple[Server, int]:
    server = Server(handler)
    listeners = await nursery.start(
        functools.partial(server.serve_tcp, 0, proxy_protocol=policy)
    )
    return server, listeners[0].socket.getsockname()[1]


async def test_nginx_stream_proxy_protocol_in_front_of_hijack(
    nursery: trio.Nursery, nginx: StartNginx
) -> None:
    policy = ProxyProtocol(["127.0.0.1"])
    server, port = await serve(nursery, who, policy)
    ports = await nginx(port)
    async with await connect_from("127.0.0.8", "127.0.0.1", ports["front"]) as stream:
        client_port = stream.socket.getsockname()[1]
        await stream.send_all(GET_CLOSE)
        data = await read_until_closed(stream)
    answer = json.loads(data.partition(b"\r\n\r\n")[2])
    assert answer["remote"] == ["127.0.0.8", client_port]
    assert answer["peer"][0] == "127.0.0.1"  # nginx's own socket
    assert not policy.rejections
    await server.shutdown(grace=0)


@pytest.mark.parametrize("version", [1, 2])
async def test_nginx_proxy_protocol_listener_behind_tcp_upgrade(
    nursery: trio.Nursery, nginx: StartNginx, version: int
) -> None:
    ports = await nginx(free_port())  # only the "behind" server is used
    upgrade = TCPUpgrade(("127.0.0.1", ports["behind"]), send_proxy_protocol=version)  # type: ignore[arg-type]
    server, port = await serve(nursery, upgrade, None)
    async with await connect_from("127.0.0.9", "127.0.0.1", port) as stream:
        client_port = stream.socket.getsockname()[1]
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: tcp\r\n\r\n"
            + GET_CLOSE
        )
        data = await read_until_closed(stream)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.endswith(f"client=127.0.0.9:{client_port}\n".encode())
    await server.shutdown(grace=0)
