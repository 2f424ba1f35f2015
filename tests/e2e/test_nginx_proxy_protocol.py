"""The README's nginx snippets, run: nginx's ``stream`` proxy with
``proxy_protocol on`` in front of hijack, and an nginx ``listen ...
proxy_protocol`` server behind hijack's ``send_proxy_protocol``. nginx
(Debian ``nginx`` + ``libnginx-mod-stream``, see ``make sysdeps``) runs in
the foreground from a config in the test's tmp dir; nothing in /etc is read."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from hijack import ProxyProtocol
from hijack.upgrades.tcp import TCPUpgrade

from ..conftest import StartServer
from ..daemons import Daemons, free_port, nginx_http_temp_paths
from ..proxied import get_from, tcp_upgrade_from, who_handler

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
pytestmark = pytest.mark.skipif(
    not (os.access(NGINX, os.X_OK) and os.path.exists(STREAM_MODULE)),
    reason="nginx or its stream module is not installed (make sysdeps)",
)

CONF = """\
load_module {stream_module};
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
{temp_paths}
    server {{
        listen 127.0.0.1:{behind} proxy_protocol;
        return 200 "client=$proxy_protocol_addr:$proxy_protocol_port\\n";
    }}
}}
"""

Ports = dict[str, int]
StartNginx = Callable[[int], Awaitable[Ports]]


@pytest.fixture
def nginx(daemons: Daemons, tmp_path: Path) -> StartNginx:
    """``ports = await nginx(hijack_port)``: ``front`` (stream, sends PROXY
    v1 to hijack) and ``behind`` (http, requires a PROXY header)."""

    async def start(hijack_port: int) -> Ports:
        ports = {"front": free_port(), "behind": free_port()}
        config = CONF.format(
            stream_module=STREAM_MODULE,
            temp_paths=nginx_http_temp_paths(tmp_path),
            hijack=hijack_port,
            **ports,
        )
        await daemons.start_nginx(
            NGINX,
            tmp_path,
            config,
            listening=[("127.0.0.1", port) for port in ports.values()],
        )
        return ports

    return start


async def test_nginx_stream_proxy_protocol_in_front_of_hijack(
    start_server: StartServer, nginx: StartNginx
) -> None:
    policy = ProxyProtocol(["127.0.0.1"])
    _, port = await start_server(who_handler(), proxy_protocol=policy)
    ports = await nginx(port)
    client_port, body = await get_from("127.0.0.8", "127.0.0.1", ports["front"])
    answer = json.loads(body)
    assert answer["remote"] == ["127.0.0.8", client_port]
    assert answer["peer"][0] == "127.0.0.1"  # nginx's own socket
    assert not policy.rejections


@pytest.mark.parametrize("version", [1, 2])
async def test_nginx_proxy_protocol_listener_behind_tcp_upgrade(
    start_server: StartServer, nginx: StartNginx, version: int
) -> None:
    ports = await nginx(free_port())  # only the "behind" server is used
    upgrade = TCPUpgrade(("127.0.0.1", ports["behind"]), send_proxy_protocol=version)  # type: ignore[arg-type]
    _, port = await start_server(upgrade)
    client_port, data = await tcp_upgrade_from("127.0.0.9", port)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.endswith(f"client=127.0.0.9:{client_port}\n".encode())
