"""WebSocket tunnels end to end with components nobody here wrote: nginx
(``proxy_pass`` with the Upgrade headers) in front of a ``hijack wsbridge``
process, Node's ``ws`` speaking websockify's ``binary`` subprotocol, and
curl through ``hijack forward --mode websocket`` to Python's http.server.

``make test`` installs nginx (Debian package) and ``ws`` (npm, into
tests/node); a test skips only if one of them is really not there."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trustme

from . import test_forward
from .helpers import start_upstream
from .test_forward import echo
from .ws_test_client import WSClient

ROOT = Path(__file__).resolve().parents[1]
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
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
{user}
events {{ worker_connections 128; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
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


@contextlib.asynccontextmanager
async def run_nginx(
    tmp: Path, backend: str, tls: trustme.LeafCert | None = None
) -> AsyncIterator[int]:
    """nginx on a loopback port, proxying ``/tunnel`` to ``backend``
    (``127.0.0.1:PORT`` or ``unix:PATH``); yields
    its port. No file outside ``tmp`` is touched (``-p``, ``-c``, ``-e``).
    With ``tls`` it serves HTTPS (wss://) with that certificate.

    The listening socket is made here and inherited by nginx (its ``NGINX``
    environment variable, the one its binary upgrade uses): the port is
    known and accepting before nginx even starts, with no race for it."""
    assert NGINX is not None
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    port = listener.getsockname()[1]
    # A master running as root hands the work to an unprivileged user that
    # could not enter this test's private tmp dir.
    user = "user root;" if os.geteuid() == 0 else ""
    certificate = ""
    if tls is not None:
        tls.cert_chain_pems[0].write_to_path(str(tmp / "cert.pem"))
        tls.private_key_pem.write_to_path(str(tmp / "key.pem"))
        certificate = (
            f"ssl_certificate {tmp}/cert.pem; ssl_certificate_key {tmp}/key.pem;"
        )
    conf = tmp / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            tmp=tmp,
            port=port,
            backend=backend,
            user=user,
            ssl=" ssl" if tls else "",
            certificate=certificate,
        )
    )
    command = [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
    env = {**os.environ, "NGINX": f"{listener.fileno()};"}
    try:
        async with trio.open_nursery() as nursery:
            process: trio.Process = await nursery.start(
                functools.partial(
                    trio.run_process,
                    command,
                    env=env,
                    pass_fds=(listener.fileno(),),
                    check=False,
                )
            )
            try:
                yield port
            finally:
                process.send_signal(signal.SIGQUIT)  # graceful stop
                with trio.move_on_after(10) as waited:
                    await process.wait()
                if waited.cancelled_caught:
                    process.kill()
                nursery.cancel_scope.cancel()
    finally:
        listener.close()


@contextlib.asynccontextmanager
async def run_hijack(
    *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[tuple[trio.Process, str]]:
    """``python -m hijack ARGS``; yields the process and the address from
    its "listening on" line. Stopped with SIGTERM (graceful shutdown)."""
    async with trio.open_nursery() as nursery:
        process: trio.Process = await nursery.start(
            functools.partial(
                trio.run_process,
                [sys.executable, "-m", "hijack", *args],
                stdout=subprocess.PIPE,
                check=False,
                cwd=ROOT,
                env={**os.environ, **(env or {})},
            )
        )
        assert process.stdout is not None
        out = b""
        try:
            with trio.fail_after(30):  # a safety bound, not timing logic
                while b"\n" not in out:
                    chunk = await process.stdout.receive_some()
                    assert chunk, f"hijack {args[0]} exited: {out!r}"
                    out += chunk
            line = out.split(b"\n")[0].decode()
            assert " listening on " in line, line
            yield process, line.rsplit(" ", 1)[1]
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.move_on_after(10) as waited:
                await process.wait()
            if waited.cancelled_caught:
                process.kill()
            nursery.cancel_scope.cancel()


def backend_of(address: str) -> str:
    """nginx's name for where hijack said it listens."""
    return address.removeprefix("http://")


@pytest.fixture
def nginx_tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    log = tmp_path / "error.log"
    if log.exists():  # shown by pytest when the test failed
        print("nginx error.log:\n" + log.read_text()[-4000:])


@needs_nginx
@pytest.mark.parametrize("bridge_on", ["tcp", "unix"])
async def test_python_client_through_nginx_to_the_bridge(
    nursery: trio.Nursery, nginx_tmp: Path, bridge_on: str
) -> None:
    upstream = await start_upstream(nursery, echo)
    where = (
        ["--listen", "127.0.0.1:0"]
        if bridge_on == "tcp"
        else ["--unix", str(nginx_tmp / "bridge.sock")]
    )
    async with (
        run_hijack("wsbridge", *where, "--upstream", f"127.0.0.1:{upstream}") as (
            _,
            bridge,
        ),
        run_nginx(nginx_tmp, backend_of(bridge)) as front,
    ):
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
    nursery: trio.Nursery, nginx_tmp: Path, route: str
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
    async with (
        run_hijack("wsbridge", "--listen", "127.0.0.1:0", *bridge_to) as (_, bridge),
        run_nginx(nginx_tmp, backend_of(bridge)) as front,
    ):
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
    nursery: trio.Nursery, nginx_tmp: Path
) -> None:
    upstream = await start_upstream(nursery, echo)
    async with (
        run_hijack(
            "wsbridge", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{upstream}"
        ) as (_, bridge),
        run_nginx(nginx_tmp, backend_of(bridge)) as front,
    ):
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
    nginx_tmp: Path, http_upstream: int, scheme: str
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
    async with (
        run_hijack("wsbridge", "--listen", "127.0.0.1:0", "--upstream", upstream) as (
            _,
            bridge,
        ),
        run_nginx(
            nginx_tmp,
            backend_of(bridge),
            ca.issue_cert("127.0.0.1") if scheme == "wss" else None,
        ) as front,
        run_hijack(
            *("forward", "--mode", "websocket", "--listen", "127.0.0.1:0"),
            *("--via", f"{scheme}://127.0.0.1:{front}/tunnel"),
            env=env,
        ) as (_, local),
    ):
        result = await trio.run_process(
            [
                *(CURL, "-sS", "--noproxy", "*", "--max-time", "20"),
                *(f"http://{local}/first", f"http://{local}/second"),
            ],
            capture_stdout=True,
        )
    assert result.stdout == b"hello from /first\nhello from /second\n"
