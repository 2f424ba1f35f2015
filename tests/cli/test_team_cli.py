"""The team flags of the ``hijack`` command: ``hash-password``, ``proxy
--users`` reloaded on SIGHUP (open tunnels kept, a broken file refused),
``--upstream-proxy`` and the limit flags."""

from __future__ import annotations

import argparse
import base64
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from hijack.cli._command import StartupError
from hijack.cli._main import build_parser
from hijack.cli._team import byte_rate
from hijack.tunnel.users import PasswordHash, hash_password

from ..helpers import read_exactly, read_head, start_upstream
from ..hijack_process import HijackProcess, run_hijack
from ..upgrades.test_connect import connect_head, status_of

HIJACK = [sys.executable, "-m", "hijack"]


def test_hash_password_prints_a_usable_hash() -> None:
    result = subprocess.run(
        [*HIJACK, "hash-password"],
        input=b"correct horse\n",
        capture_output=True,
        check=True,
        timeout=60,
    )
    parsed = PasswordHash.parse(result.stdout.decode().strip())
    assert parsed.matches(b"correct horse")
    assert not parsed.matches(b"correct horse\n")
    empty = subprocess.run(
        [*HIJACK, "hash-password"], input=b"\n", capture_output=True, timeout=60
    )
    assert empty.returncode == 1 and b"empty password" in empty.stderr


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("500000", 500_000),
        ("500k", 500_000),
        ("2M", 2_000_000),
        ("1.5g", 1_500_000_000),
    ],
)
def test_byte_rates(text: str, value: int) -> None:
    assert byte_rate(text) == value


@pytest.mark.parametrize("text", ["", "k", "fast", "0", "-5", "inf"])
def test_bad_byte_rates(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        byte_rate(text)


@pytest.mark.parametrize("command", ["proxy", "tcp", "forward"])
def test_upstream_proxy_flag(command: str) -> None:
    base = {"proxy": [], "tcp": ["--upstream", "h:1"], "forward": ["--via", "h:1"]}[
        command
    ]
    args = build_parser().parse_args(
        [command, *base, "--upstream-proxy", "socks5h://u:p@h:1080"]
    )
    assert str(args.upstream_proxy) == "socks5h://u:***@h:1080"
    with pytest.raises(StartupError, match="scheme must be http, socks5 or socks5h"):
        build_parser().parse_args([command, *base, "--upstream-proxy", "ftp://h:1"])


def test_help_explains_the_team_flags() -> None:
    parser = build_parser()
    subparsers = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    for command in ("proxy", "tcp"):
        text = subparsers.choices[command].format_help()
        for flag in (
            "--users",
            "--upstream-proxy",
            "--direct",
            "--max-tunnels-per-client",
            "--max-tunnels-per-user",
            "--tunnel-bandwidth",
            "--user-bandwidth",
        ):
            assert re.search(rf"{flag}\b[^\n]*\n?\s+\S", text), (command, flag)


def basic(user: str, password: str) -> str:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"Proxy-Authorization: Basic {token}"


def users_file(path: Path, port: int, *names: str) -> None:
    """Each name's password is the name reversed (cheap scrypt: a test)."""
    text = ""
    for name in names:
        text += (
            f'[users.{name}]\npassword = "{hash_password(name[::-1], n=16, r=1, p=1)}"\n'
            f'allow = ["127.0.0.1"]\nports = [{port}]\n'
        )
    path.write_text(text)


async def test_proxy_users_reload_on_sighup(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async def echo(stream: trio.SocketStream) -> None:
        while data := await stream.receive_some():
            await stream.send_all(data)

    upstream_port = await start_upstream(nursery, echo)
    path = tmp_path / "users.toml"
    users_file(path, upstream_port, "alice")
    args = ["proxy", "--listen", "127.0.0.1:0", "--users", str(path)]
    async with run_hijack(args, stop_signal=signal.SIGINT) as proxy:
        port = await proxy.port()
        await _reload_users(proxy, port, path, upstream_port)
        proxy.signal(signal.SIGINT)
        assert await proxy.wait() == 0
        await proxy.output_closed.wait()
    assert re.search(r"connect 127\.0\.0\.1:\d+ user=alice -> ", proxy.stderr), (
        proxy.stderr
    )


async def _reload_users(
    proxy: HijackProcess, port: int, path: Path, upstream_port: int
) -> None:
    """alice can connect; bob after a SIGHUP with him in the file, and a
    broken file keeps the old users (and says why on stderr)."""
    target = f"127.0.0.1:{upstream_port}"

    async def connect(user: str) -> tuple[int, trio.SocketStream]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(connect_head(target, basic(user, user[::-1])))
        head, _ = await read_head(stream)
        return status_of(head), stream

    async def status(user: str) -> int:
        code, stream = await connect(user)
        await stream.aclose()
        return code

    with trio.fail_after(30):
        code, alice_tunnel = await connect("alice")
        assert code == 200
        async with alice_tunnel:
            assert await status("bob") == 407
            users_file(path, upstream_port, "bob")
            proxy.signal(signal.SIGHUP)
            await proxy.wait_for(r"INFO reloaded", stream="stderr")
            assert await status("bob") == 200
            assert await status("alice") == 407
            # Alice's open tunnel was not dropped by the reload.
            await alice_tunnel.send_all(b"still here")
            assert await read_exactly(alice_tunnel, 10) == b"still here"

            path.write_text("[users.mallory]\npassword = 'plain text'\n")
            proxy.signal(signal.SIGHUP)
            await proxy.wait_for(
                "reload failed, keeping the running configuration: --users",
                stream="stderr",
            )
            assert await status("bob") == 200
            assert "mallory" in proxy.stderr
            assert "not a hijack password hash" in proxy.stderr


def test_reloads_keep_one_users_and_one_limits(tmp_path: Path) -> None:
    """What a SIGHUP does to the team options: the same Users re-reads its
    file, the same TunnelLimits takes the new bounds (open tunnels stay
    counted), a broken users file fails the reload."""
    from hijack.cli import _team as _team_cli
    from hijack.cli._command import HandlerContext

    context = HandlerContext("proxy", port=None)  # one Service's
    path = tmp_path / "users.toml"
    users_file(path, 443, "alice")
    parser = build_parser()
    first = _team_cli.handler_options(
        parser.parse_args(
            ["proxy", "--users", str(path), "--max-tunnels-per-client", "2"]
        ),
        context,
    )
    users_file(path, 443, "bob")
    args = [
        "proxy",
        "--users",
        str(path),
        "--max-tunnels-per-client",
        "5",
        "--upstream-proxy",
        "http://127.0.0.1:1",
        "--direct",
        "x.example",
    ]
    second = _team_cli.handler_options(parser.parse_args(args), context)
    assert second["users"] is first["users"] and second["users"].names == ["bob"]
    assert second["limits"] is first["limits"] and second["limits"].per_client == 5
    assert second["routes"].parent_for("x.example") is None
    path.write_text("[users.bob\n")
    with pytest.raises(StartupError, match=r"--users .*users\.toml"):
        _team_cli.handler_options(parser.parse_args(args), context)
    assert first["users"].names == ["bob"]  # the running rules stay
    with pytest.raises(StartupError, match=r"users\.toml\.new"):
        _team_cli.handler_options(
            parser.parse_args(["proxy", "--users", str(tmp_path / "users.toml.new")]),
            context,
        )
