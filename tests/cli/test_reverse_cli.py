"""The command's reverse tunnels: start-up errors (one line, exit 2), and a
client configured by file that authenticates as a user of the server's
users file and reaches it through a parent proxy (another ``hijack proxy``),
with the server's metrics counting the tunnels."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hijack.tunnel.users import hash_password

from ..daemons import free_port
from ..helpers import read_head
from ..hijack_process import http_get, run_hijack
from ..upgrades.test_reverse import echo, round_trip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [
                "tcp",
                "--listen",
                "0.0.0.0:0",
                "--upstream",
                "127.0.0.1:9",
                "--allow-reverse",
                "9000",
            ],
            "--allow-reverse needs --users when listening on 0.0.0.0",
        ),
        (
            ["forward", "--reverse", "--via", "http://127.0.0.1:1"],
            "name what to publish",
        ),
        (
            [
                "tcp",
                "--upstream",
                "127.0.0.1:9",
                "--allow-reverse",
                "9000",
                "--workers",
                "2",
            ],
            "reverse tunnels need one process (--workers 1)",
        ),
        (
            ["forward", "--reverse", "--via", "http://127.0.0.1:1", "--remote", "9000"],
            "--remote needs --target",
        ),
        (
            [
                "forward",
                "--reverse",
                "--via",
                "ws://127.0.0.1:1/",
                "--remote",
                "9000",
                "--target",
                "127.0.0.1:1",
                "--upstream-proxy",
                "http://127.0.0.1:2",
            ],
            "cannot use an upstream proxy",
        ),
    ],
)
def test_start_up_errors_are_one_line(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hijack", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr and done.stderr.count("\n") == 1, done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["tcp", "--upstream", "127.0.0.1:9", "--allow-reverse", "localhost:80"],
            "argument --allow-reverse: bind host must be an IP address",
        ),
        (
            ["forward", "--reverse", "--via", "http://x:1", "--publish", "9000"],
            "argument --publish: expected [BIND_HOST:]PORT:HOST:PORT",
        ),
        (
            ["forward", "--reverse", "--via", "ftp://x:1/", "--remote", "9"],
            "argument --via",
        ),
    ],
)
def test_bad_rules_and_specs_name_the_option(args: list[str], message: str) -> None:
    test_start_up_errors_are_one_line(args, message)


async def test_config_file_user_and_upstream_proxy(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    target = (await nursery.start(trio.serve_tcp, echo, 0))[0].socket.getsockname()[1]
    public = free_port()
    users = tmp_path / "users.toml"
    users.write_text(
        f'[users.alice]\npassword = "{hash_password("s3cret", n=2, r=1)}"\n'
        f'reverse = ["127.0.0.1:{public}"]\n'
    )
    server_args = ["tcp", "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9"]
    server_args += ["--users", str(users), "--metrics", "127.0.0.1:0"]
    async with run_hijack(server_args) as server:
        port = await server.port()
        metrics = await server.metrics_port()
        parent_args = ["proxy", "--listen", "127.0.0.1:0", "--allow-private"]
        async with run_hijack([*parent_args, "--allow-port", str(port)]) as parent:
            config = tmp_path / "client.toml"
            config.write_text(
                f'reverse = true\nvia = "http://127.0.0.1:{port}"\n'
                f'publish = ["{public}:127.0.0.1:{target}"]\n'
                f'auth = "alice:s3cret"\npool = 1\n'
                f'upstream-proxy = "http://127.0.0.1:{await parent.port()}"\n'
            )
            async with run_hijack(["forward", "--config", str(config)]) as client:
                await client.wait_for(f"published 127.0.0.1:{public} ")
                _, body = await http_get(metrics, "/metrics")
                assert "hijack_reverse_published_ports 1.0" in body.decode()
                for n in range(3):
                    assert await round_trip(public, b"hi %d" % n) == b"hi %d" % n
                await server.wait_for("reverse .* user=alice -> .* ok", stream="stderr")
                # The access log has the control and data requests, with the user.
                await server.wait_for(' alice .*"GET / HTTP/1.1" 101', stream="stderr")
            # Through the parent: its own log names the hijack server.
            await parent.wait_for(f"127.0.0.1:{port}", stream="stderr")
        await server.wait_for(f"unpublished 127.0.0.1:{public}", stream="stderr")
        status, body = await http_get(metrics, "/metrics")
    assert status == 200
    assert f'hijack_tunnels_total{{kind="reverse",outcome="ok",port="{public}"}}' in (
        body.decode()
    )
    assert "hijack_reverse_published_ports 0.0" in body.decode()


async def test_proxy_publishes_too_and_still_proxies(nursery: trio.Nursery) -> None:
    target = (await nursery.start(trio.serve_tcp, echo, 0))[0].socket.getsockname()[1]
    public = free_port()
    proxy_args = ["proxy", "--listen", "127.0.0.1:0", "--allow-private"]
    proxy_args += ["--allow-port", str(target), "--allow-reverse", str(public)]
    async with run_hijack(proxy_args) as proxy:
        port = await proxy.port()
        client_args = ["forward", "--reverse", "--via", f"http://127.0.0.1:{port}"]
        client_args += ["--remote", str(public), "--target", f"127.0.0.1:{target}"]
        async with run_hijack(client_args) as client:
            await client.wait_for(f"published 127.0.0.1:{public} ")
            assert await round_trip(public, b"reversed") == b"reversed"
        # CONNECT is still the proxy's business.
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            )
            head, _ = await read_head(stream)
            assert head.startswith(b"HTTP/1.1 200")
            await stream.send_all(b"forward")
            assert await stream.receive_some() == b"forward"
