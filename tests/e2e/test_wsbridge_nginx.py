"""WebSocket tunnels end to end with components nobody here wrote: nginx
(``proxy_pass`` with the Upgrade headers) in front of a ``hijack wsbridge``
process, Node's ``ws`` speaking websockify's ``binary`` subprotocol, and
curl through ``hijack forward --mode websocket`` to Python's http.server.

``make test`` installs nginx (Debian package) and ``ws`` (npm, into
tests/node); a test skips only if one of them is really not there."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from ..client import test_forward
from ..client.test_forward import echo
from ..daemons import Daemons, nginx_http_temp_paths
from ..helpers import start_upstream
from ..hijack_process import HijackProcess, run_hijack
from ..ws_test_client import WSClient

ROOT = Path(__file__).resolve().parents[2]
NODE_DIR = ROOT / "tests" / "node"
NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)),
    None,
)
NODE = shutil.which("node")
http_upstream = test_forward.http_upstream  # the fixture, shared
CURL = shutil.which("curl")

needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx is not installed (make sysdeps installs it)"
)
needs_node_ws = pytest.mark.skipif(
    NODE is None or not (NODE_DIR / "node_modules" / "ws").is_dir(),
    reason="node or its ws package is not installed (make test runs npm ci in "
    "tests/node)",
)

NGINX_CONF = """\
events {{ worker_connections 128; }}
http {{
    access_log {tmp}/access.log;
{temp_paths}
    # The usual WebSocket pass-through (nginx docs, "WebSocket proxying").
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      close;
    }}
    server {{
        listen 127.0.0.1:{port}{ssl};
        {certificate}
        location /tunnel {{
            proxy_pass http://{backend};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


async def start_nginx(
    daemons: Daemons, tmp: Path, backend: str, tls: trustme.LeafCert | None = None
) -> int:
    """nginx on a loopback port, proxying ``/tunnel`` to ``backend``
    (``127.0.0.1:PORT`` or ``unix:PATH``); returns its port. No file
    outside ``tmp`` is touched (``-p``, ``-c``, ``-e``). With ``tls`` it
    serves HTTPS (wss://) with that certificate.

    The listening socket is made here and inherited by nginx (its ``NGINX``
    environment variable, the one its binary upgrade uses): the port is
    known and accepting before nginx even starts, with no race for it."""
    assert NGINX is not None
    certificate = ""
    if tls is not None:
        tls.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
        tls.private_key_pem.write_to_path(str(tmp / "key.pem"))
        certificate = (
            f"ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;"
        )
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port: int = listener.getsockname()[1]
        config = NGINX_CONF.format(
            tmp=tmp,
            temp_paths=nginx_http_temp_paths(tmp),
            port=port,
            backend=backend,
            ssl=" ssl" if tls else "",
            certificate=certificate,
        )
        await daemons.start_nginx(
            NGINX,
            tmp,
            config,
            env={**os.environ, "NGINX": f"{listener.fileno()};"},
            pass_fds=(listener.fileno(),),
            stop_signal=signal.SIGQUIT,  # graceful stop
        )
    return port


async def backend_of(bridge: HijackProcess) -> str:
    """nginx's name for where the bridge said it listens."""
    return (await bridge.address()).removeprefix("http://")


@pytest.fixture
def nginx_tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    log = tmp_path / "error.log"
    if log.exists():  # shown by pytest when the test failed
        print("nginx error.log:\n" + log.read_text()[-4000:])


@needs_nginx
@pytest.mark.parametrize("bridge_on", ["tcp", "unix"])
async def test_python_client_through_nginx_to_the_bridge(
    nursery: trio.Nursery, daemons: Daemons, nginx_tmp: Path, bridge_on: str
) -> None:
    upstream = await start_upstream(nursery, echo)
    where = (
        ["--listen", "127.0.0.1:0"]
        if bridge_on == "tcp"
        else ["--unix", str(nginx_tmp / "bridge.sock")]
    )
    args = ["wsbridge", *where, "--upstream", f"127.0.0.1:{upstream}"]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as bridge:
        front = await start_nginx(daemons, nginx_tmp, await backend_of(bridge))
        stream = await trio.open_tcp_stream("127.0.0.1", front)
        async with stream:
            client = await WSClient.connect(stream, "/tunnel")
            assert client.subprotocol == "binary"
            payload = os.urandom(2_000_000)

            async def send_all() -> None:
                for at in range(0, len(payload), 250_000):
                    await client.send(payload[at : at + 250_000])

            async with trio.open_nursery() as inner:
                inner.start_soon(send_all)  # while reading: the echo is big
                assert await client.receive_bytes(len(payload)) == payload
            assert await client.close() == 1000


@needs_nginx
@needs_node_ws
@pytest.mark.parametrize("route", ["upstream", "token"])
async def test_node_ws_binary_subprotocol_through_nginx(
    nursery: trio.Nursery, daemons: Daemons, nginx_tmp: Path, route: str
) -> None:
    """noVNC's way in: ``ws`` with the ``binary`` subprotocol, through nginx,
    to a fixed upstream or to a websockify token target (``?token=``)."""
    assert NODE is not None
    upstream = await start_upstream(nursery, echo)
    tokens = nginx_tmp / "tokens"
    tokens.write_text(f"# websockify format\nvnc1: 127.0.0.1:{upstream}\n")
    if route == "upstream":
        bridge_to, query = ["--upstream", f"127.0.0.1:{upstream}"], ""
    else:
        bridge_to = ["--targets", str(tokens), "--allow-port", str(upstream)]
        bridge_to += ["--allow", "127.0.0.1"]
        query = "?token=vnc1"
    args = ["wsbridge", "--listen", "127.0.0.1:0", *bridge_to]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as bridge:
        front = await start_nginx(daemons, nginx_tmp, await backend_of(bridge))
        with trio.fail_after(60):  # a safety bound, not timing logic
            result = await trio.run_process(
                [
                    NODE,
                    str(NODE_DIR / "ws_binary_client.mjs"),
                    f"ws://127.0.0.1:{front}/tunnel{query}",
                    "3000000",
                    "65536",
                ],
                capture_stdout=True,
                check=False,
                cwd=NODE_DIR,
            )
    seen = json.loads(result.stdout)
    assert seen == {
        "protocol": "binary",
        "bytes": 3_000_000,
        "same": True,
        "closeCode": 1000,
        "error": None,
    }
    assert result.returncode == 0


@needs_nginx
async def test_plain_get_through_nginx_is_426(
    nursery: trio.Nursery, daemons: Daemons, nginx_tmp: Path
) -> None:
    upstream = await start_upstream(nursery, echo)
    args = [
        "wsbridge",
        "--listen",
        "127.0.0.1:0",
        "--upstream",
        f"127.0.0.1:{upstream}",
    ]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as bridge:
        front = await start_nginx(daemons, nginx_tmp, await backend_of(bridge))
        assert CURL is not None
        result = await trio.run_process(
            [
                *(CURL, "-sS", "-o", "/dev/null", "-w", "%{http_code}"),
                *("--noproxy", "*", f"http://127.0.0.1:{front}/tunnel"),
            ],
            capture_stdout=True,
        )
    assert result.stdout == b"426"


@needs_nginx
@pytest.mark.parametrize("scheme", ["ws", "wss"])
async def test_curl_through_forward_nginx_and_bridge_to_http_server(
    daemons: Daemons, nginx_tmp: Path, http_upstream: int, scheme: str
) -> None:
    """curl -> hijack forward --mode websocket -> nginx (TLS for wss) ->
    hijack wsbridge -> http.server: four processes nobody here wrote but
    the two hijack ones, all through the command line."""
    assert CURL is not None
    ca = trustme.CA()
    env = {}
    if scheme == "wss":
        ca.cert_pem.write_to_path(str(nginx_tmp / "ca.pem"))
        env["SSL_CERT_FILE"] = str(nginx_tmp / "ca.pem")  # the forwarder trusts it
    upstream = f"127.0.0.1:{http_upstream}"
    bridge_args = ["wsbridge", "--listen", "127.0.0.1:0", "--upstream", upstream]
    async with run_hijack(bridge_args, stop_signal=signal.SIGTERM) as bridge:
        tls = ca.issue_cert("127.0.0.1") if scheme == "wss" else None
        front = await start_nginx(daemons, nginx_tmp, await backend_of(bridge), tls)
        forward_args = [
            *("forward", "--mode", "websocket", "--listen", "127.0.0.1:0"),
            *("--via", f"{scheme}://127.0.0.1:{front}/tunnel"),
        ]
        async with run_hijack(
            forward_args, env=env, stop_signal=signal.SIGTERM
        ) as forward:
            local = await forward.address()
            result = await trio.run_process(
                [
                    *(CURL, "-sS", "--noproxy", "*", "--max-time", "20"),
                    *(f"http://{local}/first", f"http://{local}/second"),
                ],
                capture_stdout=True,
            )
    assert result.stdout == b"hello from /first\nhello from /second\n"
