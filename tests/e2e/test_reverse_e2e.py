"""Reverse tunnels end to end: ``hijack tcp --allow-reverse`` and ``hijack
forward --reverse`` as real processes, with the services people publish
this way (Redis with redis-benchmark, OpenSSH, Python's http.server read by
curl and Chromium), nginx in front of the server (wss://) and behind the
client (PROXY protocol), and the failures that matter: kill -9 of the client,
a client that stops answering, a server restart, two clients for one port.

``make sysdeps`` installs the daemons; a test skips only if one is really
not there."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trustme

from ..daemons import Daemons, free_port, nginx_http_temp_paths
from ..helpers import read_until_closed
from ..hijack_process import HijackProcess, run_hijack
from .test_wsbridge_nginx import NGINX, start_nginx

SSHD = "/usr/sbin/sshd"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def needs(*programs: str | None) -> pytest.MarkDecorator:
    missing = [p for p in programs if p is None or not shutil.which(p)]
    return pytest.mark.skipif(
        bool(missing), reason=f"not installed: {missing} (make sysdeps)"
    )


#: Real seconds: how soon the public port must refuse once the client is
#: killed (the server reads the control connection's end at once).
GONE_AFTER_KILL = 2.0


#: Real seconds: how soon a client publishes again once its server is back
#: (its back-off is capped at 1 s by ``--reconnect-max 1``).
RECONNECT_WITHIN = 10.0


def server_args(port: int = 0, *extra: str) -> list[str]:
    """``hijack tcp`` that lets loopback clients publish 1024-65535."""
    args = ["tcp", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9"]
    return [*args, "--allow-reverse", "127.0.0.1:1024-65535", *extra]


@contextlib.asynccontextmanager
async def reverse_server(*extra: str) -> AsyncIterator[tuple[HijackProcess, int]]:
    async with run_hijack(server_args(0, *extra), stop_signal=signal.SIGTERM) as server:
        yield server, await server.port()


@contextlib.asynccontextmanager
async def reverse_client(
    via: str, public: int, target: int, *extra: str, env: dict[str, str] | None = None
) -> AsyncIterator[HijackProcess]:
    """``hijack forward --reverse`` publishing ``public`` -> ``target``, once
    it says so."""
    args = ["forward", "--reverse", "--via", via, "--remote", str(public)]
    args += ["--target", f"127.0.0.1:{target}", "--reconnect-max", "1", *extra]
    async with run_hijack(args, env=env, stop_signal=signal.SIGTERM) as client:
        await client.wait_for(f"published 127.0.0.1:{public} ")
        yield client


async def refuses_within(port: int, seconds: float) -> float:
    """Seconds until connecting to ``port`` is refused (bounded: a real
    process is watched, polled every 20 ms)."""
    start = trio.current_time()
    with trio.fail_after(seconds):
        while True:
            try:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                return trio.current_time() - start
            await stream.aclose()
            await trio.sleep(0.02)


async def http_server(daemons: Daemons, root: Path, marker: str) -> int:
    (root / "index.html").write_text(
        f"<!doctype html><html><body><p id=m>{marker}</p></body></html>"
    )
    port = free_port()
    await daemons.start(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
        cwd=root,
        listening=[("127.0.0.1", port)],
    )
    return port


async def run(command: list[str], timeout: float = 30) -> str:
    """Run a client program to its end; its stdout (stderr on failure)."""
    with trio.fail_after(timeout):
        done = await trio.run_process(
            command, capture_stdout=True, capture_stderr=True, check=False
        )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, f"{command[0]}: {done.stderr.decode()}{output}"
    return output


@needs("redis-server", "redis-benchmark")
async def test_redis_benchmark_through_a_published_port(daemons: Daemons) -> None:
    redis = free_port()
    await daemons.start(
        [
            "redis-server",
            "--port",
            str(redis),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        listening=[("127.0.0.1", redis)],
    )
    public = free_port()
    async with (
        reverse_server() as (_, port),
        reverse_client(f"http://127.0.0.1:{port}", public, redis, "--pool", "4"),
    ):
        out = await run(
            [
                "redis-benchmark",
                "-h",
                "127.0.0.1",
                "-p",
                str(public),
                "-n",
                "300",
                "-c",
                "4",
                "-t",
                "set,get",
                "-q",
            ]
        )
    assert "SET:" in out and "GET:" in out and "requests per second" in out


@needs(SSHD, "ssh", "ssh-keygen")
async def test_ssh_to_the_public_port_reaches_sshd_next_to_the_client(
    daemons: Daemons, tmp_path: Path
) -> None:
    for name in ("host", "id"):
        await run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)]
        )
    (tmp_path / "authorized_keys").write_text((tmp_path / "id.pub").read_text())
    sshd_port = free_port()
    (tmp_path / "sshd_config").write_text(
        f"Port {sshd_port}\nListenAddress 127.0.0.1\n"
        f"HostKey {tmp_path / 'host'}\nPidFile {tmp_path / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp_path / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
    )
    # sshd insists on its privilege separation directory (Debian's is made
    # by the service unit, which a test does not run).
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    await daemons.start(
        [SSHD, "-D", "-e", "-f", str(tmp_path / "sshd_config")],
        listening=[("127.0.0.1", sshd_port)],
    )
    public = free_port()
    async with (
        reverse_server() as (_, port),
        reverse_client(f"http://127.0.0.1:{port}", public, sshd_port),
    ):
        out = await run(
            [
                "ssh",
                "-p",
                str(public),
                "-i",
                str(tmp_path / "id"),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "BatchMode=yes",
                "-o",
                "LogLevel=ERROR",
                f"{os.environ.get('USER', 'root')}@127.0.0.1",
                "echo",
                "hello-from-sshd",
            ]
        )
    assert out.strip() == "hello-from-sshd"


@needs("curl", CHROMIUM)
async def test_curl_and_chromium_load_a_page_through_the_public_port(
    daemons: Daemons, tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    (tmp_path / "site").mkdir()
    page = await http_server(daemons, tmp_path / "site", "served-from-behind-nat")
    public = free_port()
    async with (
        reverse_server() as (_, port),
        reverse_client(f"http://127.0.0.1:{port}", public, page),
    ):
        url = f"http://127.0.0.1:{public}/"
        assert "served-from-behind-nat" in await run(["curl", "-sS", url])
        dom = await run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={tmp_path / 'chromium'}",
                "--dump-dom",
                url,
            ],
            timeout=45,
        )
    assert '<p id="m">served-from-behind-nat</p>' in dom


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make sysdeps)")
async def test_client_over_wss_through_nginx(daemons: Daemons, tmp_path: Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "site").mkdir()
    page = await http_server(daemons, tmp_path / "site", "over-wss")
    public = free_port()
    async with reverse_server() as (_, port):
        nginx = await start_nginx(
            daemons, tmp_path, f"127.0.0.1:{port}", ca.issue_cert("localhost")
        )
        async with reverse_client(
            f"wss://localhost:{nginx}/tunnel",
            public,
            page,
            env={"SSL_CERT_FILE": str(tmp_path / "ca.pem")},
        ):
            for _ in range(3):
                body = await run(["curl", "-sS", f"http://127.0.0.1:{public}/"])
                assert "over-wss" in body
    access = (tmp_path / "access.log").read_text()
    assert access.count('GET /tunnel HTTP/1.1" 101') >= 3  # control + data


async def test_kill_9_a_second_client_and_a_server_restart(
    daemons: Daemons, tmp_path: Path
) -> None:
    (tmp_path / "site").mkdir()
    page = await http_server(daemons, tmp_path / "site", "restarts")
    public, listen = free_port(), free_port()
    via = f"http://127.0.0.1:{listen}"
    async with run_hijack(server_args(listen)) as first_server:
        await first_server.port()
        async with reverse_client(via, public, page) as client:
            # A second client for the same port is refused, not a steal.
            async with run_hijack(
                [
                    "forward",
                    "--reverse",
                    "--via",
                    via,
                    "--remote",
                    str(public),
                    "--target",
                    "127.0.0.1:9",
                ]
            ) as second:
                await second.wait_for("lost .*409 Conflict")
            client.process.kill()  # kill -9: no goodbye
            await refuses_within(public, GONE_AFTER_KILL)
        async with reverse_client(via, public, page) as client:
            assert "restarts" in await run(
                ["curl", "-sS", f"http://127.0.0.1:{public}/"]
            )
            first_server.signal(signal.SIGTERM)
            await first_server.wait()
            await client.wait_for("lost")
            async with run_hijack(server_args(listen)) as second_server:
                await second_server.port()
                with trio.fail_after(RECONNECT_WITHIN):
                    await client.wait_for(r"published[\s\S]*published")
                page_again = await run(["curl", "-sS", f"http://127.0.0.1:{public}/"])
                assert "restarts" in page_again


async def test_a_client_that_stops_answering_is_gone_within_the_keepalive(
    daemons: Daemons, tmp_path: Path
) -> None:
    """SIGSTOP: the client's host still holds the connection open (no FIN),
    as a crashed host or a cut cable would; only the keepalive notices."""
    (tmp_path / "site").mkdir()
    page = await http_server(daemons, tmp_path / "site", "keepalive")
    public = free_port()
    async with (
        reverse_server("--reverse-keepalive", "1") as (_, port),
        reverse_client(f"http://127.0.0.1:{port}", public, page) as client,
    ):
        client.signal(signal.SIGSTOP)
        try:
            # The window (1 s) plus a ping's worth of slack for a loaded box.
            await refuses_within(public, 1 + 1.5)
        finally:
            client.signal(signal.SIGCONT)


PROXY_TARGET = """\
events {{ worker_connections 64; }}
http {{
{temp_paths}
    log_format who '$proxy_protocol_addr:$proxy_protocol_port $status';
    access_log {tmp}/behind.log who;
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        return 200 "client=$proxy_protocol_addr:$proxy_protocol_port\\n";
    }}
}}
"""


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make sysdeps)")
async def test_send_proxy_protocol_to_nginx_behind_the_client(
    daemons: Daemons, tmp_path: Path, version: str
) -> None:
    assert NGINX is not None
    behind = free_port()
    await daemons.start_nginx(
        NGINX,
        tmp_path,
        PROXY_TARGET.format(
            temp_paths=nginx_http_temp_paths(tmp_path), tmp=tmp_path, port=behind
        ),
        listening=[("127.0.0.1", behind)],
    )
    public = free_port()
    async with (
        reverse_server() as (_, port),
        reverse_client(
            f"http://127.0.0.1:{port}",
            public,
            behind,
            "--send-proxy-protocol",
            version,
        ),
    ):
        stream = await trio.open_tcp_stream("127.0.0.1", public)
        me = f"127.0.0.1:{stream.socket.getsockname()[1]}"
        async with stream:
            await stream.send_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            answer = await read_until_closed(stream)
    assert answer.endswith(f"client={me}\n".encode())
    for _ in range(200):  # nginx writes its log line after the answer: 10 s
        if f"{me} 200" in (tmp_path / "behind.log").read_text():
            break
        await trio.sleep(0.05)
    assert f"{me} 200" in (tmp_path / "behind.log").read_text()
