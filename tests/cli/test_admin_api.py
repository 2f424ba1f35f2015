"""The registry of live tunnels and the admin API in one process: CONNECT
(relayed by a task, or by the relay hub), Upgrade: tcp and the WebSocket
bridge register their tunnels; DELETE ends them (the client sees the end);
a bearer token guards everything."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from hijack.cli._admin import (
    LocalSource,
    WorkersSource,
    admin_handler,
    tunnels_command,
)
from hijack.cli._command import CommandLine, StartupError
from hijack.cli._main import build_parser
from hijack.cli._team import check_with_state
from hijack.state.registry import tunnels
from hijack.upgrades.connect import ConnectProxy
from hijack.upgrades.tcp import TCPUpgrade
from hijack.upgrades.wsbridge import WebSocketBridge

from ..conftest import StartServer
from ..helpers import read_head, read_until_closed, start_upstream
from ..upgrades.test_connect import connect_head, loopback_policy, status_of
from ..upgrades.test_wsbridge import connect
from ..ws_test_client import Closed
from .test_state_workers import TOKEN, admin, hold


@pytest.fixture
def registry_on() -> Iterator[None]:
    tunnels.enable()
    yield
    tunnels.enabled = False


def test_the_registry_is_off_by_default_and_costs_one_shared_record() -> None:
    assert not tunnels.enabled
    record = tunnels.open("connect", "c", "t", None, object())  # type: ignore[arg-type]
    assert record is tunnels.open("tcp", "c", "t", None, object())  # type: ignore[arg-type]
    assert not record.end()
    assert list(tunnels.records()) == []


async def start_admin(start_server: StartServer) -> int:
    handler = admin_handler(TOKEN.encode(), LocalSource())
    _, port = await start_server(handler)
    return port


async def listed(port: int, query: str = "") -> list[dict[str, object]]:
    status, body = await admin(port, "GET", f"/tunnels{query}")
    assert status == 200
    rows: list[dict[str, object]] = json.loads(body)["tunnels"]
    return rows


@pytest.mark.parametrize("hand_over", [False, True])
async def test_delete_ends_a_connect_tunnel_and_its_client_sees_eof(
    nursery: trio.Nursery, start_server: StartServer, registry_on: None, hand_over: bool
) -> None:
    upstream_port = await start_upstream(nursery, hold)
    proxy = ConnectProxy(loopback_policy(upstream_port), hand_over=hand_over)
    _, port = await start_server(proxy)
    control = await start_admin(start_server)
    target = f"127.0.0.1:{upstream_port}"
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(connect_head(target))
    head, _ = await read_head(client)
    assert status_of(head) == 200
    await client.send_all(b"hello")
    (row,) = await listed(control, "?kind=connect")
    assert row["target"] == target and row["state"] == "open"
    assert str(row["client"]).endswith(f":{client.socket.getsockname()[1]}")
    assert await listed(control, "?kind=tcp") == []
    assert await listed(control, "?user=nobody") == []
    _, body = await admin(control, "GET", "/users")
    assert json.loads(body)["users"]["-"]["tunnels"] == 1
    assert (await admin(control, "DELETE", f"/tunnels/{row['id']}"))[0] == 204
    with trio.fail_after(5):
        assert await read_until_closed(client) == b""
    await client.aclose()
    with trio.fail_after(5):
        while await listed(control):  # noqa: ASYNC110 (the hub ends it in its own time)
            await trio.sleep(0.01)
    assert (await admin(control, "DELETE", f"/tunnels/{row['id']}"))[0] == 404


async def test_tcp_upgrade_and_wsbridge_tunnels_are_listed_and_ended(
    nursery: trio.Nursery, start_server: StartServer, registry_on: None
) -> None:
    upstream_port = await start_upstream(nursery, hold)
    _, tcp_port = await start_server(TCPUpgrade(("127.0.0.1", upstream_port)))
    _, bridge_port = await start_server(WebSocketBridge(("127.0.0.1", upstream_port)))
    control = await start_admin(start_server)
    raw = await trio.open_tcp_stream("127.0.0.1", tcp_port)
    await raw.send_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
    )
    head, _ = await read_head(raw)
    assert status_of(head) == 101
    ws = await connect(bridge_port, subprotocols=["binary"])
    with trio.fail_after(5):
        while len(rows := await listed(control)) < 2:  # noqa: ASYNC110
            await trio.sleep(0.01)  # the bridge registers after its 101
    kinds = {str(row["kind"]): str(row["id"]) for row in rows}
    assert set(kinds) == {"tcp", "wsbridge"}
    assert (await admin(control, "DELETE", f"/tunnels/{kinds['tcp']}"))[0] == 204
    assert (await admin(control, "DELETE", f"/tunnels/{kinds['wsbridge']}"))[0] == 204
    with trio.fail_after(5):
        assert await read_until_closed(raw) == b""
        with pytest.raises(Closed):
            await ws.receive()
    await raw.aclose()
    await ws.stream.aclose()


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token-of-some-length", f"Basic {TOKEN}", f"bearer {TOKEN}x"],
)
async def test_the_admin_api_needs_the_bearer_token(
    start_server: StartServer, authorization: str | None
) -> None:
    control = await start_admin(start_server)
    lines = ["GET /tunnels HTTP/1.1", "Host: a", "Connection: close"]
    if authorization is not None:
        lines.append(f"Authorization: {authorization}")
    stream = await trio.open_tcp_stream("127.0.0.1", control)
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = await read_until_closed(stream)
    assert answer.startswith(b"HTTP/1.1 401 ")
    assert b'www-authenticate: bearer realm="hijack admin"' in answer.lower()
    assert (await admin(control, "GET", "/tunnels"))[0] == 200
    assert (await admin(control, "GET", "/nothing"))[0] == 404
    assert (await admin(control, "POST", "/tunnels"))[0] == 405


def test_admin_address_is_loopback_unless_told() -> None:
    from hijack.cli._state import _admin_address

    assert _admin_address("9200") == ("127.0.0.1", 9200)
    assert _admin_address("0.0.0.0:9200") == ("0.0.0.0", 9200)


async def test_hijack_tunnels_prints_a_table_json_ends_and_says_what_failed(
    nursery: trio.Nursery,
    start_server: StartServer,
    registry_on: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    upstream_port = await start_upstream(nursery, hold)
    _, port = await start_server(ConnectProxy(loopback_policy(upstream_port)))
    control = await start_admin(start_server)
    client = await trio.open_tcp_stream("127.0.0.1", port)
    await client.send_all(connect_head(f"127.0.0.1:{upstream_port}"))
    assert status_of((await read_head(client))[0]) == 200
    token = tmp_path / "token"
    token.write_text(TOKEN + "\n")

    async def tunnels(*more: str, token_file: Path = token) -> int:
        argv = ["tunnels", "--admin", f"127.0.0.1:{control}"]
        argv += ["--admin-token-file", str(token_file), *more]
        args = build_parser().parse_args(argv)
        line = CommandLine(argv, lambda: args)
        return await trio.to_thread.run_sync(tunnels_command, args, line)

    assert await tunnels() == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:3] == ["ID", "KIND", "USER"]
    assert row.split()[1:3] == ["connect", "-"]
    assert await tunnels("--kind", "tcp") == 0
    assert capsys.readouterr().out.splitlines()[1:] == []
    assert await tunnels("--json") == 0
    (listed,) = json.loads(capsys.readouterr().out)["tunnels"]
    assert await tunnels("--end", str(listed["id"])) == 0
    assert capsys.readouterr().out == f"ended {listed['id']}\n"
    with trio.fail_after(5):
        assert await read_until_closed(client) == b""
    await client.aclose()
    assert await tunnels("--end", str(listed["id"])) == 1
    assert "404 Not Found" in capsys.readouterr().err
    wrong = tmp_path / "wrong"
    wrong.write_text("x" * 20)
    assert await tunnels(token_file=wrong) == 1
    assert "401 Unauthorized" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        (["--state-password-file", "/nonexistent"], "needs --state URL"),
        (["--state", "redis://h:1/0", "--state-ttl", "0"], "must be > 0"),
        (
            ["--state", "redis://h:1/0", "--state-password-file", "/nonexistent"],
            "--state-password-file /nonexistent: No such file",
        ),
        (["--admin", "9200"], "--admin needs --admin-token-file"),
    ],
)
def test_state_and_admin_options_refuse_what_cannot_work(
    argv: list[str], problem: str
) -> None:
    args = build_parser().parse_args(["proxy", *argv])
    with pytest.raises(StartupError, match=re.escape(problem)):
        check_with_state(args)


def test_a_state_url_must_be_redis() -> None:
    with pytest.raises(StartupError, match="expected redis://"):
        build_parser().parse_args(["proxy", "--state", "http://h/"])


async def test_the_supervisor_side_asks_live_workers_and_forgets_dead_ones(
    start_server: StartServer, registry_on: None, tmp_path: Path
) -> None:
    """WorkersSource: a worker's socket answers; a socket file left by a
    worker that exited (connection refused) is removed, not an error."""
    from hijack import Server

    workers = tmp_path / "workers"
    workers.mkdir()
    dead = trio.socket.socket(trio.socket.AF_UNIX)
    await dead.bind(str(workers / "1.sock"))
    dead.close()  # the file stays, nobody listens: a worker that died
    live = Server(admin_handler(TOKEN.encode(), LocalSource()), access_log=False)
    async with trio.open_nursery() as nursery:
        await nursery.start(live.serve_unix, str(workers / "2.sock"))
        source = WorkersSource(str(workers), TOKEN.encode())
        assert await source.list({}) == []
        assert not (workers / "1.sock").exists()
        assert not await source.end("nope-1")
        await live.shutdown(grace=0)


async def test_hijack_tunnels_says_when_nothing_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    with trio.socket.socket() as holder:  # a port nobody listens on
        await holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
    argv = ["tunnels", "--admin", f"127.0.0.1:{port}", "--admin-token-file", str(token)]
    args = build_parser().parse_args(argv)
    line = CommandLine(argv, lambda: args)
    assert await trio.to_thread.run_sync(tunnels_command, args, line) == 1
    assert f"hijack tunnels: 127.0.0.1:{port}: " in capsys.readouterr().err


async def test_admin_on_an_address_in_use_is_one_line_exit_2(tmp_path: Path) -> None:
    from ..hijack_process import run_hijack

    token = tmp_path / "token"
    token.write_text(TOKEN)
    with trio.socket.socket() as taken:
        await taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["proxy", "--listen", "127.0.0.1:0", "--admin", f"127.0.0.1:{port}"]
        async with run_hijack([*args, "--admin-token-file", str(token)]) as proxy:
            assert await proxy.wait() == 2
            await proxy.output_closed.wait()
    assert f"--admin 127.0.0.1:{port}: " in proxy.stderr
    assert len(proxy.stderr.splitlines()) == 1, proxy.stderr
